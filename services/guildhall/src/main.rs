//! `guildhall serve` (default) runs the services; `guildhall migrate` applies migrations.
//! Configuration comes from the environment only: see README.md.

use platform::config::Config;

/// mimalloc instead of glibc's allocator: the request paths allocate many small short-lived
/// buffers across threads, where glibc's arenas showed as ~15% of the server's CPU in profiles
/// of the leaderboard benchmark. Built without its transparent-huge-page advice (the `no_thp`
/// feature): with it, each touched part of the heap took a whole 2 MiB page, which an idle
/// process kept (loadtest/idle.sh; figures in loadtest/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: guildhall [serve|worker|migrate|restore-check|after-restore|events|keys|healthcheck|openapi|version]\n\
  serve    run the services (SERVICES picks a subset; default all)\n\
  worker   deliver events only: the outbox relay and the queue consumers of SERVICES\n\
  migrate  apply database migrations and exit\n\
  restore-check  compare the database's history with what Redis saw (exit 1 when it was restored)\n\
  after-restore  after restoring the database: end older sessions, forget the rank index\n\
  events dead [--limit N]  list dead events (parked outbox rows, dead-letter queues) as JSON\n\
  events redrive (--all | EVENT_ID...)  make dead events due again\n\
  keys generate  print a new token signing key (PEM; its kid on stderr)\n\
  keys public    print the public key of the private key on stdin\n\
  keys show      print the token key set this configuration uses (kids, JWKS, public PEM bundle)\n\
  keys rotate | keys retire KID  embedded defaults: a new key in DATA_DIR signs, the old verifies; then retire it\n\
  healthcheck  exit 0 if the server on LISTEN_ADDR answers /health/live (container health check)\n\
  openapi  print the OpenAPI document and exit\n\
  version  print the version";

/// How often, at most, a runtime worker hands mimalloc's freed memory back (see
/// `collect_freed_memory`).
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// When this worker last collected.
    static COLLECTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Called by each runtime worker as it parks, having nothing to run: at most every
/// `COLLECT_EVERY`, mimalloc collects the worker's heap (its empty pages go back to the arenas)
/// and purges what its delay allows (returned to the OS). mimalloc does both on its own only
/// while it allocates, so an idle process kept what its start-up and last requests had freed
/// (7 MB on embedded defaults, as `MIMALLOC_PURGE_DELAY=0` showed; loadtest/README.md, "Idle
/// memory"); purging on every free instead would cost system calls under load. Parking means
/// no task is waiting on this worker, and at most once per `COLLECT_EVERY` it costs nothing
/// measurable when busy.
fn collect_freed_memory() {
    let now = std::time::Instant::now();
    let due = COLLECTED.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: mi_collect takes no pointer and may be called from any thread at any time;
        // it only walks this thread's heap and the shared arenas under mimalloc's own locks.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(false);
        }
    }
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().on_thread_park(collect_freed_memory).build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("guildhall: starting the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The command runs on a worker rather than on this thread (`block_on`'s), so that what its
    // start-up allocated and freed is in a heap that `collect_freed_memory` visits.
    match runtime.block_on(async { tokio::spawn(command()).await }) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("guildhall: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn command() -> std::process::ExitCode {
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("guildhall: configuration error: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = platform::telemetry::init(config.log_format, config.traces.as_ref());
    let result = match command.as_str() {
        "serve" => guildhall::run(config).await,
        "worker" => guildhall::run_worker(config).await,
        "migrate" => guildhall::migrate(&config).await,
        "restore-check" => guildhall::restore_check(&config).await,
        "after-restore" => guildhall::after_restore(&config).await,
        "events" => guildhall::events(&config, &std::env::args().skip(2).collect::<Vec<_>>()).await,
        "keys" => guildhall::keys(&config, &std::env::args().skip(2).collect::<Vec<_>>()),
        "healthcheck" => guildhall::healthcheck(&config).await,
        "openapi" => serde_json::to_string_pretty(&guildhall::openapi()).map(|doc| println!("{doc}")).map_err(anyhow::Error::from),
        "version" | "--version" | "-V" => {
            println!("guildhall {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("guildhall: unknown command {other:?}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    // The blocking flush runs off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "guildhall failed");
            eprintln!("guildhall: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
