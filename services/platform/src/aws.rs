//! The AWS SDK's shared configuration: our own HTTPS client (rustls on ring), the region, an
//! emulator endpoint when `AWS_ENDPOINT_URL` is set, timeouts on every call, and the attempts per
//! call when `AWS_MAX_ATTEMPTS` sets them.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::config::AwsConfig;

/// A call that takes longer than this fails (long polls override it; see `events`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to an endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Loads the SDK configuration: credentials from the default chain (environment, web identity,
/// the ECS task role), region and endpoint from `config`.
pub async fn sdk_config(config: &AwsConfig) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(CALL_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT * 3)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
    if let Some(attempts) = config.max_attempts {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(attempts));
    }
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint.clone());
    }
    loader.load().await
}
