//! One benchmark client: a guest player's WebSocket, which connects, authenticates and joins its
//! room, then sends on a fixed schedule and times every message the other members sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use super::frame::{self, Incoming, Outgoing};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The client frame ids of the set-up frames; sends count on from `FIRST_SEND_ID`.
const AUTH_ID: u64 = 1;
const JOIN_ID: u64 = 2;
const FIRST_SEND_ID: u64 = 3;

/// What every client of a run shares: the clock the message bodies count from and the counters the
/// run watches to know when every answer and delivery is in.
#[derive(Debug)]
pub struct Shared {
    /// Message bodies carry nanoseconds since this instant.
    pub epoch: Instant,
    /// Sends so far, warm-up included: bounded by `max_sends` (`--max-requests`).
    pub sends: AtomicU64,
    /// The most sends of the run.
    pub max_sends: u64,
    /// Sends not answered yet (by an ack or an error).
    pub unanswered: AtomicU64,
    /// Deliveries the acknowledged measured messages call for: each reaches the other members of
    /// its room.
    pub expected: AtomicU64,
    /// Deliveries of measured messages received so far.
    pub received: AtomicU64,
}

impl Shared {
    /// Counters at zero, counting time from now.
    pub fn new(max_sends: u64) -> Self {
        Self {
            epoch: Instant::now(),
            sends: AtomicU64::new(0),
            max_sends,
            unanswered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// Nanoseconds from the epoch to `at`.
    pub fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Where the run is; the clients watch it.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Clients connect and join, then wait.
    Setup,
    /// Everyone has joined (or failed to): send on this schedule.
    Run(Arc<Schedule>),
    /// The run is over: stop reading and report.
    Stop,
}

/// When the clients send, and what the run found at setup.
#[derive(Debug)]
pub struct Schedule {
    /// The first sends (each client's offset into `period` counts from here).
    pub start: Instant,
    /// Messages sent from here on are measured.
    pub measure_from: Instant,
    /// No sends from here on.
    pub stop: Instant,
    /// Clients give up waiting for the run's end here, whatever happens (a bound of last resort:
    /// the run sends `Phase::Stop` before).
    pub give_up: Instant,
    /// Time between one client's sends (`1 / --rate`).
    pub period: Duration,
    /// How many clients joined each room.
    pub room_members: Vec<u64>,
}

/// One client's part of the run.
#[derive(Debug)]
pub struct Client {
    /// The client's number: its player, room and instance follow from it.
    pub index: usize,
    /// `ws://host:port/v1/chat/ws` of its instance.
    pub url: String,
    /// Its player's access token.
    pub token: String,
    /// Its room's number.
    pub room: usize,
    /// Its room's channel id, `room:bench-<run id>-<room>`.
    pub channel: Arc<str>,
    /// Longest wait for each set-up step (connect, auth, join).
    pub timeout: Duration,
}

/// Why a client did not get to join, or why it stopped early: `kind` is counted, `detail` shown.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Short and countable: `connect: io ConnectionRefused`, `join: error forbidden`, `close 1008`.
    pub kind: String,
    /// What happened, for the report's samples.
    pub detail: String,
}

impl Failure {
    fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { kind: kind.into(), detail: detail.into() }
    }
}

/// A client's set-up result, reported as soon as it is known.
#[derive(Debug)]
pub struct Outcome {
    /// The client's number.
    pub index: usize,
    /// `Err` when it did not connect, authenticate and join.
    pub result: Result<(), Failure>,
}

/// What one client measured.
#[derive(Debug, Default)]
pub struct Tally {
    /// Why it did not join, if it did not.
    pub setup_failure: Option<Failure>,
    /// Why it stopped before the run's end, if it did (the server closed it, the socket failed).
    pub disconnect: Option<Failure>,
    /// Measured messages sent.
    pub sent: u64,
    /// Measured messages acknowledged.
    pub acked: u64,
    /// Measured messages neither acknowledged nor refused by the end.
    pub unanswered: u64,
    /// Deliveries its acknowledged measured messages called for (`acked` × other members).
    pub expected: u64,
    /// Delivery latency of each measured message it received from another member, in ns.
    pub latencies_ns: Vec<u64>,
    /// Error frames by code: those answering measured sends, and any answering nothing.
    pub errors_by_code: BTreeMap<String, u64>,
    /// The first error frame's text.
    pub error_sample: Option<String>,
    /// Its own messages delivered back to it (the server should not: the sender gets the ack).
    pub echoes: u64,
    /// Message events whose body was not a send time.
    pub foreign: u64,
    /// `--max-requests` stopped its sends.
    pub hit_max_sends: bool,
}

