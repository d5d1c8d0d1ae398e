//! Test support (feature `test-support`): a configuration per test on either backend set, each
//! with its own database (a fresh PostgreSQL database, or a SQLite file in a fresh folder) and
//! its own Redis key prefix, so tests run in parallel without sharing state.
//!
//! The real backends come from `GUILDHALL_TEST_POSTGRES_URL` (a server URL whose user may create
//! databases) and `GUILDHALL_TEST_REDIS_URL`, which `scripts/test.sh` sets after starting
//! throwaway servers, and moto's server for S3 and SQS at `GUILDHALL_TEST_AWS_ENDPOINT`, where each
//! test gets its own bucket and queues (with dead-letter queues). Without them the real-backend tests fail, saying how to run them, unless
//! `GUILDHALL_SKIP_REAL_BACKENDS=1` is set explicitly.
//!
//! Tests of outages must not stop the servers other tests share: `ThrowawayPostgres` and
//! `ThrowawayRedis` are servers of one test's own, on free loopback ports in a temporary folder,
//! that it may stop, restart or pause (as `scripts/servers.sh` starts the shared ones).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;
use tokio::process::{Child, Command};

/// Which backend set a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file and in-memory cache.
    Embedded,
    /// PostgreSQL and Redis.
    Real,
}

/// The environment of one test's server (or servers, when several share it).
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// Which backends.
    pub backend: Backend,
    /// Variables to build the `Config` from or to pass to a child process.
    pub vars: HashMap<String, String>,
    /// The test's own folder (DATA_DIR).
    pub dir: PathBuf,
    /// Removes the folder when the last clone of this environment is dropped.
    _cleanup: std::sync::Arc<RemoveOnDrop>,
}

#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when the real-backend tests were explicitly turned off.
pub fn real_backends_skipped() -> bool {
    std::env::var("GUILDHALL_SKIP_REAL_BACKENDS").is_ok_and(|v| v == "1")
}

fn required(var: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| {
        format!("{var} is not set: run the tests with scripts/test.sh, which starts PostgreSQL and Redis, or set GUILDHALL_SKIP_REAL_BACKENDS=1 to run only the embedded-backend tests")
    })
}

impl TestEnv {
    /// A fresh environment on `backend`.
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("guildhall-test-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut vars = HashMap::new();
        vars.insert("DATA_DIR".to_owned(), dir.display().to_string());
        vars.insert("LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        vars.insert("LOG_FORMAT".to_owned(), "json".to_owned());
        vars.insert("SHUTDOWN_GRACE_SECS".to_owned(), "2".to_owned());
        // Many sign-ups from one address: tests that exercise the limits set their own.
        vars.insert("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE".to_owned(), "100000".to_owned());
        vars.insert("RATE_LIMIT_REFRESH_PER_IP_PER_MINUTE".to_owned(), "100000".to_owned());
        if backend == Backend::Real {
            let server = required("GUILDHALL_TEST_POSTGRES_URL")?;
            let redis = required("GUILDHALL_TEST_REDIS_URL")?;
            let database = format!("gh_test_{id}");
            let mut admin = sqlx::PgConnection::connect(&server).await.context("connecting to the test PostgreSQL server")?;
            // The name is made of hex digits above, never input; CREATE DATABASE takes no parameters.
            sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.context("creating the test database")?;
            admin.close().await.ok();
            vars.insert("DATABASE_URL".to_owned(), with_database(&server, &database));
            // Each service queries as its own role, the relay and consumers as the worker's, as
            // on ECS: a grant missing from the migrations fails the test that needs it. The
            // URL's user (the server's owner) only migrates, and answers `TestApp::database`.
            vars.insert("DATABASE_SERVICE_ROLES".to_owned(), "true".to_owned());
            vars.insert("REDIS_URL".to_owned(), redis);
            vars.insert("REDIS_KEY_PREFIX".to_owned(), format!("test:{id}:"));
            let endpoint = required("GUILDHALL_TEST_AWS_ENDPOINT")?;
            let (bucket, queue_url) = create_aws_resources(&endpoint, &format!("gh-{id}")).await?;
            vars.insert("AWS_ENDPOINT_URL".to_owned(), endpoint);
            // For child processes, which get exactly these variables; moto takes any credentials.
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                vars.insert(key.to_owned(), std::env::var(key).unwrap_or_else(|_| "testing".to_owned()));
            }
            vars.insert("AWS_REGION".to_owned(), "us-east-1".to_owned());
            vars.insert("BLOB_URL".to_owned(), format!("s3://{bucket}"));
            vars.insert("QUEUE_URL".to_owned(), queue_url);
        }
        Ok(TestEnv { backend, vars, _cleanup: std::sync::Arc::new(RemoveOnDrop(dir.clone())), dir })
    }

