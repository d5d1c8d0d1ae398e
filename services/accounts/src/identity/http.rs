//! The HTTP client every provider check shares, and how answers are read.

use std::time::Duration;

use serde::de::DeserializeOwned;

/// The most of a provider's answer read: keys, tickets and users are a few KiB.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// One client (and connection pool) for every provider: `timeout` on each call, connecting
/// included; no redirects (a provider's API answers where it is asked); rustls with the system's
/// roots, as the webhooks' client.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("Guildhall/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// An answer's status and its body parsed as `T`, reading at most `MAX_ANSWER_BYTES`. The error
/// says what went wrong, for the log, without the URL (Steam's carries the publisher key).
pub async fn json<T: DeserializeOwned>(mut response: reqwest::Response) -> Result<(u16, T), String> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer: {}", e.without_url()))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer over {MAX_ANSWER_BYTES} bytes (status {status})"));
        }
        body.extend_from_slice(&chunk);
    }
    let parsed = serde_json::from_slice(&body).map_err(|e| format!("status {status}, body not as expected: {e}"))?;
    Ok((status, parsed))
}
