//! The process's figures: counters, gauges and histograms kept in atomics, served in the
//! Prometheus text exposition format (version 0.0.4) on a listener of their own (`METRICS_ADDR`,
//! never routed by the load balancer), and summed up for the operators' console
//! ([`Metrics::snapshot`]).
//!
//! A registry of our own rather than a metrics crate: what Guildhall needs is a few dozen series
//! with fixed buckets, and the hot paths (every request, every chat delivery) must cost a few
//! atomic additions and no lock. Every handle ([`Counter`], [`Gauge`], [`Histogram`]) is an `Arc`
//! around atomics: the component that counts keeps its handle, and the registry keeps a clone to
//! read at scrape time. Figures that already exist elsewhere (pool sizes, open sockets) are not
//! counted twice: a [`Metrics::gauge_fn`] reads them when scraped, and the few that need a query
//! (the outbox backlog) are a [`Metrics::collector`], run at scrape time with a timeout and
//! reused for a few seconds.
//!
//! Label values are bounded by construction: HTTP requests are labelled by the route template
//! the router matched (`/v1/leaderboards/{id}`), never the raw path, and by one of eight method
//! names; everything else by names from a fixed list (consumers, outcomes, states).
//!
//! One registry per built application (`guildhall::App`), not a global: tests run many servers
//! in one process, each with figures of its own.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Method, Response, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::future::BoxFuture;
use serde::Serialize;
use utoipa::ToSchema;

/// Bucket bounds in seconds of request and commit latencies: half a millisecond to 30 s (the
/// request timeout).
pub const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Bucket bounds in seconds of in-process hand-offs (chat fan-out): a tenth of a millisecond up.
pub const FAST_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Bucket bounds in seconds of queue lag: 10 ms to an hour.
pub const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// How long a scrape waits for a collector (a database query) before leaving its figures out.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A count that only goes up. Cheap to clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cheap to clone; clones share the value.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds `n` (negative to take away).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a histogram's observations are: durations (kept in nanoseconds, shown in seconds) or
/// plain counts (batch sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Seconds,
    Count,
}

impl Unit {
    /// Observed units per shown unit.
    fn scale(self) -> f64 {
        match self {
            Unit::Seconds => 1e9,
            Unit::Count => 1.0,
        }
    }
}

/// Observations counted into fixed buckets, with their sum. Cheap to clone; clones share the
/// buckets. An observation is two atomic additions (its bucket and the sum) after a search of
/// at most 16 bounds.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    unit: Unit,
    /// Upper bounds (inclusive), ascending, in observed units.
    bounds: Box<[u64]>,
    /// One count per bound, and one more for everything above the last (`+Inf`); not cumulative.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in observed units (nanoseconds: 584 years before it wraps).
    sum: AtomicU64,
}

impl Buckets {
    fn new(unit: Unit, bounds: Vec<u64>) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bucket bounds must ascend");
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Buckets { unit, bounds: bounds.into(), counts, sum: AtomicU64::new(0) }
    }

    fn observe(&self, value: u64) {
        let at = self.bounds.partition_point(|bound| *bound < value);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is the total) and the sum in shown units.
    fn read(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|count| {
                total += count.load(Ordering::Relaxed);
                total
            })
            .collect();
        (cumulative, self.sum.load(Ordering::Relaxed) as f64 / self.unit.scale())
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl Histogram {
    /// A histogram of durations with these bucket bounds in seconds (e.g. [`LATENCY_BUCKETS`]).
    pub fn seconds(bounds: &[f64]) -> Self {
        let bounds = bounds.iter().map(|s| (s * 1e9).round() as u64).collect();
        Histogram(Arc::new(Buckets::new(Unit::Seconds, bounds)))
    }

    /// A histogram of counts (sizes) with these bucket bounds.
    pub fn counts(bounds: &[u64]) -> Self {
        Histogram(Arc::new(Buckets::new(Unit::Count, bounds.to_vec())))
    }

    /// Records a duration (a histogram of seconds).
    pub fn observe_duration(&self, duration: Duration) {
        debug_assert_eq!(self.0.unit, Unit::Seconds);
        self.0.observe(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records a count (a histogram of counts).
    pub fn observe(&self, value: u64) {
        debug_assert_eq!(self.0.unit, Unit::Count);
        self.0.observe(value);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count()
    }
}

/// A gauge read by a scrape-time collector ([`Metrics::collector`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (`guildhall_outbox_pending`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Label pairs (bounded values only).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// Runs at scrape time and returns gauges; see [`Metrics::collector`].
type Collect = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<Vec<Sample>>> + Send + Sync>;

/// Reads a gauge at scrape time; `None` leaves it out.
type Read = Box<dyn Fn() -> Option<f64> + Send + Sync>;

enum Source {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
    Read(Read),
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Counter(_) => "counter",
            Source::Gauge(_) | Source::Read(_) => "gauge",
            Source::Histogram(_) => "histogram",
        }
    }
}

