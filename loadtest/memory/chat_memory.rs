//! What one idle, joined chat socket holds on the server, by allocation: a measurement run by
//! hand, not part of the suite, and not compiled where it lies. The release binary allocates
//! through mimalloc, which heaptrack cannot see; this test counts through its own global
//! allocator, which needs `unsafe`, which the workspace forbids (`[workspace.lints]`). To run it:
//!
//! ```sh
//! cp loadtest/memory/chat_memory.rs services/guildhall/tests/
//! sed -i 's/^unsafe_code = "forbid"/unsafe_code = "deny"/' Cargo.toml     # for this run only
//! CLIENTS=1000 cargo test -p guildhall --test chat_memory -- --ignored --nocapture
//! git checkout Cargo.toml && rm services/guildhall/tests/chat_memory.rs
//! ```
//!
//! The server runs on the test's runtime and the clients on a thread of their own, whose
//! allocations are not counted: the figures are the server's live heap bytes after `CLIENTS`
//! sockets authenticated, joined rooms of 50 and went idle, minus before, per socket; then the
//! live allocations by requested size whose count grew by about one per socket (or more): what
//! each socket keeps (its task, its queue, the hub's entries, its strings...).
//! `CHAT_MEMORY_TRACE=<size>,<size>` prints where the first allocations of those sizes (to 8
//! bytes) were made while the sockets joined; `CHAT_MEMORY_BACKEND=real` runs on PostgreSQL and
//! Redis (`scripts/servers.sh`). Sizes are a debug build's unless run with `--release`: futures,
//! the task's above all, are larger in a debug build.

#![allow(unsafe_code)]

// The suite's helpers, from the one test binary's folder (services/guildhall/tests/it).
#[path = "it/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use common::{Backend, Chat, TestApp, guest};

/// Live allocations are counted by requested size in steps of `STEP` bytes up to `BUCKETS * STEP`.
const STEP: usize = 8;
const BUCKETS: usize = 8192;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BY_SIZE: [AtomicI64; BUCKETS + 1] = [const { AtomicI64::new(0) }; BUCKETS + 1];
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE_SIZES: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static TRACED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// True on the clients' thread: not counted.
    static CLIENT: Cell<bool> = const { Cell::new(false) };
    /// True while this thread is capturing a backtrace, whose own allocations are not traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Each allocation carries a header before it: its requested size and whether it was counted.
const HEADER: usize = 16;

fn bucket(size: usize) -> usize {
    (size / STEP).min(BUCKETS)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(HEADER);
        let Ok(outer) = Layout::from_size_align(layout.size() + align, align) else { return std::ptr::null_mut() };
        // SAFETY: `outer` is a valid, non-zero layout.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let counted = !CLIENT.with(Cell::get);
        // SAFETY: the allocation is `align` bytes longer than asked for; the header lies in them.
        unsafe {
            let ptr = base.add(align);
            ptr.cast::<usize>().sub(2).write(layout.size());
            ptr.cast::<usize>().sub(1).write(usize::from(counted));
            if counted {
                LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
                LIVE_BY_SIZE[bucket(layout.size())].fetch_add(1, Ordering::Relaxed);
                if TRACING.load(Ordering::Relaxed) {
                    trace(layout.size());
                }
            }
            ptr
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let align = layout.align().max(HEADER);
        // SAFETY: `ptr` came from `alloc` above, which wrote the header before it.
        unsafe {
            let size = ptr.cast::<usize>().sub(2).read();
            if ptr.cast::<usize>().sub(1).read() == 1 {
                LIVE_BYTES.fetch_sub(size as i64, Ordering::Relaxed);
                LIVE_BY_SIZE[bucket(size)].fetch_sub(1, Ordering::Relaxed);
            }
            System.dealloc(ptr.sub(align), Layout::from_size_align_unchecked(layout.size() + align, align));
        }
    }
}

