//! The `chat` scenario: thousands of WebSocket clients in rooms spread over the instances, sending
//! messages on a fixed schedule (open loop), each timing the messages the other members sent.
//!
//! Not a request/response scenario, so it has its own driver rather than [`crate::drive`]:
//!
//! 1. Sign in `--clients` guest players, `--concurrency` at a time, each on the instance it will
//!    connect to (client `i` on `--bases[i % instances]`).
//! 2. Read the instances' resident memory (`--pids`), then open the sockets
//!    ([`CONNECT_PARALLELISM`] at a time): connect, authenticate, join room `i / --room-size`, so
//!    consecutive clients share a room and each room has members on every instance.
//! 3. Once every client has joined (or failed to), wait [`SETTLE`], read the memory again and
//!    start the schedule: each client sends `--rate` messages a second from its own offset into
//!    the period, for `--warmup` then `--duration`. A body is the send time in nanoseconds since an
//!    epoch every client shares (they all run in this process, so one clock serves); a receiver's
//!    latency is its receipt time minus that.
//! 4. After the last send, wait until every send is answered and every expected delivery has
//!    arrived, or `--timeout`; read the memory a third time; stop and report.

mod client;
mod frame;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use report::{ChatReport, InstanceMemory};

use crate::memory;
use crate::options::Options;
use crate::report::{ERROR_SAMPLES, Latency, Summary};
use crate::scenario::{Entry, Running, Setup, Threads, sign_in_guests};
use client::{Client, Outcome, Phase, Schedule, Shared, Tally};

/// The scenario's entry in [`crate::scenario::SCENARIOS`].
pub const ENTRY: Entry = Entry {
    name: "chat",
    about: "--clients WebSockets in rooms over --bases, --rate messages/s each: delivery latency, memory per connection",
    run: run_entry,
    // Thousands of sockets, each timing deliveries: one thread would queue them and add its own
    // delay to the latencies.
    threads: Threads::PerCore,
};

/// Sockets being opened (connect, auth, join) at once.
pub const CONNECT_PARALLELISM: usize = 200;

/// How long the run waits before each memory reading, so that connections just closed or opened
/// have been dealt with (the sign-ins' HTTP connections, the last joins' presence events).
pub const SETTLE: Duration = Duration::from_secs(1);

/// The server's limit on a room name's length (services/chat/src/channel.rs).
const ROOM_NAME_MAX: usize = 32;

fn run_entry(options: &Options, setup: Setup) -> Running<'_> {
    Box::pin(async move { run(options, setup).await.map(Summary::Chat) })
}

/// Who goes where: client `i` connects to instance `i % instances` and joins room `i / room_size`,
/// so each room's members alternate between the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Clients.
    pub clients: usize,
    /// Instances.
    pub instances: usize,
    /// Members per room.
    pub room_size: usize,
}

impl Layout {
    /// The instance client `i` connects to.
    pub fn instance_of(&self, i: usize) -> usize {
        i % self.instances
    }

    /// The room client `i` joins.
    pub fn room_of(&self, i: usize) -> usize {
        i / self.room_size
    }

    /// How many rooms there are.
    pub fn rooms(&self) -> usize {
        self.clients.div_ceil(self.room_size)
    }

    /// How many clients connect to instance `instance`.
    pub fn clients_on(&self, instance: usize) -> usize {
        (self.clients + self.instances - 1 - instance) / self.instances
    }
}

/// The channel id of room `room` of run `run_id`: `room:bench-<run id>-<room>`, checked against
/// the server's rule for room names (1 to 32 of `[a-z0-9_-]`).
pub fn room_channel(run_id: &str, room: usize) -> anyhow::Result<String> {
    let name = format!("bench-{}-{room}", run_id.to_ascii_lowercase());
    ensure!(
        name.len() <= ROOM_NAME_MAX && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
        "room name {name:?} is not a valid room name (1 to {ROOM_NAME_MAX} of [a-z0-9_-])"
    );
    Ok(format!("room:{name}"))
}

