//! CPU time of processes on this machine, from Linux's `/proc/<pid>/stat`: what a run's requests
//! cost the server, its stores and the tool itself, per request. Unlike requests/s, which moves
//! with whatever else the machine's cores are doing, CPU per request stays close from run to run.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: Linux's `USER_HZ`, which is 100 on every
/// architecture it exposes to user space (proc(5) says to ask `sysconf(_SC_CLK_TCK)`, which
/// returns it).
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time that process `pid` (all its threads) has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path} (is process {pid} running, on Linux?)"))?;
    let (ticks, _) = stat_fields(&stat).with_context(|| format!("unreadable {path}"))?;
    Ok(ticks_to_time(ticks))
}

/// The CPU time of `pid` and of its children now running: PostgreSQL serves each connection in a
/// process of its own, forked from the postmaster.
pub fn cpu_time_with_children(pid: u32) -> anyhow::Result<Duration> {
    let mut total = cpu_time(pid)?;
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process may end between the listing and the read; it is skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        if let Some((ticks, parent)) = stat_fields(&stat)
            && parent == pid
        {
            total += ticks_to_time(ticks);
        }
    }
    Ok(total)
}

fn ticks_to_time(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
}

/// `utime + stime` (fields 14 and 15) and the parent's pid (field 4) of a `/proc/<pid>/stat`
/// line. The command name (field 2) is in parentheses and may hold spaces and parentheses
/// itself, so fields are counted from the last `)`.
fn stat_fields(stat: &str) -> Option<(u64, u32)> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name come field 3 (state) onwards: ppid is the 2nd of them, utime the 12th, stime
    // the 13th.
    let fields: Vec<&str> = after_name.split_whitespace().take(13).collect();
    let parent: u32 = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, parent))
}

/// Processes to account, by the name the report gives them: (name, pid, with its children).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched(pub Vec<(String, u32, bool)>);

/// The name the tool's own process is reported under.
pub const TOOL: &str = "guildhall-bench";

impl Watched {
    /// Reads every watched process's CPU time, and the tool's own.
    pub fn sample(&self) -> anyhow::Result<BTreeMap<String, Duration>> {
        let mut times = BTreeMap::new();
        for (name, pid, children) in &self.0 {
            let time = if *children { cpu_time_with_children(*pid) } else { cpu_time(*pid) };
            times.insert(name.clone(), time.with_context(|| format!("the CPU time of {name}"))?);
        }
        times.insert(TOOL.to_owned(), cpu_time(std::process::id())?);
        Ok(times)
    }
}

/// Microseconds of CPU per request of each process between two samples.
pub fn per_request(before: &BTreeMap<String, Duration>, after: &BTreeMap<String, Duration>, requests: u64) -> BTreeMap<String, f64> {
    if requests == 0 {
        return BTreeMap::new();
    }
    after
        .iter()
        .filter_map(|(name, end)| {
            let start = before.get(name)?;
            Some((name.clone(), end.saturating_sub(*start).as_secs_f64() * 1e6 / requests as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_stime_and_parent() {
        let stat = "4242 (guild (hall) x) S 17 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_fields(stat), Some((1234 + 567, 17)));
        assert_eq!(stat_fields("4242 (short) S 1"), None);
    }

    #[test]
    fn children_count_with_their_parent() {
        // A child that burns CPU until it is killed.
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh runs");
        // Until it has used 100 ms of CPU, however busy the machine is (up to a minute).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while cpu_time(child.id()).map_or(true, |used| used < Duration::from_millis(100)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let me = std::process::id();
        let alone = cpu_time(me).expect("own stat");
        let with_children = cpu_time_with_children(me).expect("own stat and children");
        child.kill().expect("kill");
        let _ = child.wait();
        assert!(with_children >= alone + Duration::from_millis(100), "{with_children:?} vs {alone:?}");
    }

    #[test]
    fn reads_this_process_and_divides_per_request() {
        let watched = Watched(vec![("self".to_owned(), std::process::id(), false)]);
        let before = watched.sample().expect("this process has a stat");
        // Some CPU to count: the sample has 10 ms resolution.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = watched.sample().expect("still there");
        let costs = per_request(&before, &after, 10);
        assert!(costs["self"] > 0.0 && costs[TOOL] > 0.0, "{costs:?}");
        assert!(per_request(&before, &after, 0).is_empty());
    }
}