struct Series {
    labels: Vec<(&'static str, String)>,
    source: Source,
}

struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<Series>,
}

struct Collector {
    collect: Collect,
    /// Results are reused this long, so that the console's polling and several scrapers do not
    /// each run the query.
    reuse_for: Duration,
    last: Mutex<Option<(Instant, Vec<Sample>)>>,
}

/// The HTTP requests of one route and method.
#[derive(Debug)]
struct RouteStats {
    method: &'static str,
    route: Box<str>,
    /// Responses by status class: 1xx (WebSocket upgrades), 2xx, 3xx, 4xx, 5xx.
    classes: [AtomicU64; 5],
    duration: Buckets,
}

impl RouteStats {
    fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// The methods counted apart; any other is `other`, so a client cannot grow the label set.
const METHODS: [&str; 8] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"];
/// The route label of requests no route matched (404s); route templates start with `/`.
pub const UNMATCHED: &str = "unmatched";

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// One route's stats by method (an index into `METHODS`), made on first use.
type PerMethod = [Option<Arc<RouteStats>>; METHODS.len()];

/// Where the previous snapshot's request totals were, for the rates of the next.
struct RatePoint {
    at: Instant,
    http: HttpTotals,
    rates: Option<Rates>,
}

struct Registry {
    started: Instant,
    started_unix: f64,
    families: Mutex<Vec<Family>>,
    collectors: Mutex<Vec<Arc<Collector>>>,
    /// Route template → stats per method.
    routes: Mutex<HashMap<Box<str>, PerMethod>>,
    rate_point: Mutex<Option<RatePoint>>,
}

/// The registry of one application's figures. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks `mutex`, carrying on after a panic elsewhere: every update under these locks leaves
/// the data whole (a push, an insert).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// An empty registry, with the process's own figures (build, start time, memory).
    pub fn new() -> Self {
        let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let metrics = Metrics(Arc::new(Registry {
            started: Instant::now(),
            started_unix,
            families: Mutex::new(Vec::new()),
            collectors: Mutex::new(Vec::new()),
            routes: Mutex::new(HashMap::new()),
            rate_point: Mutex::new(None),
        }));
        metrics.gauge_fn(
            "guildhall_build_info",
            "Always 1; the version of the running build.",
            &[("version", env!("CARGO_PKG_VERSION"))],
            || Some(1.0),
        );
        metrics
            .gauge_fn("guildhall_process_start_time_seconds", "When the process started, Unix seconds.", &[], move || Some(started_unix));
        metrics.gauge_fn("guildhall_process_resident_memory_bytes", "Resident memory of the process (Linux).", &[], resident_memory);
        metrics
    }