/// Runs the chat scenario (see the module's documentation).
pub async fn run(options: &Options, setup: Setup) -> anyhow::Result<ChatReport> {
    let layout = Layout { clients: options.clients, instances: options.bases.len(), room_size: options.room_size };
    let channels: Vec<Arc<str>> =
        (0..layout.rooms()).map(|room| room_channel(&setup.run_id, room).map(Arc::from)).collect::<anyhow::Result<_>>()?;
    // A wrong pid fails now, not after thousands of sign-ins.
    sample_memory(&options.pids)?;

    eprintln!(
        "chat: signing in {} guests over {} instance(s), {} at a time...",
        options.clients,
        layout.instances,
        setup.parallelism.min(options.clients)
    );
    let started = std::time::Instant::now();
    let tokens = sign_in(options, setup, layout).await?;
    eprintln!("chat: signed in in {:.1} s", started.elapsed().as_secs_f64());
    // The sign-ins' HTTP connections closed with the client (in `sign_in`); let the servers notice.
    tokio::time::sleep(SETTLE).await;
    let rss_before = sample_memory(&options.pids)?;

    let shared = Arc::new(Shared::new(options.max_requests));
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let (outcomes, mut outcomes_rx) = mpsc::channel::<Outcome>(CONNECT_PARALLELISM);
    let slots = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut clients = JoinSet::new();
    for (index, token) in tokens.into_iter().enumerate() {
        let room = layout.room_of(index);
        let client = Client {
            index,
            url: format!("{}/v1/chat/ws", options.bases[layout.instance_of(index)].replacen("http://", "ws://", 1)),
            token,
            room,
            channel: channels[room].clone(),
            timeout: options.timeout,
        };
        clients.spawn(client.run(shared.clone(), slots.clone(), outcomes.clone(), phase_rx.clone()));
    }
    drop((outcomes, phase_rx));

    // Every client reports once and then drops its sender, so this ends when all have reported (a
    // client that panicked drops its sender too). Each step of each client has its timeout.
    eprintln!("chat: opening {} sockets, {CONNECT_PARALLELISM} at a time...", options.clients);
    let started = std::time::Instant::now();
    let mut joined = vec![false; options.clients];
    let mut reported = 0;
    while let Some(outcome) = outcomes_rx.recv().await {
        joined[outcome.index] = outcome.result.is_ok();
        reported += 1;
        if reported % 1000 == 0 && reported < options.clients {
            eprintln!("chat: {reported} sockets set up...");
        }
    }
    let connected = joined.iter().filter(|joined| **joined).count();
    let mut room_members = vec![0u64; layout.rooms()];
    let mut connections = vec![0usize; layout.instances];
    for index in (0..options.clients).filter(|index| joined[*index]) {
        room_members[layout.room_of(index)] += 1;
        connections[layout.instance_of(index)] += 1;
    }
    let per_instance: Vec<String> = options.bases.iter().zip(&connections).map(|(base, count)| format!("{count} on {base}")).collect();
    // Scripts may wait for this line: every socket that will join has joined.
    eprintln!(
        "chat: all clients connected and joined: {connected} of {} in {:.1} s ({})",
        options.clients,
        started.elapsed().as_secs_f64(),
        per_instance.join(", ")
    );
    if connected == 0 {
        let _ = phase.send(Phase::Stop);
        let tallies = collect(&mut clients).await?;
        let samples: Vec<String> =
            tallies.iter().filter_map(|tally| tally.setup_failure.as_ref()).map(|f| f.detail.clone()).take(ERROR_SAMPLES).collect();
        bail!("no client connected and joined; first failures: {}", samples.join("; "));
    }
    tokio::time::sleep(SETTLE).await;
    let rss_joined = sample_memory(&options.pids)?;

    let start = Instant::now();
    let measure_from = start + options.warmup;
    let stop = measure_from + options.duration;
    let schedule = Schedule {
        start,
        measure_from,
        stop,
        give_up: stop + options.timeout + Duration::from_secs(5),
        period: Duration::from_secs_f64(1.0 / options.rate),
        room_members,
    };
    eprintln!(
        "chat: sending {} messages/s per client ({:.0}/s in all): {:.1} s warm-up, {:.1} s measured",
        options.rate,
        options.rate * connected as f64,
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64()
    );
    // CPU times at the measured window's start (`--cpu`): read when it opens, and once now, so
    // that a wrong pid fails the run before it sends.
    options.cpu.sample()?;
    let watched = options.cpu.clone();
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        watched.sample()
    });
    // Sending fails only when every client has gone, and then the wait below ends at its deadline.
    let _ = phase.send(Phase::Run(Arc::new(schedule)));

    tokio::time::sleep_until(stop).await;
    let wait_until = stop + options.timeout;
    let complete = loop {
        if shared.unanswered.load(Ordering::Relaxed) == 0
            && shared.received.load(Ordering::Relaxed) >= shared.expected.load(Ordering::Relaxed)
        {
            break true;
        }
        if Instant::now() >= wait_until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "chat: {:.1} s after the last send, {}",
        (Instant::now() - stop).as_secs_f64(),
        if complete { "every answer and delivery is in" } else { "the wait for answers and deliveries ran out" }
    );
    let cpu_at_end = options.cpu.sample()?;
    let cpu_at_start = cpu_at_start.await.context("the CPU sampler panicked")??;
    let rss_end = sample_memory(&options.pids)?;
    let _ = phase.send(Phase::Stop);
    let tallies = collect(&mut clients).await?;

    let memory: Vec<InstanceMemory> = options
        .pids
        .iter()
        .enumerate()
        .map(|(i, pid)| InstanceMemory::new(&options.bases[i], *pid, connections[i], rss_before[i], rss_joined[i], rss_end[i]))
        .collect();
    let mut report = summarise(options, layout, connected, complete, tallies, memory);
    // The deliveries the window's CPU paid for: the measured ones (those of warm-up messages
    // still arriving in it are few next to them).
    report.cpu_us_per_delivery = crate::cpu::per_request(&cpu_at_start, &cpu_at_end, report.deliveries_received);
    Ok(report)
}