impl Client {
    /// Connects, authenticates and joins (at most `slots` clients at a time), reports how that
    /// went on `outcomes`, then waits for the run's schedule and plays its part until `Phase::Stop`.
    pub async fn run(
        self,
        shared: Arc<Shared>,
        slots: Arc<Semaphore>,
        outcomes: mpsc::Sender<Outcome>,
        mut phase: watch::Receiver<Phase>,
    ) -> Tally {
        let mut tally = Tally::default();
        let opened = match slots.acquire().await {
            Ok(_slot) => self.open().await,
            Err(_) => Err(Failure::new("cancelled", "the run ended during set-up")),
        };
        let _ = outcomes.send(Outcome { index: self.index, result: opened.as_ref().map(|_| ()).map_err(Clone::clone) }).await;
        // The run counts outcomes until every client's sender is gone.
        drop(outcomes);
        let (mut socket, account_id) = match opened {
            Ok(opened) => opened,
            Err(failure) => {
                tally.setup_failure = Some(failure);
                return tally;
            }
        };

        // Until the schedule comes, read what arrives (presence events as the room fills) so that
        // the server's queue for this connection does not fill, and answer its pings.
        let schedule = loop {
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        return tally;
                    }
                    match &*phase.borrow_and_update() {
                        Phase::Setup => {}
                        Phase::Run(schedule) => break schedule.clone(),
                        Phase::Stop => return tally,
                    }
                }
                frame = socket.next() => {
                    if let Err(failure) = still_open(frame) {
                        tally.disconnect = Some(failure);
                        return tally;
                    }
                }
            }
        };
        self.exchange(&mut socket, &account_id, &shared, &schedule, &mut phase, &mut tally).await;
        tally
    }

    /// Opens the socket, authenticates in the first frame and joins the room; returns the socket
    /// and the player's account id.
    async fn open(&self) -> Result<(Socket, String), Failure> {
        // A small read buffer: tungstenite zero-fills the buffer's free capacity before every read
        // (FrameCodec::read_in), so its size is resident memory per socket and a memset per read,
        // and this process holds thousands of sockets that read frames of a few hundred bytes
        // (the default is 128 KiB; a larger frame grows the buffer). No write buffering: each
        // frame goes out when sent, as a game client's would.
        let config = WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0);
        let deadline = Instant::now() + self.timeout;
        let (mut socket, _) = timeout_at(deadline, connect_async_with_config(self.url.as_str(), Some(config), true))
            .await
            .map_err(|_| Failure::new("connect: timeout", format!("no WebSocket from {} within {:?}", self.url, self.timeout)))?
            .map_err(|err| Failure::new(format!("connect: {}", error_kind(&err)), format!("connecting to {}: {err}", self.url)))?;
        let ack = self.request(&mut socket, "auth", &Outgoing::Auth { id: AUTH_ID, token: &self.token }).await?;
        let account_id = Incoming::parse(&ack).ok().and_then(|ack| ack.account_id.map(String::from)).unwrap_or_default();
        self.request(&mut socket, "join", &Outgoing::Join { id: JOIN_ID, channel: &self.channel }).await?;
        Ok((socket, account_id))
    }

    /// Sends a set-up frame and returns the text of its ack, skipping other frames; an error frame,
    /// a closed socket or `timeout` is a failure of `step`.
    async fn request(&self, socket: &mut Socket, step: &str, frame: &Outgoing<'_>) -> Result<String, Failure> {
        let id = match frame {
            Outgoing::Auth { id, .. } | Outgoing::Join { id, .. } | Outgoing::Send { id, .. } => *id,
        };
        socket
            .send(Message::text(frame.to_text()))
            .await
            .map_err(|err| Failure::new(format!("{step}: {}", error_kind(&err)), format!("sending {step}: {err}")))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let next = timeout_at(deadline, socket.next())
                .await
                .map_err(|_| Failure::new(format!("{step}: timeout"), format!("no answer to {step} within {:?}", self.timeout)))?;
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(close))) => {
                    let kind = close_kind(close.as_ref());
                    return Err(Failure::new(format!("{step}: {kind}"), format!("the server closed the socket at {step}: {close:?}")));
                }
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(Failure::new(format!("{step}: {}", error_kind(&err)), format!("at {step}: {err}"))),
                None => return Err(Failure::new(format!("{step}: ended"), format!("the socket ended at {step}"))),
            };
            let Ok(answer) = Incoming::parse(&text) else { continue };
            if answer.id != Some(id) {
                continue;
            }
            match answer.kind.as_ref() {
                "ack" => return Ok(text.as_str().to_owned()),
                "error" => {
                    let code = answer.code.as_deref().unwrap_or("unknown");
                    return Err(Failure::new(format!("{step}: error {code}"), format!("{step} refused: {}", text.as_str())));
                }
                _ => continue,
            }
        }
    }

    /// The measured part: sends on the schedule until it stops, and reads acks, errors and the
    /// other members' messages until `Phase::Stop` (or the schedule's last resort).
    async fn exchange(
        &self,
        socket: &mut Socket,
        account_id: &str,
        shared: &Shared,
        schedule: &Schedule,
        phase: &mut watch::Receiver<Phase>,
        tally: &mut Tally,
    ) {
        let measure_from_ns = shared.ns(schedule.measure_from);
        let others = schedule.room_members.get(self.room).copied().unwrap_or(0).saturating_sub(1);
        let mut next_send = schedule.start + offset(self.index, schedule.period);
        let mut sending = true;
        // Two timers for the whole exchange, reset rather than rebuilt on each turn of the loop
        // (which turns for every frame received).
        let give_up = sleep_until(schedule.give_up);
        let send_timer = sleep_until(next_send);
        tokio::pin!(give_up, send_timer);
        let mut next_id = FIRST_SEND_ID;
        // Sends awaiting their answer: frame id to whether the send is measured.
        let mut waiting: HashMap<u64, bool> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() || matches!(*phase.borrow_and_update(), Phase::Stop) {
                        break;
                    }
                }
                () = &mut give_up => break,
                () = &mut send_timer, if sending => {
                    let now = Instant::now();
                    if now >= schedule.stop {
                        sending = false;
                        continue;
                    }
                    if shared.sends.fetch_add(1, Ordering::Relaxed) >= shared.max_sends {
                        sending = false;
                        tally.hit_max_sends = true;
                        continue;
                    }
                    let sent_ns = shared.ns(now);
                    let body = frame::body(sent_ns);
                    let text = Outgoing::Send { id: next_id, channel: &self.channel, body: &body }.to_text();
                    if let Err(err) = socket.send(Message::text(text)).await {
                        tally.disconnect = Some(Failure::new(error_kind(&err), format!("sending a message: {err}")));
                        break;
                    }
                    let measured = sent_ns >= measure_from_ns;
                    tally.sent += u64::from(measured);
                    waiting.insert(next_id, measured);
                    shared.unanswered.fetch_add(1, Ordering::Relaxed);
                    next_id += 1;
                    // A fixed schedule (open loop): a client that fell behind catches up, so the
                    // offered rate stays --rate whatever the server does.
                    next_send += schedule.period;
                    send_timer.as_mut().reset(next_send);
                }
                frame = socket.next() => {
                    let received_ns = shared.ns(Instant::now());
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        other => match still_open(other) {
                            Ok(()) => continue,
                            Err(failure) => {
                                tally.disconnect = Some(failure);
                                break;
                            }
                        },
                    };
                    let Ok(incoming) = Incoming::parse(&text) else {
                        *tally.errors_by_code.entry("unreadable_frame".to_owned()).or_default() += 1;
                        continue;
                    };
                    match incoming.kind.as_ref() {
                        "message" => {
                            let Some(delivered) = incoming.delivered() else {
                                tally.foreign += 1;
                                continue;
                            };
                            if delivered.sender_id.as_deref() == Some(account_id) {
                                tally.echoes += 1;
                                continue;
                            }
                            match frame::sent_ns(&delivered.body) {
                                Some(sent_ns) if sent_ns >= measure_from_ns => {
                                    tally.latencies_ns.push(received_ns.saturating_sub(sent_ns));
                                    shared.received.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(_) => {}
                                None => tally.foreign += 1,
                            }
                        }
                        "ack" => {
                            if let Some(measured) = incoming.id.and_then(|id| waiting.remove(&id)) {
                                shared.unanswered.fetch_sub(1, Ordering::Relaxed);
                                if measured {
                                    tally.acked += 1;
                                    tally.expected += others;
                                    shared.expected.fetch_add(others, Ordering::Relaxed);
                                }
                            }
                        }
                        "error" => {
                            let answered = incoming.id.and_then(|id| waiting.remove(&id));
                            if answered.is_some() {
                                shared.unanswered.fetch_sub(1, Ordering::Relaxed);
                            }
                            // Refusals of warm-up sends are not counted; refusals of measured
                            // sends and errors answering nothing are.
                            if answered != Some(false) {
                                let code = incoming.code.as_deref().unwrap_or("unknown");
                                *tally.errors_by_code.entry(code.to_owned()).or_default() += 1;
                                tally.error_sample.get_or_insert_with(|| text.as_str().chars().take(300).collect());
                            }
                        }
                        // Presence and typing events.
                        _ => {}
                    }
                }
            }
        }
        // What is still waiting will not be answered now: take it off the run's count.
        shared.unanswered.fetch_sub(waiting.len() as u64, Ordering::Relaxed);
        tally.unanswered = waiting.values().filter(|measured| **measured).count() as u64;
    }
}

