//! Command-line options, parsed by hand (`--name value` or `--name=value`) to keep the tool free of
//! an argument-parsing dependency.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::scenario;

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run a scenario with these options (boxed: they are large beside `Help`).
    Run(Box<Options>),
    /// Print [`usage`] and exit.
    Help,
}

/// How one run is shaped: where, which scenario, how many workers, how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's base URL, without a trailing slash.
    pub base: String,
    /// The scenario's name (one of [`scenario::SCENARIOS`]).
    pub scenario: String,
    /// Concurrent workers, each sending its next request when the previous one answered.
    pub concurrency: usize,
    /// How long requests are measured, after the warm-up.
    pub duration: Duration,
    /// How long requests are sent but not measured (connections open, caches fill).
    pub warmup: Duration,
    /// Players (guest accounts or device ids) the scenario spreads its requests over.
    pub players: usize,
    /// Longest wait for one response; a request that takes longer counts as an error.
    pub timeout: Duration,
    /// Safety bound on requests sent (warm-up included); the run stops early if it is reached.
    pub max_requests: u64,
    /// The server key, for scenarios that create their leaderboard through the admin API.
    pub admin_key: Option<AdminKey>,
    /// Chat: the instances the clients connect to, taken in turn (client `i` to `bases[i % len]`);
    /// `[base]` unless `--bases` is given.
    pub bases: Vec<String>,
    /// Chat: where the clients sign in, when not on the instance each connects to (`--sign-in-base`:
    /// a proxy in front of split services, whose chat replicas serve no sign-in).
    pub sign_in_base: Option<String>,
    /// Chat: the process id of each of `bases`' servers, in the same order, whose resident memory
    /// the run reads before the sockets open and once they have joined; empty for none.
    pub pids: Vec<u32>,
    /// Processes whose CPU time per measured request the report gives (`--cpu NAME=PID,...`),
    /// besides the tool's own.
    pub cpu: crate::cpu::Watched,
    /// Chat: WebSocket clients, one guest player each.
    pub clients: usize,
    /// Chat: members per room.
    pub room_size: usize,
    /// Chat: messages each client sends per second.
    pub rate: f64,
    /// `--acked FILE`: every answer (warm-up included) as a line `unix_ms outcome key`, the
    /// outcome a status or `connect`/`transport`/`timeout`, for scenarios whose requests write
    /// something by key (`guest-signup`): what a failover rehearsal checks for loss.
    pub acked: Option<std::path::PathBuf>,
}

/// The environment variable `--admin-key` falls back to: the one the server reads its key from.
pub const ADMIN_KEY_ENV: &str = "GUILDHALL_ADMIN_KEY";

/// The server key (`GUILDHALL_ADMIN_KEY`). Its `Debug` hides it, so options can be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey(String);

impl AdminKey {
    /// Wraps a key.
    pub fn new(key: String) -> Self {
        Self(key)
    }

    /// The key itself, to send as `Authorization: Bearer <key>`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            base: "http://127.0.0.1:8080".to_owned(),
            scenario: "me".to_owned(),
            concurrency: 50,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            players: 1000,
            timeout: Duration::from_secs(10),
            max_requests: 10_000_000,
            admin_key: None,
            bases: Vec::new(),
            sign_in_base: None,
            pids: Vec::new(),
            cpu: crate::cpu::Watched::default(),
            clients: 5000,
            room_size: 50,
            rate: 0.2,
            acked: None,
        }
    }
}