    fn add(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], source: Source) {
        debug_assert!(valid_name(name), "{name} is not a Prometheus metric name");
        let labels: Vec<(&'static str, String)> = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut families = lock(&self.0.families);
        let family = match families.iter_mut().position(|f| f.name == name) {
            Some(at) => &mut families[at],
            None => {
                families.push(Family { name, help, series: Vec::new() });
                families.last_mut().expect("just pushed")
            }
        };
        debug_assert!(family.series.iter().all(|s| s.source.kind() == source.kind()), "{name} registered with two types");
        // The same name and labels again (a component registered twice) replaces the first.
        family.series.retain(|s| s.labels != labels);
        family.series.push(Series { labels, source });
    }

    /// Registers `counter` as the series `name{labels}`.
    pub fn register_counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], counter: &Counter) {
        self.add(name, help, labels, Source::Counter(counter.clone()));
    }

    /// Registers `gauge` as the series `name{labels}`.
    pub fn register_gauge(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], gauge: &Gauge) {
        self.add(name, help, labels, Source::Gauge(gauge.clone()));
    }

    /// Registers `histogram` as the series `name{labels}`.
    pub fn register_histogram(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], histogram: &Histogram) {
        self.add(name, help, labels, Source::Histogram(histogram.clone()));
    }

    /// A new counter registered as `name{labels}`.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        let counter = Counter::default();
        self.register_counter(name, help, labels, &counter);
        counter
    }

    /// A gauge `name{labels}` whose value `read` gives at scrape time (a figure kept elsewhere:
    /// a pool's size, the sockets open); `None` leaves it out of that scrape.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        read: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) {
        self.add(name, help, labels, Source::Read(Box::new(read)));
    }

    /// Gauges that need I/O to read (a database query), run at scrape time within two seconds
    /// (else left out of that scrape), their results reused for `reuse_for`.
    pub fn collector<F, Fut>(&self, reuse_for: Duration, collect: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<Sample>>> + Send + 'static,
    {
        let collect: Collect = Box::new(move || Box::pin(collect()));
        lock(&self.0.collectors).push(Arc::new(Collector { collect, reuse_for, last: Mutex::new(None) }));
    }

    /// The layer that counts every request by method, matched route and status class, and times
    /// it. Put it outermost in the stack given to `Router::layer`, which wraps each route's
    /// endpoint: the route's stats are looked up once per endpoint and method, not per request.
    pub fn http_layer(&self) -> RouteLayer {
        RouteLayer { metrics: self.clone() }
    }

    /// The stats of `route` and method `method` (an index into `METHODS`), made on first use.
    fn route_stats(&self, method: usize, route: &str) -> Arc<RouteStats> {
        let mut routes = lock(&self.0.routes);
        let slots = match routes.get_mut(route) {
            Some(slots) => slots,
            None => routes.entry(route.into()).or_default(),
        };
        slots[method]
            .get_or_insert_with(|| {
                Arc::new(RouteStats {
                    method: METHODS[method],
                    route: route.into(),
                    classes: Default::default(),
                    duration: Buckets::new(Unit::Seconds, LATENCY_BUCKETS.iter().map(|s| (s * 1e9).round() as u64).collect()),
                })
            })
            .clone()
    }

    /// Every route's stats, sorted by route and method.
    fn all_routes(&self) -> Vec<Arc<RouteStats>> {
        let routes = lock(&self.0.routes);
        let mut all: Vec<Arc<RouteStats>> = routes.values().flat_map(|slots| slots.iter().flatten().cloned()).collect();
        all.sort_by(|a, b| (&a.route, a.method).cmp(&(&b.route, b.method)));
        all
    }

    /// Runs the collectors (those whose results are stale), each within `COLLECT_TIMEOUT`.
    async fn collect(&self) -> Vec<Sample> {
        let collectors: Vec<Arc<Collector>> = lock(&self.0.collectors).clone();
        let runs = collectors.into_iter().map(|collector| async move {
            if let Some((at, samples)) = lock(&collector.last).as_ref()
                && at.elapsed() < collector.reuse_for
            {
                return samples.clone();
            }
            match tokio::time::timeout(COLLECT_TIMEOUT, (collector.collect)()).await {
                Ok(Ok(samples)) => {
                    *lock(&collector.last) = Some((Instant::now(), samples.clone()));
                    samples
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = format!("{err:#}"), "a metrics collector failed; its figures are left out");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!("a metrics collector timed out; its figures are left out");
                    Vec::new()
                }
            }
        });
        futures_util::future::join_all(runs).await.into_iter().flatten().collect()
    }

    /// Every figure in the Prometheus text format, version 0.0.4.
    pub async fn render(&self) -> String {
        let collected = self.collect().await;
        let mut out = String::with_capacity(32 * 1024);
        for family in lock(&self.0.families).iter() {
            let Some(first) = family.series.first() else { continue };
            write_head(&mut out, family.name, family.help, first.source.kind());
            for series in &family.series {
                match &series.source {
                    Source::Counter(c) => write_sample(&mut out, family.name, &series.labels, None, c.get() as f64),
                    Source::Gauge(g) => write_sample(&mut out, family.name, &series.labels, None, g.get() as f64),
                    Source::Read(read) => {
                        if let Some(value) = read() {
                            write_sample(&mut out, family.name, &series.labels, None, value);
                        }
                    }
                    Source::Histogram(h) => write_histogram(&mut out, family.name, &series.labels, &h.0),
                }
            }
        }
        let routes = self.all_routes();
        if !routes.is_empty() {
            const REQUESTS: &str = "guildhall_http_requests_total";
            const DURATION: &str = "guildhall_http_request_duration_seconds";
            write_head(
                &mut out,
                REQUESTS,
                "HTTP requests answered, by method, matched route template (`unmatched`: no route) and status class.",
                "counter",
            );
            for stats in &routes {
                for (class, count) in stats.classes.iter().enumerate() {
                    let count = count.load(Ordering::Relaxed);
                    // Classes a route never answered are left out: fewer series to ship.
                    if count > 0 {
                        let labels = [
                            ("method", stats.method.to_owned()),
                            ("route", stats.route.to_string()),
                            ("status", format!("{}xx", class + 1)),
                        ];
                        write_sample(&mut out, REQUESTS, &labels, None, count as f64);
                    }
                }
            }
            write_head(
                &mut out,
                DURATION,
                "Time from a request's arrival at the router to its response's head, by method and matched route.",
                "histogram",
            );
            for stats in &routes {
                let labels = [("method", stats.method.to_owned()), ("route", stats.route.to_string())];
                write_histogram(&mut out, DURATION, &labels, &stats.duration);
            }
        }
        let mut by_name: BTreeMap<&'static str, Vec<&Sample>> = BTreeMap::new();
        for sample in &collected {
            by_name.entry(sample.name).or_default().push(sample);
        }
        for (name, samples) in by_name {
            write_head(&mut out, name, samples[0].help, "gauge");
            for sample in samples {
                write_sample(&mut out, name, &sample.labels, None, sample.value);
            }
        }
        out
    }

    /// The figures the console shows (see [`Snapshot`]): read from the same series as
    /// `/metrics`, so both always agree. Runs the collectors (a query at most every few seconds).
    pub async fn snapshot(&self) -> Snapshot {
        let collected = self.collect().await;
        // Each counter's and gauge's value summed over its label sets.
        let mut values: HashMap<&'static str, f64> = HashMap::new();
        for family in lock(&self.0.families).iter() {
            for series in &family.series {
                let value = match &series.source {
                    Source::Counter(c) => Some(c.get() as f64),
                    Source::Gauge(g) => Some(g.get() as f64),
                    Source::Read(read) => read(),
                    Source::Histogram(_) => None,
                };
                if let Some(value) = value {
                    *values.entry(family.name).or_default() += value;
                }
            }
        }
        for sample in &collected {
            *values.entry(sample.name).or_default() += sample.value;
        }
        let mut http = HttpTotals::default();
        for stats in self.all_routes() {
            let class = |i: usize| stats.classes[i].load(Ordering::Relaxed);
            http.requests += (0..5).map(class).sum::<u64>();
            http.client_errors += class(3);
            http.server_errors += class(4);
        }
        let whole = |name: &str| values.get(name).map(|v| v.max(0.0) as u64);
        let outbox = match (values.get("guildhall_outbox_pending"), values.get("guildhall_outbox_dead")) {
            (Some(pending), Some(dead)) => Some(OutboxFigures {
                pending: pending.max(0.0) as u64,
                oldest_age_seconds: values.get("guildhall_outbox_oldest_age_seconds").copied().unwrap_or(0.0),
                dead: dead.max(0.0) as u64,
            }),
            _ => None,
        };
        let db_pool = whole("guildhall_db_pool_max").map(|max| PoolFigures {
            max,
            open: whole("guildhall_db_pool_connections").unwrap_or(0),
            idle: whole("guildhall_db_pool_idle").unwrap_or(0),
            waiting: whole("guildhall_db_pool_waiting").unwrap_or(0),
        });
        let now = Instant::now();
        let rates = {
            let mut point = lock(&self.0.rate_point);
            match point.as_mut() {
                Some(p) if now.duration_since(p.at) >= Duration::from_secs(1) => {
                    let rates = http.rates_since(&p.http, now.duration_since(p.at));
                    *p = RatePoint { at: now, http, rates: Some(rates) };
                    Some(rates)
                }
                Some(p) => p.rates,
                None => {
                    *point = Some(RatePoint { at: now, http, rates: None });
                    None
                }
            }
        };
        Snapshot {
            taken_at_ms: crate::db::now_millis(),
            uptime_seconds: self.0.started.elapsed().as_secs_f64(),
            started_at_unix_seconds: self.0.started_unix,
            http,
            rates,
            players_connected: whole("guildhall_chat_players_connected"),
            chat_sockets: whole("guildhall_chat_sockets"),
            chat_deliveries: whole("guildhall_chat_deliveries_total"),
            outbox,
            db_pool,
            cache_errors: whole("guildhall_cache_errors_total").unwrap_or(0),
        }
    }
}

