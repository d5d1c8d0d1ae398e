//! What a chat run measured, as a readable block and as one JSON line for scripts.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::report::Latency;

/// The chat run's figures. Serialised as the JSON line; field names are its keys.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReport {
    /// `chat`.
    pub scenario: String,
    /// Clients asked for (`--clients`).
    pub clients: usize,
    /// Clients that connected, authenticated and joined their room.
    pub connected: usize,
    /// Instances the clients were spread over (`--bases`).
    pub instances: usize,
    /// Rooms, of `room_size` members each (the last one may have fewer).
    pub rooms: usize,
    /// Members per room (`--room-size`).
    pub room_size: usize,
    /// Messages each client sent per second (`--rate`).
    pub rate_per_client: f64,
    /// The measured window (`--duration`): messages sent in it are measured.
    pub elapsed_secs: f64,
    /// Measured messages sent.
    pub messages_sent: u64,
    /// Measured messages acknowledged (stored and published).
    pub messages_acked: u64,
    /// `messages_sent / elapsed_secs`.
    pub messages_per_sec: f64,
    /// Measured messages that got neither an ack nor an error by the end.
    pub messages_unanswered: u64,
    /// Deliveries the acknowledged measured messages call for: each to the other members of its
    /// room who joined.
    pub deliveries_expected: u64,
    /// Deliveries of measured messages received by the end.
    pub deliveries_received: u64,
    /// `deliveries_received / deliveries_expected`.
    pub delivery_ratio: f64,
    /// Delivery latency, from the sender's `send` frame to another member's receipt of the
    /// `message` event, over every measured delivery (flattened: `p50_ms`, ..., `mean_ms`).
    #[serde(flatten)]
    pub latency: Latency,
    /// Clients that did not connect, authenticate or join.
    pub connection_failures: u64,
    /// Those failures by step and kind (`connect: io ConnectionRefused`, `join: error forbidden`).
    pub connection_failures_by_kind: BTreeMap<String, u64>,
    /// Error frames: those answering measured sends, and any answering no send.
    pub errors: u64,
    /// Those errors by code (`rate_limited`, ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Clients whose socket closed or failed after joining, before the end.
    pub disconnects: u64,
    /// Those by kind (`close 1008`, `io ConnectionReset`, `ended`).
    pub disconnects_by_kind: BTreeMap<String, u64>,
    /// Senders that got their own message delivered back (the server should skip the sender).
    pub echoes: u64,
    /// `message` events whose body was not a send time of this run.
    pub foreign: u64,
    /// The first few failures' and errors' details.
    pub samples: Vec<String>,
    /// True when every answer and every expected delivery arrived before the wait after the last
    /// send (`--timeout`) ran out.
    pub complete: bool,
    /// True when `--max-requests` stopped the sends before `--duration` did.
    pub hit_max_requests: bool,
    /// Each instance's resident memory and connections (empty without `--pids`).
    pub memory: Vec<InstanceMemory>,
    /// Over all instances: the growth of their resident memory from before the sockets opened to
    /// after all had joined, divided by the connections they held, in KiB.
    pub kib_per_connection: Option<f64>,
    /// Microseconds of CPU (user and system) each process given with `--cpu` (and the tool
    /// itself, `guildhall-bench`) spent per delivery received, over the measured window: from its
    /// start to the end of the wait for the last deliveries.
    pub cpu_us_per_delivery: BTreeMap<String, f64>,
}

/// One instance's resident memory (`VmRSS`) around the run, in KiB.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceMemory {
    /// The instance's base URL.
    pub base: String,
    /// Its process id.
    pub pid: u32,
    /// Connections it held once all clients had joined.
    pub connections: usize,
    /// Before the first socket opened (after the sign-ins, their HTTP connections closed).
    pub rss_before_kib: u64,
    /// Once every client had joined, idle (a second later).
    pub rss_joined_kib: u64,
    /// At the end of the run, after the messages, before the sockets closed.
    pub rss_end_kib: u64,
    /// `(rss_joined_kib - rss_before_kib) / connections`.
    pub kib_per_connection: Option<f64>,
    /// `(rss_end_kib - rss_before_kib) / connections`: with what the traffic left allocated.
    pub kib_per_connection_end: Option<f64>,
}

impl InstanceMemory {
    /// The figures of one instance from its three readings.
    pub fn new(base: &str, pid: u32, connections: usize, rss_before_kib: u64, rss_joined_kib: u64, rss_end_kib: u64) -> Self {
        Self {
            base: base.to_owned(),
            pid,
            connections,
            rss_before_kib,
            rss_joined_kib,
            rss_end_kib,
            kib_per_connection: per_connection(rss_joined_kib, rss_before_kib, connections),
            kib_per_connection_end: per_connection(rss_end_kib, rss_before_kib, connections),
        }
    }
}