    /// Sets (or overrides) one variable.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.vars.insert(key.to_owned(), value.into());
        self
    }

    /// The configuration these variables describe.
    pub fn config(&self) -> anyhow::Result<crate::config::Config> {
        crate::config::Config::from_map(&self.vars)
    }
}

/// Receives after which a test queue's redrive policy moves a message to its dead-letter queue.
pub const TEST_MAX_RECEIVES: u32 = 3;

/// Creates a bucket `name` and, per consumer in `crate::events::ROUTES`, a queue
/// `name-consumer` with a dead-letter queue `name-consumer-dlq` after `TEST_MAX_RECEIVES`
/// receives. Returns the bucket and the `QUEUE_URL` template.
pub async fn create_aws_resources(endpoint: &str, name: &str) -> anyhow::Result<(String, String)> {
    let aws =
        crate::config::AwsConfig { endpoint_url: Some(endpoint.to_owned()), region: Some("us-east-1".to_owned()), ..Default::default() };
    let sdk = crate::aws::sdk_config(&aws).await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket().bucket(name).send().await.context("creating the test bucket")?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let consumers = crate::events::consumers();
    let mut template = None;
    for consumer in consumers {
        let (queue_url, _) = create_queue_with_dlq(&sqs, &format!("{name}-{consumer}"), TEST_MAX_RECEIVES).await?;
        template.get_or_insert_with(|| queue_url.replace(&format!("{name}-{consumer}"), &format!("{name}-{{consumer}}")));
    }
    Ok((name.to_owned(), template.context("no consumers")?))
}

/// Creates queue `name` with a dead-letter queue `name-dlq` after `max_receives` receives.
/// Returns both URLs.
pub async fn create_queue_with_dlq(sqs: &aws_sdk_sqs::Client, name: &str, max_receives: u32) -> anyhow::Result<(String, String)> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.context("creating a dead-letter queue")?;
    let dlq_url = dlq.queue_url.context("no queue URL")?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .context("reading the DLQ's ARN")?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("no DLQ ARN")?;
    let redrive = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receives }).to_string();
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .context("creating a queue")?;
    Ok((queue.queue_url.context("no queue URL")?, dlq_url))
}

/// A free TCP port on the loopback interface (free when asked: the server binds it next).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr().context("reading the port")?.port())
}