/// The router of the metrics listener: `GET /metrics` (the text format) and
/// `GET /metrics/summary` (the [`Snapshot`] as JSON).
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(exposition))
        .route("/metrics/summary", get(summary))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "the metrics listener serves /metrics and /metrics/summary\n") })
        .with_state(metrics)
}

async fn exposition(State(metrics): State<Metrics>) -> impl IntoResponse {
    let body = metrics.render().await;
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
}

async fn summary(State(metrics): State<Metrics>) -> impl IntoResponse {
    axum::Json(metrics.snapshot().await)
}

/// HTTP requests answered since the process started.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct HttpTotals {
    /// Every response, WebSocket upgrades included.
    pub requests: u64,
    /// 4xx responses.
    pub client_errors: u64,
    /// 5xx responses.
    pub server_errors: u64,
}

impl HttpTotals {
    /// Requests per second and the share of them answered 5xx, from `earlier` to these totals
    /// over `elapsed`.
    pub fn rates_since(&self, earlier: &HttpTotals, elapsed: Duration) -> Rates {
        let requests = self.requests.saturating_sub(earlier.requests);
        let errors = self.server_errors.saturating_sub(earlier.server_errors);
        let secs = elapsed.as_secs_f64().max(1e-3);
        Rates {
            requests_per_second: requests as f64 / secs,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            window_seconds: elapsed.as_secs_f64(),
        }
    }
}