/// The help text, listing the scenarios.
pub fn usage() -> String {
    let defaults = Options::default();
    let mut text = format!(
        "usage: guildhall-bench [options]\n\
         \n\
         Closed-loop HTTP load: N workers each send a request as soon as the previous one answered,\n\
         for a warm-up and then a measured duration; prints requests/s, errors and latency percentiles\n\
         as a readable block and as one JSON line. The chat scenario instead holds --clients WebSockets\n\
         in rooms, sends messages at a fixed rate and measures their delivery to the other members.\n\
         \n\
         options:\n  \
           --base URL          server base URL (default {base})\n  \
           --scenario NAME     what to send (default {scenario})\n  \
           --concurrency N     concurrent workers (default {concurrency})\n  \
           --duration SECS     measured time (default {duration})\n  \
           --warmup SECS       unmeasured time before it (default {warmup})\n  \
           --players N         players the requests are spread over (default {players})\n  \
           --timeout SECS      per-request timeout, counted as an error (default {timeout})\n  \
           --max-requests N    stop after this many requests, warm-up included (default {max_requests})\n  \
           --admin-key KEY     server key, for the scenarios that create a leaderboard\n                      \
                               (default: the environment variable {admin_key_env})\n  \
           --acked FILE        write every answer as `unix_ms outcome key` (guest-signup: the device id),\n                      \
                               for counting acknowledged writes after a failover\n  \
           --cpu NAME=PID,...  report these processes' CPU time per measured request (chat: per\n                      \
                               delivery) (Linux),\n                      \
                               with the tool's own, e.g. guildhall=4242,redis=4250; PID+ adds\n                      \
                               the process's children (postgres=4200+)\n  \
           -h, --help          this text\n\
         \n\
         chat options (--concurrency bounds the sign-ins in flight; --max-requests the messages sent;\n\
         --timeout each setup step, and how long deliveries are awaited after the last send):\n  \
           --clients N         WebSocket clients, one guest player each (default {clients})\n  \
           --bases URL,URL     instances the clients connect to in turn (default: --base)\n  \
           --room-size K       members per room, spread over the instances (default {room_size})\n  \
           --rate R            messages per second each client sends (default {rate})\n  \
           --sign-in-base URL  where the clients sign in (default: the instance each connects to)\n  \
           --pids PID,PID      the instances' process ids, as --bases: report their memory per connection\n\
         \n\
         scenarios:\n",
        base = defaults.base,
        scenario = defaults.scenario,
        concurrency = defaults.concurrency,
        duration = defaults.duration.as_secs_f64(),
        warmup = defaults.warmup.as_secs_f64(),
        players = defaults.players,
        timeout = defaults.timeout.as_secs_f64(),
        max_requests = defaults.max_requests,
        admin_key_env = ADMIN_KEY_ENV,
        clients = defaults.clients,
        room_size = defaults.room_size,
        rate = defaults.rate,
    );
    for entry in scenario::SCENARIOS {
        text.push_str(&format!("  {:<18}  {}\n", entry.name, entry.about));
    }
    text
}

impl Command {
    /// Parses the arguments after the program name. `env` looks up an environment variable (for
    /// the fallback of `--admin-key`); the binary passes `std::env::var`, tests a fixed map.
    pub fn parse(args: impl IntoIterator<Item = String>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut options = Options::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Self::Help);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.to_owned())),
                _ => (arg, None),
            };
            let mut value = || match &inline {
                Some(value) => Ok(value.clone()),
                None => args.next().with_context(|| format!("{name} needs a value")),
            };
            match name.as_str() {
                "--base" => options.base = value()?.trim_end_matches('/').to_owned(),
                "--sign-in-base" => options.sign_in_base = Some(value()?.trim_end_matches('/').to_owned()),
                "--scenario" => options.scenario = value()?,
                "--concurrency" => options.concurrency = number(&name, &value()?)?,
                "--duration" => options.duration = seconds(&name, &value()?)?,
                "--warmup" => options.warmup = seconds(&name, &value()?)?,
                "--players" => options.players = number(&name, &value()?)?,
                "--timeout" => options.timeout = seconds(&name, &value()?)?,
                "--max-requests" => options.max_requests = number(&name, &value()?)?,
                "--admin-key" => options.admin_key = Some(AdminKey::new(value()?)),
                "--bases" => options.bases = list(&value()?).map(|base| base.trim_end_matches('/').to_owned()).collect(),
                "--pids" => options.pids = list(&value()?).map(|pid| number(&name, pid)).collect::<anyhow::Result<_>>()?,
                "--cpu" => options.cpu = watched(&value()?)?,
                "--clients" => options.clients = number(&name, &value()?)?,
                "--room-size" => options.room_size = number(&name, &value()?)?,
                "--rate" => options.rate = decimal(&name, &value()?)?,
                "--acked" => options.acked = Some(value()?.into()),
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        if options.admin_key.is_none() {
            // An empty variable (`GUILDHALL_ADMIN_KEY= ...`) counts as unset, as it does for the server.
            options.admin_key = env(ADMIN_KEY_ENV).filter(|key| !key.is_empty()).map(AdminKey::new);
        }
        if options.bases.is_empty() {
            options.bases = vec![options.base.clone()];
        }
        options.check()?;
        Ok(Self::Run(Box::new(options)))
    }
}