/// A fresh folder under the system's temporary folder, readable by every user (PostgreSQL runs
/// as `postgres` when the tests run as root).
fn fresh_dir(kind: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("guildhall-{kind}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).context("opening the folder to other users")?;
    Ok(dir)
}

/// Whether this process runs as root.
fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// A command running `program` as the `postgres` user when this process is root (PostgreSQL
/// refuses to run as root), else as this process's user.
fn as_postgres(program: &Path) -> std::process::Command {
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

/// Runs `program` with `args` (`as_postgres`) and fails with its output unless it succeeds.
async fn run_as_postgres(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut command = as_postgres(program);
    command.args(args).stdin(Stdio::null());
    let output = Command::from(command).output().await.with_context(|| format!("running {}", program.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} {} failed: {}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The folder of PostgreSQL's server binaries: `PG_BIN`, or the newest under
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL's server binaries (apt-get install postgresql) or set PG_BIN")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// A PostgreSQL server of one test's own (trust authentication, durability off), which the test
/// may stop, start again and restart; stopped and removed when dropped.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    tls: bool,
}

/// What a `ThrowawayPostgres` has beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct PostgresSetup {
    /// TLS on, with this certificate and private key (PEM files, copied into the server's folder).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Password (SCRAM) logins over TCP for every user but the owner `guildhall`, which stays
    /// trusted; otherwise every user is trusted.
    pub passwords: bool,
}

impl ThrowawayPostgres {
    /// Creates a cluster in a fresh folder and starts it on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(PostgresSetup::default()).await
    }

    /// Like `start`, set up as `setup` says.
    pub async fn start_with(setup: PostgresSetup) -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir = fresh_dir("postgres")?;
        let server = ThrowawayPostgres { bin, dir, port: free_port()?, tls: setup.tls.is_some() };
        for folder in [server.data(), server.dir.join("sock"), server.dir.join("tls")] {
            std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        }
        if let Some((cert, key)) = &setup.tls {
            use std::os::unix::fs::PermissionsExt;
            std::fs::copy(cert, server.dir.join("tls/server.crt")).context("copying the server certificate")?;
            std::fs::copy(key, server.dir.join("tls/server.key")).context("copying the server key")?;
            // PostgreSQL refuses a key that others may read.
            std::fs::set_permissions(server.dir.join("tls/server.key"), std::fs::Permissions::from_mode(0o600)).context("chmod")?;
        }
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .args([server.data(), server.dir.join("sock"), server.dir.join("tls")])
                .status()
                .context("running chown")?;
            anyhow::ensure!(status.success(), "chown postgres {} failed", server.dir.display());
        }
        let data = server.data().display().to_string();
        run_as_postgres(&server.bin.join("initdb"), &["-D", &data, "-U", "guildhall", "--auth=trust", "-E", "UTF8", "--no-sync"]).await?;
        if setup.passwords {
            let hba = "local all all trust\nhost all guildhall 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
            let path = server.data().join("pg_hba.conf");
            // Written as root next to the server's files: the server only reads it.
            std::fs::write(&path, hba).with_context(|| format!("writing {}", path.display()))?;
            if is_root() {
                let status = std::process::Command::new("chown").arg("postgres").arg(&path).status().context("running chown")?;
                anyhow::ensure!(status.success(), "chown postgres {} failed", path.display());
            }
        }
        server.start_again().await?;
        Ok(server)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The URL of its `postgres` database, as user `guildhall`.
    pub fn url(&self) -> String {
        format!("postgres://guildhall@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again), on the same port, and waits until it takes connections.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.join("sock").display()
        );
        if self.tls {
            let tls = self.dir.join("tls");
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.join("server.crt").display(),
                tls.join("server.key").display()
            ));
        }
        let (data, log) = (self.data().display().to_string(), self.log());
        run_as_postgres(&self.bin.join("pg_ctl"), &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"]).await
    }

    /// Stops the server (fast shutdown: sessions are ended, new connections refused) and waits
    /// until it has.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        run_as_postgres(&self.bin.join("pg_ctl"), &["-D", &data, "-m", "fast", "-w", "stop"]).await
    }

    /// `pg_ctl restart`: a fast shutdown and a start, as an operator does.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let (data, log) = (self.data().display().to_string(), self.log());
        run_as_postgres(&self.bin.join("pg_ctl"), &["-D", &data, "-l", &log, "-m", "fast", "-w", "-t", "60", "restart"]).await
    }

    /// The server's log file: the server's output must not go to `pg_ctl`'s, which is read to
    /// its end.
    fn log(&self) -> String {
        self.dir.join("sock/postgres.log").display().to_string()
    }

    /// Freezes the server (SIGSTOP to the postmaster, then to each of its processes), as `docker
    /// pause` does: connections stay open and nothing is answered, nor is a new one taken beyond
    /// the kernel's backlog.
    pub fn pause(&self) -> anyhow::Result<()> {
        let postmaster = self.postmaster()?;
        signal(postmaster, "-STOP")?;
        for child in children_of(postmaster) {
            // A backend may have ended meanwhile.
            let _ = signal(child, "-STOP");
        }
        Ok(())
    }

    /// Lets a paused server run again (SIGCONT to each of its processes, the postmaster last).
    pub fn resume(&self) -> anyhow::Result<()> {
        let postmaster = self.postmaster()?;
        for child in children_of(postmaster) {
            let _ = signal(child, "-CONT");
        }
        signal(postmaster, "-CONT")
    }

    /// The postmaster's process id, from the first line of `postmaster.pid`.
    fn postmaster(&self) -> anyhow::Result<u32> {
        let path = self.data().join("postmaster.pid");
        let pid = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        pid.lines().next().and_then(|line| line.trim().parse().ok()).with_context(|| format!("no process id in {}", path.display()))
    }
}