/// Prints where an allocation of a traced size was made (the first few of each run).
fn trace(size: usize) {
    if IN_TRACE.with(Cell::get) {
        return;
    }
    IN_TRACE.with(|t| t.set(true));
    let wanted = TRACE_SIZES.try_lock().map(|sizes| sizes.iter().any(|s| bucket(*s) == bucket(size))).unwrap_or(false);
    if wanted && TRACED.fetch_add(1, Ordering::Relaxed) < 40 {
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = backtrace
            .lines()
            .filter(|line| line.contains("at ./") || line.contains("at /work") || line.contains("registry/src"))
            .take(9)
            .collect();
        eprintln!("--- allocation of {size} bytes:\n{}", frames.join("\n"));
    }
    IN_TRACE.with(|t| t.set(false));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> (i64, Vec<i64>) {
    (LIVE_BYTES.load(Ordering::SeqCst), LIVE_BY_SIZE.iter().map(|count| count.load(Ordering::SeqCst)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn bytes_an_idle_joined_socket_holds() {
    let clients: usize = std::env::var("CLIENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let real = std::env::var("CHAT_MEMORY_BACKEND").is_ok_and(|b| b == "real");
    let backend = if real { Backend::Real } else { Backend::Embedded };
    if let Ok(sizes) = std::env::var("CHAT_MEMORY_TRACE") {
        *TRACE_SIZES.lock().expect("sizes") = sizes.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    }
    let app = TestApp::start_with(backend, |env| {
        env.set("CHAT_SEND_BURST", "1000").set("CHAT_SEND_PER_SECOND", "1000");
        env.set("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE", "100000000").set("CHAT_MAX_SOCKETS_PER_IP", "100000000");
    })
    .await;
    let base = app.base.clone();
    let run = uuid::Uuid::now_v7().simple().to_string();

    // The clients live on a thread of their own, uncounted; they tell this one what they reached.
    let (step_tx, mut step_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client_thread = std::thread::spawn(move || {
        CLIENT.with(|c| c.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let api = common::Api::new(base.clone());
            let mut tokens = Vec::with_capacity(clients);
            for i in 0..clients {
                tokens.push(guest(&api, &format!("mem-{run}-{i}")).await.1);
            }
            step_tx.send("signed in").await.expect("step");
            go_rx.recv().expect("go");
            let mut sockets = Vec::with_capacity(clients);
            for (i, token) in tokens.iter().enumerate() {
                let mut chat = Chat::connect(&base, token).await;
                chat.join(&format!("room:mem-{}-{}", &run[..8], i / 50)).await;
                sockets.push(chat);
            }
            step_tx.send("joined").await.expect("step");
            go_rx.recv().expect("go");
            for chat in sockets {
                chat.close().await;
            }
            step_tx.send("closed").await.expect("step");
        });
    });

    assert_eq!(step_rx.recv().await, Some("signed in"));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (before, before_sizes) = snapshot();
    TRACING.store(true, Ordering::SeqCst);
    go_tx.send(()).expect("go");
    assert_eq!(step_rx.recv().await, Some("joined"));
    TRACING.store(false, Ordering::SeqCst);
    // Idle: what the joins' presence events left queued is written out meanwhile.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (joined, joined_sizes) = snapshot();
    let per_socket = (joined - before) as f64 / clients as f64;
    println!("backend {backend:?}, {clients} sockets in rooms of 50: server heap {before} -> {joined} bytes = {per_socket:.0} bytes per socket");
    println!("allocations kept per socket, by requested size (count per socket, bytes per socket):");
    let mut rows: Vec<(usize, f64, f64)> = Vec::new();
    for (i, (after, earlier)) in joined_sizes.iter().zip(&before_sizes).enumerate() {
        let per = (after - earlier) as f64 / clients as f64;
        if per.abs() >= 0.02 {
            let size = if i == BUCKETS { BUCKETS * STEP } else { i * STEP };
            rows.push((size, per, per * (size + STEP / 2) as f64));
        }
    }
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (size, per, bytes) in &rows {
        println!("  {size:>6}..{:<6} x {per:>6.2} = {bytes:>7.0} bytes", size + STEP);
    }
    go_tx.send(()).expect("go");
    assert_eq!(step_rx.recv().await, Some("closed"));
    client_thread.join().expect("clients");
    assert!(per_socket > 0.0, "sockets hold something");
}