/// Request rates over a window.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq)]
pub struct Rates {
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// The share of those answered 5xx, 0 to 1 (0 when there were none).
    pub error_rate: f64,
    /// The window's length.
    pub window_seconds: f64,
}

/// The outbox: events recorded and not yet delivered.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq)]
pub struct OutboxFigures {
    /// Events waiting for delivery (dead ones not included).
    pub pending: u64,
    /// Age of the oldest of them, seconds (0 when none wait).
    pub oldest_age_seconds: f64,
    /// Events parked as dead (`guildhall events dead`).
    pub dead: u64,
}

/// The database pool of this process.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct PoolFigures {
    /// Most connections it opens.
    pub max: u64,
    /// Connections open now.
    pub open: u64,
    /// Of those, idle.
    pub idle: u64,
    /// Requests waiting for a connection now.
    pub waiting: u64,
}

/// This process's figures for the operators' console, as JSON (`/metrics/summary` on the
/// metrics listener serves the same). Counters count from the process's start; `rates` compares
/// with the snapshot taken before (at least a second before: calls in between get the same
/// rates), so a console polling every few seconds shows the rates over its polling interval.
/// Figures of services that do not run in this process are `null`.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Snapshot {
    /// When it was taken, Unix milliseconds.
    pub taken_at_ms: i64,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
    /// When the process started, Unix seconds.
    pub started_at_unix_seconds: f64,
    /// Requests answered so far.
    pub http: HttpTotals,
    /// Requests per second and error rate since the previous snapshot; `null` on the first.
    pub rates: Option<Rates>,
    /// Players with an authenticated chat socket on this process (distinct accounts).
    pub players_connected: Option<u64>,
    /// Chat sockets open on this process (authenticated or not yet).
    pub chat_sockets: Option<u64>,
    /// Chat frames handed to sockets of this process so far.
    pub chat_deliveries: Option<u64>,
    /// The outbox, where this process runs the event relay.
    pub outbox: Option<OutboxFigures>,
    /// The database pool.
    pub db_pool: Option<PoolFigures>,
    /// Redis commands that failed so far (0 on the in-memory cache).
    pub cache_errors: u64,
}

