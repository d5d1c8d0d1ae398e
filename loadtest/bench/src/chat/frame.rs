//! The chat WebSocket frames the benchmark sends and reads (services/chat/src/ws.rs has the
//! protocol): typed, and read borrowing from the frame's text, since every client reads tens of
//! deliveries per message sent.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A frame from the client. `id` is echoed in the `ack` or `error` that answers it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outgoing<'a> {
    /// The first frame: the player's access token.
    Auth {
        /// Echoed in the answer.
        id: u64,
        /// The access token.
        token: &'a str,
    },
    /// Enter a channel.
    Join {
        /// Echoed in the answer.
        id: u64,
        /// `room:<name>`.
        channel: &'a str,
    },
    /// Post a message to a channel the connection joined.
    Send {
        /// Echoed in the answer.
        id: u64,
        /// `room:<name>`.
        channel: &'a str,
        /// The text; the benchmark's is its send time (see [`body`]).
        body: &'a str,
    },
}

impl Outgoing<'_> {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // An enum of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A frame from the server, with only what the benchmark reads.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    /// `ack`, `error`, `message`, `presence` or `typing`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The id of the client frame an `ack` or `error` answers (null when the frame was unreadable).
    #[serde(default)]
    pub id: Option<u64>,
    /// An `error`'s code, e.g. `rate_limited`.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    /// The auth `ack`'s account id.
    #[serde(default, borrow)]
    pub account_id: Option<Cow<'a, str>>,
    /// A stored message (in a `message` event or a send's `ack`) or an error's text; read once
    /// the type says which.
    #[serde(default, borrow)]
    pub message: Option<&'a RawValue>,
}

/// The message of a `message` event.
#[derive(Debug, Deserialize)]
pub struct Delivered<'a> {
    /// The sender's account id (null once the account is deleted).
    #[serde(default, borrow)]
    pub sender_id: Option<Cow<'a, str>>,
    /// The text.
    #[serde(borrow)]
    pub body: Cow<'a, str>,
}

impl<'a> Incoming<'a> {
    /// Reads a frame's text.
    pub fn parse(text: &'a str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// The message this `message` event delivers.
    pub fn delivered(&self) -> Option<Delivered<'a>> {
        serde_json::from_str(self.message?.get()).ok()
    }
}

/// A message body carrying its send time: nanoseconds since the run's epoch (an `Instant` shared
/// by every client, as they all run in this process), in decimal. A u64 of nanoseconds lasts 584
/// years, so it never wraps within a run.
pub fn body(sent_ns: u64) -> String {
    sent_ns.to_string()
}

/// The send time a [`body`] carries, if it is one.
pub fn sent_ns(body: &str) -> Option<u64> {
    body.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_frames_match_the_protocol() {
        let auth: serde_json::Value = serde_json::from_str(&Outgoing::Auth { id: 1, token: "t" }.to_text()).expect("JSON");
        assert_eq!(auth, serde_json::json!({"type": "auth", "id": 1, "token": "t"}));
        let send: serde_json::Value =
            serde_json::from_str(&Outgoing::Send { id: 7, channel: "room:x", body: "12" }.to_text()).expect("JSON");
        assert_eq!(send, serde_json::json!({"type": "send", "id": 7, "channel": "room:x", "body": "12"}));
        let join: serde_json::Value = serde_json::from_str(&Outgoing::Join { id: 2, channel: "room:x" }.to_text()).expect("JSON");
        assert_eq!(join["type"], "join");
    }

    #[test]
    fn reads_the_servers_frames() {
        // As services/chat/src/ws.rs writes them.
        let event = r#"{"type":"message","channel":"room:x","message":{"id":"0190","channel":"room:x","sender_id":"a1","sender_name":"Guest","body":"123456789","sent_at":"2025-01-01T00:00:00Z"}}"#;
        let frame = Incoming::parse(event).expect("frame");
        assert_eq!(frame.kind, "message");
        let delivered = frame.delivered().expect("a message");
        assert_eq!(delivered.sender_id.as_deref(), Some("a1"));
        assert_eq!(sent_ns(&delivered.body), Some(123_456_789));

        let error = r#"{"type":"error","id":9,"code":"rate_limited","message":"slow down","retry_after_ms":250}"#;
        let frame = Incoming::parse(error).expect("frame");
        assert_eq!((frame.kind.as_ref(), frame.id, frame.code.as_deref()), ("error", Some(9), Some("rate_limited")));
        assert!(frame.delivered().is_none());

        let ack = r#"{"type":"ack","id":1,"account_id":"a1"}"#;
        let frame = Incoming::parse(ack).expect("frame");
        assert_eq!((frame.id, frame.account_id.as_deref()), (Some(1), Some("a1")));

        let unreadable = r#"{"type":"error","id":null,"code":"invalid_request","message":"not a chat frame"}"#;
        assert_eq!(Incoming::parse(unreadable).expect("frame").id, None);
    }

    #[test]
    fn bodies_round_trip() {
        assert_eq!(sent_ns(&body(0)), Some(0));
        assert_eq!(sent_ns(&body(u64::MAX)), Some(u64::MAX));
        assert_eq!(sent_ns("hello"), None);
    }
}
