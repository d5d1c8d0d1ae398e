//! Test support (feature `test-support`): a configuration per test on either backend set, each
//! with its own database (a fresh PostgreSQL database, or a SQLite file in a fresh folder) and
//! its own Redis key prefix, so tests run in parallel without sharing state.
//!
//! The real backends come from `GUILDHALL_TEST_POSTGRES_URL` (a server URL whose user may create
//! databases) and `GUILDHALL_TEST_REDIS_URL`, which `scripts/test.sh` sets after starting
//! throwaway servers, and moto's server for S3 and SQS at `GUILDHALL_TEST_AWS_ENDPOINT`, where each
//! test gets its own bucket and queues (with dead-letter queues). Without them the real-backend tests fail, saying how to run them, unless
//! `GUILDHALL_SKIP_REAL_BACKENDS=1` is set explicitly.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use sqlx::Connection;

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
        vars.insert("RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_15_MINUTES".to_owned(), "1000".to_owned());
        if backend == Backend::Real {
            let server = required("GUILDHALL_TEST_POSTGRES_URL")?;
            let redis = required("GUILDHALL_TEST_REDIS_URL")?;
            let database = format!("gh_test_{id}");
            let mut admin = sqlx::PgConnection::connect(&server).await.context("connecting to the test PostgreSQL server")?;
            // The name is made of hex digits above, never input; CREATE DATABASE takes no parameters.
            sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.context("creating the test database")?;
            admin.close().await.ok();
            vars.insert("DATABASE_URL".to_owned(), with_database(&server, &database));
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
    let aws = crate::config::AwsConfig {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".to_owned()),
        public_endpoint_url: None,
    };
    let sdk = crate::aws::sdk_config(&aws).await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket().bucket(name).send().await.context("creating the test bucket")?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut consumers: Vec<&str> = crate::events::ROUTES.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    consumers.sort_unstable();
    consumers.dedup();
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

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(super::with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(super::with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(super::with_database("postgres://u@h/p?host=/tmp", "x"), "postgres://u@h/x?host=/tmp");
    }
}