/// Resident memory from `/proc/self/statm` (pages × 4 KiB, the page size on x86-64 and most
/// arm64 Linux builds); `None` elsewhere.
fn resident_memory() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the format's metric names.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn write_head(out: &mut String, name: &str, help: &str, kind: &str) {
    // HELP escapes backslash and newline only.
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line: `name{labels,extra} value`.
fn write_sample(out: &mut String, name: &str, labels: &[(&'static str, String)], extra: Option<(&str, &str)>, value: f64) {
    out.push_str(name);
    let pairs = labels.iter().map(|(k, v)| (*k, v.as_str())).chain(extra);
    let mut first = true;
    for (key, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(key);
        out.push_str("=\"");
        // Label values escape backslash, double quote and newline.
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

fn write_histogram(out: &mut String, name: &str, labels: &[(&'static str, String)], buckets: &Buckets) {
    let (cumulative, sum) = buckets.read();
    let bucket = format!("{name}_bucket");
    let scale = buckets.unit.scale();
    for (bound, count) in buckets.bounds.iter().zip(&cumulative) {
        let le = (*bound as f64 / scale).to_string();
        write_sample(out, &bucket, labels, Some(("le", &le)), *count as f64);
    }
    let total = cumulative.last().copied().unwrap_or(0);
    write_sample(out, &bucket, labels, Some(("le", "+Inf")), total as f64);
    write_sample(out, &format!("{name}_sum"), labels, None, sum);
    write_sample(out, &format!("{name}_count"), labels, None, total as f64);
}

/// Counts and times requests per route: see [`Metrics::http_layer`].
#[derive(Clone)]
pub struct RouteLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService { inner, slots: Arc::new(RouteSlots { metrics: self.metrics.clone(), by_method: Default::default() }) }
    }
}

/// The stats one endpoint's requests go to, per method, found on its first request.
struct RouteSlots {
    metrics: Metrics,
    by_method: [OnceLock<Arc<RouteStats>>; METHODS.len()],
}

impl RouteSlots {
    fn stats(&self, method: usize, route: &str) -> Arc<RouteStats> {
        // An endpoint serves one route template; a fallback could serve requests of another,
        // which then take the registry's lock instead of the slot.
        if let Some(stats) = self.by_method[method].get()
            && *stats.route == *route
        {
            return stats.clone();
        }
        let stats = self.metrics.route_stats(method, route);
        let _ = self.by_method[method].set(stats.clone());
        stats
    }
}

/// One endpoint wrapped by [`RouteLayer`].
#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    slots: Arc<RouteSlots>,
}

impl<S, B> tower::Service<axum::extract::Request> for RouteService<S>
where
    S: tower::Service<axum::extract::Request, Response = Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let started = Instant::now();
        let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str);
        let stats = self.slots.stats(method_index(request.method()), route);
        Timed { inner: self.inner.call(request), stats, started }
    }
}

pin_project_lite::pin_project! {
    /// A request in flight: records its status and time when the response is ready. A request
    /// whose client went away first is not counted.
    pub struct Timed<F> {
        #[pin]
        inner: F,
        stats: Arc<RouteStats>,
        started: Instant,
    }
}

