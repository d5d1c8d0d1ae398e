//! IAM database authentication for Aurora and RDS: a connection's password is a token, a SigV4
//! presigned request for the action `connect` of the service `rds-db` at the database's address
//! (`host:port/?Action=connect&DBUser=<user>&X-Amz-...`, without the scheme), signed with the
//! task role's credentials and valid for 15 minutes (Amazon RDS User Guide, "IAM database
//! authentication"). No password exists to leak or rotate; the task role needs `rds-db:connect`
//! on `dbuser:<cluster resource id>/<user>`. The database checks a token only when a connection
//! opens, so `crate::db` hands its pool a fresh one well before the last expires.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;

use crate::config::Secret;

/// How long a token is valid: 15 minutes, the most RDS accepts.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The SigV4 service name of IAM database authentication.
const SERVICE: &str = "rds-db";

/// Signs tokens for one database user with the credentials of the AWS SDK's default chain (on
/// ECS, the task role's, which the SDK renews before they expire).
#[derive(Debug, Clone)]
pub struct TokenSigner {
    credentials: SharedCredentialsProvider,
    region: String,
    host: String,
    port: u16,
    user: String,
}

impl TokenSigner {
    /// A signer for `user` at `host:port` in `region`, with the default credentials chain.
    pub async fn from_environment(region: &str, host: &str, port: u16, user: &str) -> anyhow::Result<Self> {
        let aws = crate::config::AwsConfig { region: Some(region.to_owned()), ..Default::default() };
        let sdk = crate::aws::sdk_config(&aws).await;
        let credentials =
            sdk.credentials_provider().context("no AWS credentials provider for IAM database authentication (on ECS, the task role)")?;
        Ok(TokenSigner { credentials, region: region.to_owned(), host: host.to_owned(), port, user: user.to_owned() })
    }

    /// A fresh token, signed now.
    pub async fn token(&self) -> anyhow::Result<Secret<String>> {
        let credentials = self.credentials.provide_credentials().await.context("loading AWS credentials to sign a database token")?;
        let token = auth_token(&credentials, &self.region, &self.host, self.port, &self.user, SystemTime::now())?;
        Ok(Secret::new(token))
    }
}

/// The token that lets `user` connect to `host:port` in `region`, signed at `time` with
/// `credentials` (a session token among them is signed into it too, as `X-Amz-Security-Token`).
pub fn auth_token(credentials: &Credentials, region: &str, host: &str, port: u16, user: &str, time: SystemTime) -> anyhow::Result<String> {
    let address = format!("{host}:{port}/?Action=connect&DBUser={}", encode(user));
    let url = format!("https://{address}");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .context("signing parameters of a database token")?
        .into();
    let request =
        SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[])).context("the database token's request")?;
    let (instructions, _signature) = sign(request, &params).context("signing a database token")?.into_parts();
    // The signature last, as AWS's SDKs write it (the signer puts the session token after it;
    // the order does not matter to RDS, which sorts the query to check it).
    let mut params: Vec<_> = instructions.params().iter().collect();
    params.sort_by_key(|(name, _)| *name == "X-Amz-Signature");
    let mut token = address;
    for (name, value) in params {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&encode(value));
    }
    Ok(token)
}

/// Percent-encodes everything but SigV4's unreserved characters (`A-Z a-z 0-9 - _ . ~`), as the
/// signer encodes the query it signs, so the database decodes what was signed (and as a URL's
/// password must be, see `crate::db`).
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-02T03:04:05Z.
    fn fixed_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    /// AWS's documentation example credentials (SigV4 test suite), with and without a session.
    fn credentials(session: Option<&str>) -> Credentials {
        Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", session.map(str::to_owned), None, "test")
    }

    /// The expected tokens were made independently with botocore 1.43.11 (`boto3.client("rds",
    /// region_name="eu-west-1").generate_db_auth_token(...)`, the clock frozen at the same
    /// instant and the same credentials): a token this function makes must be byte for byte the
    /// one AWS's own SDK makes, or RDS would refuse it.
    #[test]
    fn tokens_match_the_aws_sdk_byte_for_byte() {
        let host = "guildhall.cluster-abc123.eu-west-1.rds.amazonaws.com";
        let token = auth_token(&credentials(None), "eu-west-1", host, 5432, "guildhall_chat", fixed_time()).expect("token");
        assert_eq!(token, EXPECTED_WITHOUT_SESSION);
        let token = auth_token(&credentials(Some("FQoGZXIvYXdzEXAMPLE/+=")), "eu-west-1", host, 5432, "guildhall_chat", fixed_time())
            .expect("token");
        assert_eq!(token, EXPECTED_WITH_SESSION);
    }

    #[test]
    fn tokens_have_the_documented_shape() {
        let token = auth_token(&credentials(None), "us-east-1", "db.example.com", 5432, "guildhall_worker", fixed_time()).expect("token");
        let (address, query) = token.split_once("/?").expect("address and query");
        assert_eq!(address, "db.example.com:5432", "no scheme: the token is the request without https://");
        let pairs: Vec<(&str, &str)> = query.split('&').map(|p| p.split_once('=').expect("name=value")).collect();
        let get = |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(get("Action"), Some("connect"));
        assert_eq!(get("DBUser"), Some("guildhall_worker"));
        assert_eq!(get("X-Amz-Algorithm"), Some("AWS4-HMAC-SHA256"));
        assert_eq!(get("X-Amz-Credential"), Some("AKIDEXAMPLE%2F20240102%2Fus-east-1%2Frds-db%2Faws4_request"));
        assert_eq!(get("X-Amz-Date"), Some("20240102T030405Z"));
        assert_eq!(get("X-Amz-Expires"), Some("900"));
        assert_eq!(get("X-Amz-SignedHeaders"), Some("host"));
        assert!(get("X-Amz-Signature").is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(get("X-Amz-Security-Token"), None);
    }

    #[test]
    fn reserved_characters_are_percent_encoded() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("a/b+c=d e"), "a%2Fb%2Bc%3Dd%20e");
    }

    const EXPECTED_WITHOUT_SESSION: &str = "guildhall.cluster-abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=guildhall_chat\
        &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Feu-west-1%2Frds-db%2Faws4_request\
        &X-Amz-Date=20240102T030405Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
        &X-Amz-Signature=b00e9579585e9514146405a88a394d31d746ab3b204726fdaadd2dc05dc6a141";
    const EXPECTED_WITH_SESSION: &str = "guildhall.cluster-abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=guildhall_chat\
        &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Feu-west-1%2Frds-db%2Faws4_request\
        &X-Amz-Date=20240102T030405Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE%2F%2B%3D\
        &X-Amz-Signature=e1b42fb659f5d2af0deb21a2fb24b814393325b6a19e29935384626467f48a79";
}
