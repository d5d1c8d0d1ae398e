//! What a run measured, as a readable block and as one JSON line for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::chat::ChatReport;
use crate::options::Options;

/// How many error bodies a report keeps (the first ones, in the order they were sent).
pub const ERROR_SAMPLES: usize = 5;

/// The measured part of one run. Serialised as the JSON line; field names are its keys.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Players the requests were spread over.
    pub players: usize,
    /// Length of the measured window, from its start to the last measured response.
    pub elapsed_secs: f64,
    /// Measured requests, answered or failed.
    pub requests: u64,
    /// Measured requests that got no 2xx: another status, a timeout or a transport error.
    pub errors: u64,
    /// `requests / elapsed_secs`, errors included.
    pub requests_per_sec: f64,
    /// Latency of every measured request, errors included (flattened: `p50_ms`, ..., `mean_ms`).
    #[serde(flatten)]
    pub latency: Latency,
    /// Errors by HTTP status (`"429"`) or by failure (`"timeout"`, `"connect"`, `"transport"`).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first few errors' statuses and bodies.
    pub error_samples: Vec<String>,
    /// True when `--max-requests` ended the run before `--duration` did.
    pub hit_max_requests: bool,
    /// Microseconds of CPU (user and system) per measured request, by process: the tool's own
    /// (`guildhall-bench`) and those `--cpu` named, over the measured window.
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

impl Report {
    /// Summarises one run from its measured latencies (in nanoseconds, any order) and errors.
    pub fn new(
        scenario: &str,
        options: &Options,
        elapsed: Duration,
        mut latencies_ns: Vec<u64>,
        errors_by_kind: BTreeMap<String, u64>,
        error_samples: Vec<String>,
        hit_max_requests: bool,
    ) -> Self {
        let requests = latencies_ns.len() as u64;
        let elapsed_secs = elapsed.as_secs_f64();
        Self {
            scenario: scenario.to_owned(),
            concurrency: options.concurrency,
            players: options.players,
            elapsed_secs,
            requests,
            errors: errors_by_kind.values().sum(),
            requests_per_sec: if elapsed_secs > 0.0 { requests as f64 / elapsed_secs } else { 0.0 },
            latency: Latency::of(&mut latencies_ns),
            errors_by_kind,
            error_samples,
            hit_max_requests,
            cpu_us_per_request: BTreeMap::new(),
        }
    }

    /// The report with the CPU each process spent per request.
    pub fn with_cpu(self, cpu_us_per_request: BTreeMap<String, f64>) -> Self {
        Self { cpu_us_per_request, ..self }
    }

    /// The report as one line of JSON.
    pub fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// Latency percentiles (nearest rank), maximum and mean of a set of measurements, in ms.
/// Serialised with these names (`p50_ms`, ...), which scripts read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Half the measurements took at most this long.
    pub p50_ms: f64,
    /// See [`Latency::p50_ms`].
    pub p90_ms: f64,
    /// See [`Latency::p50_ms`].
    pub p99_ms: f64,
    /// The slowest measurement.
    pub max_ms: f64,
    /// The mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises `latencies_ns` (nanoseconds, any order; sorted in place). All zero for none.
    pub fn of(latencies_ns: &mut [u64]) -> Self {
        latencies_ns.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        // Summed in u128: half a million deliveries of a few seconds each overflow no u64, but a
        // long run of slow ones could.
        let sum: u128 = latencies_ns.iter().map(|&ns| u128::from(ns)).sum();
        let mean_ns = sum.checked_div(latencies_ns.len() as u128).map_or(0, |mean| u64::try_from(mean).unwrap_or(u64::MAX));
        Self {
            p50_ms: ms(percentile(latencies_ns, 0.50)),
            p90_ms: ms(percentile(latencies_ns, 0.90)),
            p99_ms: ms(percentile(latencies_ns, 0.99)),
            max_ms: ms(latencies_ns.last().copied().unwrap_or(0)),
            mean_ms: ms(mean_ns),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (mean {:.2})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.mean_ms
        )
    }
}

/// What a run reports, whichever driver ran it: printed as a block, then as one JSON line.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Summary {
    /// A closed-loop HTTP scenario's.
    Requests(Report),
    /// The chat scenario's.
    Chat(ChatReport),
}

impl Summary {
    /// The summary as one line of JSON.
    pub fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Summary::Requests(report) => report.fmt(f),
            Summary::Chat(report) => report.fmt(f),
        }
    }
}

/// The `q` quantile (0 < q <= 1) of `sorted` by the nearest-rank method: the smallest value that at
/// least `q` of the values are less than or equal to. 0 for no values.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario      {} ({} workers, {} players)", self.scenario, self.concurrency, self.players)?;
        writeln!(f, "requests      {} in {:.2} s = {:.1} requests/s", self.requests, self.elapsed_secs, self.requests_per_sec)?;
        write!(f, "errors        {}", self.errors)?;
        if !self.errors_by_kind.is_empty() {
            let kinds: Vec<String> = self.errors_by_kind.iter().map(|(kind, count)| format!("{kind}: {count}")).collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        writeln!(f)?;
        for sample in &self.error_samples {
            writeln!(f, "  error       {sample}")?;
        }
        write!(f, "latency ms    {}", self.latency)?;
        if !self.cpu_us_per_request.is_empty() {
            let costs: Vec<String> = self.cpu_us_per_request.iter().map(|(name, us)| format!("{name} {us:.1}")).collect();
            write!(f, "\ncpu us/req    {}", costs.join("  "))?;
        }
        if self.hit_max_requests {
            write!(f, "\nnote          --max-requests ended the run before --duration")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 0.50), 50);
        assert_eq!(percentile(&hundred, 0.90), 90);
        assert_eq!(percentile(&hundred, 0.99), 99);
        assert_eq!(percentile(&hundred, 1.0), 100);

        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&ten, 0.50), 5);
        assert_eq!(percentile(&ten, 0.99), 10, "a high quantile of few values is the maximum");
        assert_eq!(percentile(&ten, 0.001), 1, "a tiny quantile is the minimum");

        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn report_summarises_unsorted_latencies() {
        let options = Options::default();
        let latencies = vec![4_000_000, 1_000_000, 3_000_000, 2_000_000];
        let errors = BTreeMap::from([("429".to_owned(), 1)]);
        let report = Report::new("me", &options, Duration::from_secs(2), latencies, errors, vec![], false);
        assert_eq!(report.requests, 4);
        assert_eq!(report.errors, 1);
        assert!((report.requests_per_sec - 2.0).abs() < 1e-9);
        assert!((report.latency.p50_ms - 2.0).abs() < 1e-9);
        assert!((report.latency.max_ms - 4.0).abs() < 1e-9);
        assert!((report.latency.mean_ms - 2.5).abs() < 1e-9);
        let json: serde_json::Value = serde_json::from_str(&report.json().expect("serialises")).expect("valid JSON");
        assert_eq!(json["requests_per_sec"], 2.0);
        // The keys run.sh reads stay at the top level.
        assert_eq!(json["p50_ms"], 2.0);
        assert_eq!(json["p99_ms"], 4.0);
        let summary: serde_json::Value = serde_json::from_str(&Summary::Requests(report).json().expect("serialises")).expect("valid JSON");
        assert_eq!(summary, json, "a summary serialises as the report it holds");
    }

    #[test]
    fn latency_of_nothing_is_zero() {
        assert_eq!(Latency::of(&mut []), Latency::default());
    }
}