impl<F, B, E> Future for Timed<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.stats.record(response.status().as_u16(), this.started.elapsed());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_inclusive_buckets() {
        let h = Histogram::counts(&[1, 2, 4]);
        for v in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(v);
        }
        let (cumulative, sum) = h.0.read();
        // le=1: 0, 1; le=2: + 2; le=4: + 3, 4; +Inf: + 5, 100.
        assert_eq!(cumulative, vec![2, 3, 5, 7]);
        assert_eq!(sum, 115.0);
        assert_eq!(h.count(), 7);
    }

    #[tokio::test]
    async fn the_text_format_is_well_formed() {
        let metrics = Metrics::new();
        let c = metrics.counter("test_things_total", "Things.\nCounted.", &[("kind", "a\"b\\c\nd")]);
        c.add(3);
        let h = Histogram::seconds(&[0.001, 0.5]);
        metrics.register_histogram("test_wait_seconds", "Waits.", &[], &h);
        h.observe_duration(Duration::from_micros(500));
        h.observe_duration(Duration::from_secs(2));
        metrics.gauge_fn("test_absent", "Left out.", &[], || None);
        metrics.collector(Duration::ZERO, || async {
            Ok(vec![Sample { name: "test_collected", help: "Collected.", labels: vec![], value: 1.5 }])
        });
        let text = metrics.render().await;
        assert!(text.contains("# HELP test_things_total Things.\\nCounted.\n# TYPE test_things_total counter\n"), "{text}");
        assert!(text.contains("test_things_total{kind=\"a\\\"b\\\\c\\nd\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE test_wait_seconds histogram\n"), "{text}");
        assert!(text.contains("test_wait_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("test_wait_seconds_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("test_wait_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("test_wait_seconds_sum 2.0005\n"), "{text}");
        assert!(text.contains("test_wait_seconds_count 2\n"), "{text}");
        assert!(!text.contains("\ntest_absent "), "{text}");
        assert!(text.contains("# TYPE test_collected gauge\ntest_collected 1.5\n"), "{text}");
        assert!(text.contains("guildhall_build_info{version=\""), "{text}");
        // Every line is a comment or `name{labels} value` with a number the format accepts.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit_once(' ').expect("a value").1;
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_not_path() {
        use tower::ServiceExt as _;
        let metrics = Metrics::new();
        let app = Router::new()
            .route("/things/{id}", get(|| async { "ok" }))
            .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
            .layer(metrics.http_layer())
            .with_state(());
        for path in ["/things/1", "/things/2", "/things/3", "/nothing/here"] {
            let request = axum::http::Request::get(path).body(axum::body::Body::empty()).expect("request");
            app.clone().oneshot(request).await.expect("response");
        }
        let request = axum::http::Request::post("/things/1").body(axum::body::Body::empty()).expect("request");
        app.clone().oneshot(request).await.expect("response");
        let text = metrics.render().await;
        assert!(text.contains("guildhall_http_requests_total{method=\"GET\",route=\"/things/{id}\",status=\"2xx\"} 3\n"), "{text}");
        assert!(text.contains("guildhall_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"4xx\"} 1\n"), "{text}");
        assert!(text.contains("guildhall_http_requests_total{method=\"POST\",route=\"/things/{id}\",status=\"4xx\"} 1\n"), "{text}");
        assert!(text.contains("guildhall_http_request_duration_seconds_count{method=\"GET\",route=\"/things/{id}\"} 3\n"), "{text}");
        assert!(!text.contains("/things/1"), "raw paths never become labels: {text}");
        let snapshot = metrics.snapshot().await;
        assert_eq!(snapshot.http, HttpTotals { requests: 5, client_errors: 2, server_errors: 0 });
    }

    #[test]
    fn rates_compare_two_totals() {
        let earlier = HttpTotals { requests: 100, client_errors: 0, server_errors: 1 };
        let later = HttpTotals { requests: 300, client_errors: 5, server_errors: 11 };
        let rates = later.rates_since(&earlier, Duration::from_secs(2));
        assert_eq!(rates.requests_per_second, 100.0);
        assert_eq!(rates.error_rate, 0.05);
        assert_eq!(HttpTotals::default().rates_since(&HttpTotals::default(), Duration::from_secs(1)).error_rate, 0.0);
    }

    /// What one request costs the layer, for the report: run with `--ignored --nocapture` in a
    /// release build.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_of_recording_a_request() {
        let metrics = Metrics::new();
        let slots = RouteSlots { metrics: metrics.clone(), by_method: Default::default() };
        let n = 10_000_000u32;
        let started = Instant::now();
        for _ in 0..n {
            let at = Instant::now();
            let stats = slots.stats(0, "/v1/leaderboards/{id}/records/me");
            stats.record(200, at.elapsed());
        }
        let per = started.elapsed() / n;
        println!("recording one request: {per:?}");
    }
}
