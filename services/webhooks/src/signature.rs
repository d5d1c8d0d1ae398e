//! The signature of a delivery, and its check as a receiver makes it.
//!
//! `Guildhall-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the HMAC, keyed with the
//! webhook's secret, covers `<t>.<event id>.<body>`: the timestamp bounds how long a captured
//! request can be replayed (a receiver refuses one older than its window, `REPLAY_WINDOW_SECS`
//! by default), and the event id (also in `Guildhall-Event-Id`) is bound to the body, so that a
//! body cannot be replayed under another id to slip past the receiver's duplicate check. Each
//! attempt signs afresh with its own time; the event id and the body stay the same.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Guildhall-Signature";
/// The header carrying the event id: the same on every attempt and redelivery of one event.
pub const EVENT_ID_HEADER: &str = "Guildhall-Event-Id";
/// The header carrying the event type (`account.deleted`).
pub const EVENT_HEADER: &str = "Guildhall-Event";
/// The header carrying the delivery id (one per webhook and event), for support requests.
pub const DELIVERY_HEADER: &str = "Guildhall-Delivery-Id";
/// How far a receiver should let a signature's time be from its own clock, either way: five
/// minutes, room for clock skew and a slow network, short for a replay.
pub const REPLAY_WINDOW_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, event_id: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(event_id.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Guildhall-Signature` value of `body`, event `event_id`, signed at `timestamp` (Unix s).
pub fn header_value(secret: &str, timestamp: i64, event_id: &str, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, event_id, body).finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// Why a receiver refuses a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The header is missing a part or is not `t=…,v1=…`.
    #[error("the signature header is not t=<seconds>,v1=<hex>")]
    Malformed,
    /// The time is further than the window from now: a replay, or a clock far off.
    #[error("the signature's time is outside the replay window")]
    OutsideWindow,
    /// No `v1` matches: another secret, or a changed body or id.
    #[error("no signature matches")]
    Mismatch,
}

/// What a receiver does with a delivery: parse `header`, refuse a time further than `window`
/// seconds from `now`, and compare (in constant time) the HMAC of `<t>.<event_id>.<body>` with
/// each `v1` given. Then it should remember `event_id` and drop a delivery it has seen.
pub fn verify(secret: &str, header: &str, event_id: &str, body: &[u8], now: i64, window: i64) -> Result<(), Refused> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.parse::<i64>().map_err(|_| Refused::Malformed)?),
            Some(("v1", value)) => signatures.push(decode_hex(value).ok_or(Refused::Malformed)?),
            // Other schemes a later version may add are not ours to judge.
            Some(_) => {}
            None => return Err(Refused::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(Refused::Malformed)?;
    if signatures.is_empty() {
        return Err(Refused::Malformed);
    }
    if (now - timestamp).abs() > window {
        return Err(Refused::OutsideWindow);
    }
    let expected = mac(secret, timestamp, event_id, body);
    if signatures.iter().any(|given| expected.clone().verify_slice(given).is_ok()) { Ok(()) } else { Err(Refused::Mismatch) }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec-test-0123456789abcdef";

    #[test]
    fn a_signed_body_verifies_and_nothing_else_does() {
        let body = br#"{"id":"e1","type":"account.deleted"}"#;
        let header = header_value(SECRET, 1_700_000_000, "e1", body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(verify(SECRET, &header, "e1", body, 1_700_000_100, REPLAY_WINDOW_SECS), Ok(()));
        assert_eq!(verify("another-secret-0123456789", &header, "e1", body, 1_700_000_000, 300), Err(Refused::Mismatch));
        assert_eq!(verify(SECRET, &header, "e2", body, 1_700_000_000, 300), Err(Refused::Mismatch), "the id is signed");
        assert_eq!(verify(SECRET, &header, "e1", b"{}", 1_700_000_000, 300), Err(Refused::Mismatch), "the body is signed");
        assert_eq!(verify(SECRET, &header, "e1", body, 1_700_000_301, 300), Err(Refused::OutsideWindow), "a late replay");
        for bad in ["", "t=1700000000", "v1=00", "t=x,v1=00", "t=1700000000,v1=zz", "garbage"] {
            assert_eq!(verify(SECRET, bad, "e1", body, 1_700_000_000, 300), Err(Refused::Malformed), "{bad}");
        }
    }

    /// A known answer, so that a receiver written in another language can check its code
    /// against this one (README, Webhooks).
    #[test]
    fn the_documented_example_holds() {
        let header =
            header_value("example-secret-of-24-chars", 1_767_225_600, "0190f5a2-0000-7000-8000-000000000000", br#"{"hello":"world"}"#);
        assert_eq!(header, format!("t=1767225600,v1={}", EXAMPLE_V1));
    }

    /// The `v1` of the README's example.
    const EXAMPLE_V1: &str = "28d59584da2bc90415c69051b47aeb36b8c70299f4bd442da6b97a1a24b06c3f";
}
