//! A connection's outgoing queue: its channels' frames and the hub's notices for it, bounded,
//! holding no slots while it is empty.
//!
//! Why not a `tokio::sync::mpsc` channel: each allocates its shared state (cache-line padded) and
//! a first block of 32 slots when it is made, and keeps both for the connection's whole life,
//! which is mostly idle. A connection had two (frames, notices) and a cancellation token to be
//! kicked with: about 2 KiB of what an idle joined socket held (`loadtest/README.md`, issue 14).
//! This queue allocates slots while frames wait, gives them back when it drains, and wakes the
//! connection through one `Notify` for a frame, a notice and a kick alike.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::hub::Control;

/// Frames that may wait for a connection before it counts as too slow.
pub const QUEUE: usize = 256;
/// Notices that may wait for a connection before it counts as not keeping up.
pub const NOTICES: usize = 16;

/// The sending and the receiving side of one connection's queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Woken on every push and kick. `notify_one` keeps a permit when the connection is not
    /// waiting (it is writing a frame), so nothing pushed meanwhile is missed.
    ready: Notify,
    /// Frames that may wait.
    capacity: usize,
}

#[derive(Debug, Default)]
struct Waiting {
    frames: VecDeque<Arc<str>>,
    notices: VecDeque<Control>,
    /// Set when a push found the queue full: the connection closes rather than buffer more.
    too_slow: bool,
}

/// What a connection does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Its queue overflowed: close it (1008).
    TooSlow,
    /// Act on a notice. Notices go before frames: they end rights the frames would still use.
    Notice(Control),
    /// Write a frame.
    Frame(Arc<str>),
}

impl Default for Queue {
    fn default() -> Self {
        Queue::bounded(QUEUE)
    }
}

impl Queue {
    /// A queue holding at most `capacity` frames (and `NOTICES` notices).
    pub fn bounded(capacity: usize) -> Self {
        Queue(Arc::new(Shared { waiting: Mutex::new(Waiting::default()), ready: Notify::new(), capacity }))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame; false, marking the connection too slow, when the queue is full.
    pub fn push_frame(&self, frame: Arc<str>) -> bool {
        let mut waiting = self.waiting();
        let fits = waiting.frames.len() < self.0.capacity;
        if fits {
            waiting.frames.push_back(frame);
        } else {
            waiting.too_slow = true;
        }
        drop(waiting);
        self.0.ready.notify_one();
        fits
    }

    /// Queues a notice; false, marking the connection too slow, when `NOTICES` already wait.
    pub fn push_notice(&self, notice: Control) -> bool {
        let mut waiting = self.waiting();
        let fits = waiting.notices.len() < NOTICES;
        if fits {
            waiting.notices.push_back(notice);
        } else {
            waiting.too_slow = true;
        }
        drop(waiting);
        self.0.ready.notify_one();
        fits
    }

    /// Whether a push found the queue full.
    pub fn is_too_slow(&self) -> bool {
        self.waiting().too_slow
    }

    fn take(&self) -> Option<Next> {
        let mut waiting = self.waiting();
        if waiting.too_slow {
            return Some(Next::TooSlow);
        }
        if let Some(notice) = waiting.notices.pop_front() {
            if waiting.notices.is_empty() {
                waiting.notices = VecDeque::new();
            }
            return Some(Next::Notice(notice));
        }
        let frame = waiting.frames.pop_front()?;
        if waiting.frames.is_empty() {
            // Drained: give the slots back, or every socket that once had a burst waiting would
            // keep room for it while idle.
            waiting.frames = VecDeque::new();
        }
        Some(Next::Frame(frame))
    }

    /// Waits for what the connection must do next. Only the connection itself calls this, and it
    /// may drop the future at any point (a `select!`): nothing is taken until it resolves.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.take() {
                return next;
            }
            self.0.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_go_first_frames_keep_their_order_and_an_overflow_wins() {
        let queue = Queue::bounded(2);
        assert!(queue.push_frame("a".into()));
        assert!(queue.push_frame("b".into()));
        assert!(queue.push_notice(Control::Close { code: 4002, reason: "session_revoked" }));
        assert_eq!(queue.next().await, Next::Notice(Control::Close { code: 4002, reason: "session_revoked" }));
        assert_eq!(queue.next().await, Next::Frame("a".into()));
        assert!(queue.push_frame("c".into()));
        assert!(!queue.is_too_slow());
        assert!(!queue.push_frame("d".into()), "a third waiting frame is over the bound");
        assert!(queue.is_too_slow());
        assert_eq!(queue.next().await, Next::TooSlow);
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_connection_and_a_drained_queue_holds_no_slots() {
        let queue = Queue::default();
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        assert!(queue.push_frame("hello".into()));
        assert_eq!(waiter.await.expect("waiter"), Next::Frame("hello".into()));
        for i in 0..10 {
            assert!(queue.push_frame(i.to_string().into()));
        }
        for i in 0..10 {
            assert_eq!(queue.next().await, Next::Frame(i.to_string().into()));
        }
        assert_eq!(queue.waiting().frames.capacity(), 0);
    }
}