/// Signs in one guest per client, each on the instance it will connect to, and returns their
/// access tokens in client order; with `--sign-in-base` (a proxy in front of split services,
/// whose chat replicas serve no sign-in), every guest signs in there instead. Consumes the setup,
/// so the HTTP connections close afterwards.
async fn sign_in(options: &Options, setup: Setup, layout: Layout) -> anyhow::Result<Vec<String>> {
    let mut per_instance = Vec::with_capacity(layout.instances);
    for (instance, base) in options.bases.iter().enumerate() {
        // A run id per instance keeps the device ids (`bench-<run id>-<n>`) apart.
        let on_instance = Setup {
            base: options.sign_in_base.clone().unwrap_or_else(|| base.clone()),
            players: layout.clients_on(instance),
            run_id: format!("{}-{instance}", setup.run_id),
            ..setup.clone()
        };
        let tokens = if on_instance.players == 0 {
            Vec::new()
        } else {
            sign_in_guests(&on_instance).await.with_context(|| format!("signing in on {base}"))?
        };
        per_instance.push(tokens.into_iter());
    }
    drop(setup);
    (0..layout.clients)
        .map(|index| per_instance[layout.instance_of(index)].next().with_context(|| format!("no token for client {index}")))
        .collect()
}

/// Each of `pids`' resident memory now, in KiB.
fn sample_memory(pids: &[u32]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|pid| memory::rss_kib(*pid)).collect()
}

/// Waits for every client's tally.
async fn collect(clients: &mut JoinSet<Tally>) -> anyhow::Result<Vec<Tally>> {
    let mut tallies = Vec::with_capacity(clients.len());
    while let Some(tally) = clients.join_next().await {
        tallies.push(tally.context("a client panicked")?);
    }
    Ok(tallies)
}