impl Options {
    /// Rejects values that would make the run meaningless or unbounded.
    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.base.starts_with("http://"), "--base must be an http:// URL (the tool speaks plain HTTP/1.1)");
        ensure!(
            scenario::find(&self.scenario).is_some(),
            "unknown scenario {:?}; known: {}",
            self.scenario,
            scenario::SCENARIOS.iter().map(|entry| entry.name).collect::<Vec<_>>().join(", ")
        );
        ensure!((1..=10_000).contains(&self.concurrency), "--concurrency must be 1 to 10000");
        ensure!(self.players >= 1, "--players must be at least 1");
        ensure!(!self.duration.is_zero(), "--duration must be more than 0");
        ensure!(!self.timeout.is_zero(), "--timeout must be more than 0");
        ensure!(self.max_requests >= 1, "--max-requests must be at least 1");
        ensure!(self.admin_key.as_ref().is_none_or(|key| !key.expose().is_empty()), "--admin-key must not be empty");
        ensure!(
            !self.bases.is_empty() && self.bases.iter().all(|base| base.starts_with("http://")),
            "--bases must be a comma-separated list of http:// URLs"
        );
        ensure!(
            self.pids.is_empty() || self.pids.len() == self.bases.len(),
            "--pids must give one process id per base ({} bases, {} pids)",
            self.bases.len(),
            self.pids.len()
        );
        // Each client is a socket in this process and one in a server; beyond this the machine's
        // ports (about 28 000 per instance) and file limits run out anyway.
        ensure!((1..=100_000).contains(&self.clients), "--clients must be 1 to 100000");
        ensure!((2..=10_000).contains(&self.room_size), "--room-size must be 2 to 10000 (a message goes to the other members)");
        ensure!(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100.0, "--rate must be more than 0 and at most 100 messages/s");
        Ok(())
    }
}