/// Client `index`'s first send, as an offset into `period`: the fractional parts of multiples of
/// the golden ratio (a low-discrepancy sequence), so that any number of clients spread their sends
/// evenly over the period instead of sending together.
pub fn offset(index: usize, period: Duration) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    period.mul_f64((index as f64 * GOLDEN).fract())
}

/// `Ok` when a frame read outside the exchange leaves the socket open; the failure otherwise.
fn still_open(frame: Option<Result<Message, tungstenite::Error>>) -> Result<(), Failure> {
    match frame {
        Some(Ok(Message::Close(close))) => {
            Err(Failure::new(close_kind(close.as_ref()), format!("the server closed the socket: {close:?}")))
        }
        Some(Ok(_)) => Ok(()),
        Some(Err(err)) => Err(Failure::new(error_kind(&err), format!("reading: {err}"))),
        None => Err(Failure::new("ended", "the socket ended without a close frame")),
    }
}

/// `close <code>` of a close frame, as counted.
fn close_kind(close: Option<&tungstenite::protocol::CloseFrame>) -> String {
    close.map_or_else(|| "close (no code)".to_owned(), |close| format!("close {}", u16::from(close.code)))
}

/// A countable name for a WebSocket failure.
fn error_kind(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Io(io) => format!("io {:?}", io.kind()),
        tungstenite::Error::Http(response) => format!("http {}", response.status().as_u16()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".to_owned(),
        tungstenite::Error::Protocol(_) => "protocol".to_owned(),
        _ => "websocket".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_evenly_over_the_period() {
        let period = Duration::from_secs(5);
        let offsets: Vec<Duration> = (0..5000).map(|index| offset(index, period)).collect();
        assert!(offsets.iter().all(|offset| *offset < period));
        // Each tenth of the period gets close to a tenth of the clients.
        let mut tenths = [0u32; 10];
        for offset in &offsets {
            tenths[(offset.as_secs_f64() / 0.5) as usize] += 1;
        }
        assert!(tenths.iter().all(|count| (480..=520).contains(count)), "uneven: {tenths:?}");
    }

    #[test]
    fn failures_are_counted_by_kind() {
        let close = tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Policy,
            reason: "too slow to read".into(),
        };
        assert_eq!(close_kind(Some(&close)), "close 1008");
        assert_eq!(close_kind(None), "close (no code)");
        let refused = tungstenite::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(error_kind(&refused), "io ConnectionRefused");
        assert!(still_open(Some(Ok(Message::Ping(Default::default())))).is_ok());
        assert_eq!(still_open(None).expect_err("ended").kind, "ended");
    }
}