/// Sends `signal` (as `kill` takes it, e.g. `-STOP`) to process `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status =
        std::process::Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status().context("running kill")?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The fourth field of `stat`, after the command in parentheses (which may hold spaces).
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()))
                == Some(parent)
        })
        .collect()
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        // A paused server would not stop: `pg_ctl` would wait for it.
        let _ = self.resume();
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of one test's own, which the test may pause (SIGSTOP, as `docker pause`
/// does), resume, stop and start again; killed and removed when dropped.
#[derive(Debug)]
pub struct ThrowawayRedis {
    dir: PathBuf,
    port: u16,
    child: std::sync::Mutex<Option<Child>>,
}

impl ThrowawayRedis {
    /// Starts `redis-server` on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let server = ThrowawayRedis { dir: fresh_dir("redis")?, port: free_port()?, child: std::sync::Mutex::new(None) };
        server.start_again().await?;
        Ok(server)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), on the same port, and waits until it answers PING.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let client = redis::Client::open(self.url()).context("Redis URL")?;
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server did not answer on port {}", self.port)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid =
            self.child.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(Child::id).context("redis-server is not running")?;
        self::signal(pid, signal)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    /// Kills the server (its data goes with it) and waits until it is gone.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            child.kill().await.context("killing redis-server")?;
        }
        Ok(())
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        // The child is killed (SIGKILL ends a stopped process too) when its handle drops.
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A second region's database, for tests of read-only regions and failover: a hot standby of a
/// `ThrowawayPostgres`, streaming from it, that the test may promote.
impl ThrowawayPostgres {
    /// Makes a hot standby of `primary` (`pg_basebackup -R`, streaming on loopback) and starts
    /// it on a free port. With `synchronous`, the primary's commits in `database` wait for the
    /// standby to have flushed them (`synchronous_standby_names = '*'`, and `synchronous_commit
    /// = on` for that database, over the `off` the servers start with), so a commit the primary
    /// acknowledged survives a promotion.
    pub async fn start_standby_of(primary: &ThrowawayPostgres, database: &str, synchronous: bool) -> anyhow::Result<Self> {
        let dir = fresh_dir("postgres-standby")?;
        let standby = ThrowawayPostgres { bin: primary.bin.clone(), dir, port: free_port()?, tls: false };
        std::fs::create_dir_all(standby.dir.join("sock")).context("creating the socket folder")?;
        if is_root() {
            let status = std::process::Command::new("chown").arg("postgres").arg(&standby.dir).arg(standby.dir.join("sock")).status()?;
            anyhow::ensure!(status.success(), "chown postgres {} failed", standby.dir.display());
        }
        let (data, port) = (standby.data().display().to_string(), primary.port.to_string());
        let args = ["-h", "127.0.0.1", "-p", &port, "-U", "guildhall", "-D", &data, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"];
        run_as_postgres(&standby.bin.join("pg_basebackup"), &args).await?;
        standby.start_again().await?;
        if synchronous {
            let mut admin = sqlx::PgConnection::connect(&primary.url()).await.context("connecting to the primary")?;
            sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'").execute(&mut admin).await.context("naming the standby")?;
            sqlx::query("SELECT pg_reload_conf()").execute(&mut admin).await.context("reloading the primary's settings")?;
            // The name comes from the test, never from input; ALTER DATABASE takes no parameters.
            sqlx::query(&format!("ALTER DATABASE {database} SET synchronous_commit = on"))
                .execute(&mut admin)
                .await
                .context("making commits wait for the standby")?;
            admin.close().await.ok();
        }
        Ok(standby)
    }

    /// The URL of `database` on this server, as user `guildhall`.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://guildhall@127.0.0.1:{}/{database}", self.port)
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it takes writes).
    pub async fn promote(&self) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        run_as_postgres(&self.bin.join("pg_ctl"), &["-D", &data, "-w", "-t", "60", "promote"]).await
    }

    /// Stops the server as a crash does (`pg_ctl stop -m immediate`: no checkpoint, sessions cut).
    pub async fn kill(&self) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        run_as_postgres(&self.bin.join("pg_ctl"), &["-D", &data, "-m", "immediate", "-w", "stop"]).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(super::with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(super::with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(super::with_database("postgres://u@h/p?host=/tmp", "x"), "postgres://u@h/x?host=/tmp");
    }
}