/// `NAME=PID,NAME=PID`.
fn watched(value: &str) -> anyhow::Result<crate::cpu::Watched> {
    let processes = list(value)
        .map(|item| {
            let (name, pid) = item.split_once('=').with_context(|| format!("--cpu takes NAME=PID pairs, not {item:?}"))?;
            ensure!(!name.is_empty() && name != crate::cpu::TOOL, "--cpu: {item:?} needs a name other than {}", crate::cpu::TOOL);
            // PID+: the process and its children (PostgreSQL's connections).
            let (pid, children) = match pid.strip_suffix('+') {
                Some(pid) => (pid, true),
                None => (pid, false),
            };
            Ok((name.to_owned(), number("--cpu", pid)?, children))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(crate::cpu::Watched(processes))
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T> {
    value.parse().ok().with_context(|| format!("{name} must be a whole number, not {value:?}"))
}

fn decimal(name: &str, value: &str) -> anyhow::Result<f64> {
    value.parse().ok().with_context(|| format!("{name} must be a number, not {value:?}"))
}

/// The non-empty items of a comma-separated list, trimmed.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty())
}

fn seconds(name: &str, value: &str) -> anyhow::Result<Duration> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .with_context(|| format!("{name} must be a number of seconds, not {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Command> {
        parse_with_env(args, None)
    }

    fn parse_with_env(args: &[&str], admin_key_env: Option<&str>) -> anyhow::Result<Command> {
        Command::parse(args.iter().map(|arg| (*arg).to_owned()), |name| {
            assert_eq!(name, ADMIN_KEY_ENV, "only the admin key is read from the environment");
            admin_key_env.map(str::to_owned)
        })
    }

    fn admin_key(command: Command) -> Option<String> {
        let Command::Run(options) = command else { panic!("expected a run") };
        options.admin_key.map(|key| key.expose().to_owned())
    }

    #[test]
    fn defaults_and_both_spellings() {
        let Command::Run(options) = parse(&["--concurrency", "8", "--duration=2.5", "--base", "http://127.0.0.1:9/"]).expect("valid")
        else {
            panic!("expected a run");
        };
        assert_eq!(options.concurrency, 8);
        assert_eq!(options.duration, Duration::from_millis(2500));
        assert_eq!(options.base, "http://127.0.0.1:9");
        assert_eq!(options.players, 1000);
        assert_eq!(options.scenario, "me");
        assert!(options.admin_key.is_none());
    }

    #[test]
    fn admin_key_from_option_or_environment() {
        assert_eq!(admin_key(parse(&["--admin-key", "from-option"]).expect("valid")).as_deref(), Some("from-option"));
        assert_eq!(admin_key(parse_with_env(&[], Some("from-env")).expect("valid")).as_deref(), Some("from-env"));
        assert_eq!(
            admin_key(parse_with_env(&["--admin-key=from-option"], Some("from-env")).expect("valid")).as_deref(),
            Some("from-option"),
            "the option wins over the environment"
        );
        assert_eq!(admin_key(parse_with_env(&[], Some("")).expect("valid")), None, "an empty variable is unset");
        assert!(parse(&["--admin-key", ""]).is_err());
        let Command::Run(options) = parse(&["--admin-key", "secret-key"]).expect("valid") else { panic!("expected a run") };
        assert!(!format!("{options:?}").contains("secret-key"), "Debug hides the key");
    }

    #[test]
    fn cpu_processes_by_name() {
        let Command::Run(options) = parse(&["--cpu", "guildhall=42, redis=7,postgres=9+"]).expect("valid") else {
            panic!("expected a run")
        };
        assert_eq!(options.cpu.0, [("guildhall".to_owned(), 42, false), ("redis".to_owned(), 7, false), ("postgres".to_owned(), 9, true)]);
        assert!(parse(&["--cpu", "42"]).is_err(), "a pid without a name");
        assert!(parse(&["--cpu", "redis=x"]).is_err());
        assert!(parse(&["--cpu", "guildhall-bench=1"]).is_err(), "the tool's own name is taken");
    }

    #[test]
    fn chat_options() {
        let Command::Run(options) = parse(&["--scenario", "chat"]).expect("valid") else { panic!("expected a run") };
        assert_eq!((options.clients, options.room_size, options.rate), (5000, 50, 0.2));
        assert_eq!(options.bases, ["http://127.0.0.1:8080"], "--base is the one instance by default");
        assert!(options.pids.is_empty());

        let Command::Run(options) = parse(&[
            "--scenario=chat",
            "--bases",
            "http://127.0.0.1:1/, http://127.0.0.1:2",
            "--pids=10,20",
            "--clients",
            "200",
            "--room-size",
            "4",
            "--rate",
            "2.5",
        ])
        .expect("valid") else {
            panic!("expected a run")
        };
        assert_eq!(options.bases, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(options.pids, [10, 20]);
        assert_eq!((options.clients, options.room_size, options.rate), (200, 4, 2.5));

        assert!(parse(&["--bases", "http://a,https://b"]).is_err(), "plain HTTP only");
        assert!(parse(&["--bases", "http://a,http://b", "--pids", "1"]).is_err(), "one pid per base");
        assert!(parse(&["--pids", "one"]).is_err());
        assert!(parse(&["--room-size", "1"]).is_err());
        assert!(parse(&["--clients", "0"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--rate", "NaN"]).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["--concurrency"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--duration", "-1"]).is_err());
        assert!(parse(&["--scenario", "nope"]).is_err());
        assert!(parse(&["--frobnicate", "1"]).is_err());
        assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
    }
}