fn summarise(
    options: &Options,
    layout: Layout,
    connected: usize,
    complete: bool,
    tallies: Vec<Tally>,
    memory: Vec<InstanceMemory>,
) -> ChatReport {
    let mut latencies_ns = Vec::new();
    let (mut sent, mut acked, mut unanswered, mut expected, mut echoes, mut foreign) = (0, 0, 0, 0, 0, 0);
    let mut failures_by_kind = BTreeMap::new();
    let mut disconnects_by_kind = BTreeMap::new();
    let mut errors_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut hit_max_requests = false;
    for tally in tallies {
        latencies_ns.extend(tally.latencies_ns);
        sent += tally.sent;
        acked += tally.acked;
        unanswered += tally.unanswered;
        expected += tally.expected;
        echoes += tally.echoes;
        foreign += tally.foreign;
        hit_max_requests |= tally.hit_max_sends;
        for (code, count) in tally.errors_by_code {
            *errors_by_code.entry(code).or_default() += count;
        }
        for (failure, counts) in [(tally.setup_failure, &mut failures_by_kind), (tally.disconnect, &mut disconnects_by_kind)] {
            if let Some(failure) = failure {
                *counts.entry(failure.kind).or_insert(0u64) += 1;
                if samples.len() < ERROR_SAMPLES {
                    samples.push(failure.detail);
                }
            }
        }
        if let Some(sample) = tally.error_sample
            && samples.len() < ERROR_SAMPLES
        {
            samples.push(sample);
        }
    }
    let received = latencies_ns.len() as u64;
    let elapsed_secs = options.duration.as_secs_f64();
    ChatReport {
        scenario: ENTRY.name.to_owned(),
        clients: options.clients,
        connected,
        instances: layout.instances,
        rooms: layout.rooms(),
        room_size: layout.room_size,
        rate_per_client: options.rate,
        elapsed_secs,
        messages_sent: sent,
        messages_acked: acked,
        messages_per_sec: sent as f64 / elapsed_secs,
        messages_unanswered: unanswered,
        deliveries_expected: expected,
        deliveries_received: received,
        delivery_ratio: if expected > 0 { received as f64 / expected as f64 } else { 0.0 },
        latency: Latency::of(&mut latencies_ns),
        connection_failures: failures_by_kind.values().sum(),
        connection_failures_by_kind: failures_by_kind,
        errors: errors_by_code.values().sum(),
        errors_by_code,
        disconnects: disconnects_by_kind.values().sum(),
        disconnects_by_kind,
        echoes,
        foreign,
        samples,
        complete,
        hit_max_requests,
        kib_per_connection: report::overall_per_connection(&memory),
        memory,
        cpu_us_per_delivery: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_alternate_between_instances() {
        let layout = Layout { clients: 5000, instances: 2, room_size: 50 };
        assert_eq!(layout.rooms(), 100);
        assert_eq!((layout.clients_on(0), layout.clients_on(1)), (2500, 2500));
        for room in 0..layout.rooms() {
            let members: Vec<usize> = (0..layout.clients).filter(|i| layout.room_of(*i) == room).collect();
            assert_eq!(members.len(), 50);
            let on_first = members.iter().filter(|i| layout.instance_of(**i) == 0).count();
            assert_eq!(on_first, 25, "room {room} is split evenly");
        }

        let odd = Layout { clients: 7, instances: 2, room_size: 3 };
        assert_eq!(odd.rooms(), 3, "the last room has the one left over");
        assert_eq!((odd.clients_on(0), odd.clients_on(1)), (4, 3));
        let one = Layout { clients: 1, instances: 2, room_size: 2 };
        assert_eq!((one.clients_on(0), one.clients_on(1)), (1, 0));
    }

    #[test]
    fn room_channels_are_valid_for_the_server() {
        assert_eq!(room_channel("19a2b3c4d5e12f3a", 7).expect("valid"), "room:bench-19a2b3c4d5e12f3a-7");
        // The longest run id `run_id()` makes (11 hex digits of milliseconds, 6 of a pid) and the
        // most rooms --clients allows still fit.
        assert!(room_channel("fffffffffff3fffff", 99_999).is_ok());
        assert!(room_channel("Run-ID", 1).expect("lower-cased").starts_with("room:bench-run-id-"));
        assert!(room_channel("a-much-longer-run-id-than-ever-made", 1).is_err());
    }
}