/// `(after - before) / connections` in KiB (negative when memory was returned), `None` for no
/// connections.
pub fn per_connection(after_kib: u64, before_kib: u64, connections: usize) -> Option<f64> {
    (connections > 0).then(|| (after_kib as f64 - before_kib as f64) / connections as f64)
}

/// The growth per connection over all instances: total growth over total connections.
pub fn overall_per_connection(memory: &[InstanceMemory]) -> Option<f64> {
    let connections = memory.iter().map(|instance| instance.connections).sum::<usize>();
    let before = memory.iter().map(|instance| instance.rss_before_kib).sum::<u64>();
    let joined = memory.iter().map(|instance| instance.rss_joined_kib).sum::<u64>();
    if memory.is_empty() { None } else { per_connection(joined, before, connections) }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    map.iter().map(|(kind, count)| format!("{kind}: {count}")).collect::<Vec<_>>().join(", ")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl fmt::Display for ChatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario      chat ({} clients over {} instance(s), {} rooms of {}, {} messages/s each)",
            self.clients, self.instances, self.rooms, self.room_size, self.rate_per_client
        )?;
        write!(
            f,
            "clients       {} of {} connected and joined; connection failures {}",
            self.connected, self.clients, self.connection_failures
        )?;
        if !self.connection_failures_by_kind.is_empty() {
            write!(f, " ({})", counts(&self.connection_failures_by_kind))?;
        }
        if self.disconnects > 0 {
            write!(f, "; disconnected later {} ({})", self.disconnects, counts(&self.disconnects_by_kind))?;
        }
        writeln!(f)?;
        write!(
            f,
            "messages      {} sent in {:.2} s = {:.1} messages/s; {} acked, {} unanswered; errors {}",
            self.messages_sent, self.elapsed_secs, self.messages_per_sec, self.messages_acked, self.messages_unanswered, self.errors
        )?;
        if !self.errors_by_code.is_empty() {
            write!(f, " ({})", counts(&self.errors_by_code))?;
        }
        writeln!(f)?;
        write!(
            f,
            "deliveries    {} received of {} expected ({:.3} %)",
            self.deliveries_received,
            self.deliveries_expected,
            100.0 * self.delivery_ratio
        )?;
        if self.echoes > 0 || self.foreign > 0 {
            write!(f, "; echoes to the sender {}, foreign bodies {}", self.echoes, self.foreign)?;
        }
        if !self.complete {
            write!(f, "; NOT complete when the wait after the last send ran out")?;
        }
        writeln!(f)?;
        for sample in &self.samples {
            writeln!(f, "  sample      {sample}")?;
        }
        write!(f, "latency ms    {}  (send to receipt by another member)", self.latency)?;
        for instance in &self.memory {
            write!(
                f,
                "\nmemory        {} (pid {}): {} connections; RSS {:.1} MiB before, {:.1} MiB joined, {:.1} MiB at the end",
                instance.base,
                instance.pid,
                instance.connections,
                mib(instance.rss_before_kib),
                mib(instance.rss_joined_kib),
                mib(instance.rss_end_kib)
            )?;
            write!(f, "\n              = {} KiB per connection", kib(instance.kib_per_connection))?;
            write!(f, " ({} KiB after the messages)", kib(instance.kib_per_connection_end))?;
        }
        if !self.memory.is_empty() {
            write!(f, "\nmemory        overall {} KiB per connection", kib(self.kib_per_connection))?;
        }
        if !self.cpu_us_per_delivery.is_empty() {
            let each: Vec<String> = self.cpu_us_per_delivery.iter().map(|(name, us)| format!("{name} {us:.2}")).collect();
            write!(f, "\ncpu us/deliv  {}", each.join("  "))?;
        }
        if self.hit_max_requests {
            write!(f, "\nnote          --max-requests stopped the sends before --duration")?;
        }
        Ok(())
    }
}

fn kib(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |kib| format!("{kib:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection() {
        let a = InstanceMemory::new("http://a", 1, 2500, 40_000, 90_000, 95_000);
        assert_eq!(a.kib_per_connection, Some(20.0));
        assert_eq!(a.kib_per_connection_end, Some(22.0));
        let b = InstanceMemory::new("http://b", 2, 2500, 30_000, 70_000, 60_000);
        assert_eq!(b.kib_per_connection, Some(16.0));
        assert_eq!(overall_per_connection(&[a, b]), Some(18.0));
        assert_eq!(per_connection(100, 200, 10), Some(-10.0), "memory given back shows as negative");
        assert_eq!(per_connection(100, 0, 0), None);
        assert_eq!(overall_per_connection(&[]), None);
    }
}
