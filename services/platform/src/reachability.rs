//! Whether a backend (PostgreSQL, Redis) answers: a circuit breaker fed by probes, so that a
//! request whose dependency is down gets a fast 503 instead of waiting out a timeout.
//!
//! A failure that suggests an outage (a refused or reset connection, a pool that could not get a
//! connection, a command that timed out) does not open the breaker by itself: a busy pool or one
//! slow command looks the same. It starts a probe, a fresh connection made on the side within
//! `PROBE_TIMEOUT`. A probe that fails opens the breaker: requests then fail at once, and the
//! probe runs again every `PROBE_EVERY` until one gets through and closes it, so the process
//! recovers by itself when the backend is back. One probe runs at a time, and a suspicion within
//! `PROBE_EVERY` of a probe that got through is not probed again, so a busy process does not
//! open a connection per slow request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Dependency;

/// How long a probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a backend found down is probed again (and how long a probe that got through is
/// trusted).
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Connects to the backend on the side and answers whether it took the connection: `Err` means
/// down.
pub type Probe = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// The breaker of one backend. Shared (`Arc`) by every handle on that backend.
pub struct Reachability {
    dependency: Dependency,
    probe: Probe,
    /// True from a failed probe until one gets through.
    down: watch::Sender<bool>,
    /// A probe (or a loop of them, while down) is running.
    probing: AtomicBool,
    /// When a probe last got through.
    answered_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reachability").field("dependency", &self.dependency).field("down", &self.is_down()).finish()
    }
}

impl Reachability {
    /// A breaker for `dependency`, closed (the backend answered when it was connected to).
    pub fn new(dependency: Dependency, probe: Probe) -> Arc<Self> {
        Arc::new(Reachability {
            dependency,
            probe,
            down: watch::Sender::new(false),
            probing: AtomicBool::new(false),
            answered_at: Mutex::new(None),
        })
    }

    /// Whether the last probe failed: requests should fail at once.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Reports a failure that suggests the backend is down: probes it, unless a probe is running
    /// or one got through moments ago. Needs a Tokio runtime.
    pub fn suspect(self: &Arc<Self>) {
        let answered_at = *self.answered_at.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_down() && answered_at.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
            return;
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(Self::probe_until_answered(Arc::downgrade(self)));
    }

    /// Resolves once a probe has found the backend down, probing after `after` and then every
    /// `PROBE_EVERY`: a wait for the backend (a connection from the pool) races this, so that it
    /// ends as soon as the backend is known to be down rather than at its own timeout.
    pub async fn until_down(self: &Arc<Self>, after: Duration) {
        tokio::time::sleep(after).await;
        let mut down = self.down.subscribe();
        loop {
            self.suspect();
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_EVERY, down.wait_for(|down| *down)).await {
                return;
            }
        }
    }

    /// Probes until a probe gets through; holds only a weak reference between probes, so it
    /// ends when the last handle on the backend is dropped.
    async fn probe_until_answered(this: Weak<Self>) {
        loop {
            let Some(this) = this.upgrade() else { return };
            let failure = match tokio::time::timeout(PROBE_TIMEOUT, (this.probe)()).await {
                Ok(Ok(())) => {
                    *this.answered_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    if this.down.send_replace(false) {
                        tracing::info!(dependency = this.dependency.name(), "dependency answers again");
                    }
                    this.probing.store(false, Ordering::Release);
                    return;
                }
                Ok(Err(err)) => format!("{err:#}"),
                Err(_) => format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()),
            };
            if this.down.send_replace(true) {
                tracing::debug!(dependency = this.dependency.name(), error = failure, "dependency still unreachable");
            } else {
                tracing::warn!(
                    dependency = this.dependency.name(),
                    error = failure,
                    "dependency unreachable; its requests fail at once until a probe gets through"
                );
            }
            drop(this);
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A breaker whose probe fails while `down` is set, counting probes.
    fn breaker(down: Arc<AtomicBool>, probes: Arc<AtomicUsize>) -> Arc<Reachability> {
        Reachability::new(
            Dependency::Database,
            Box::new(move || {
                let (down, probes) = (down.clone(), probes.clone());
                Box::pin(async move {
                    probes.fetch_add(1, Ordering::SeqCst);
                    if down.load(Ordering::SeqCst) { Err(anyhow::anyhow!("connection refused")) } else { Ok(()) }
                })
            }),
        )
    }

    #[tokio::test]
    async fn a_failed_probe_opens_the_breaker_until_one_gets_through() {
        let (down, probes) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let breaker = breaker(down.clone(), probes.clone());
        assert!(!breaker.is_down(), "closed until a probe fails");
        tokio::time::timeout(Duration::from_secs(2), breaker.until_down(Duration::ZERO)).await.expect("a probe found it down");
        assert!(breaker.is_down());
        down.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while breaker.is_down() {
            assert!(Instant::now() < deadline, "the breaker did not close after the backend came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(probes.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn suspicions_right_after_a_probe_got_through_are_not_probed() {
        let (down, probes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let breaker = breaker(down, probes.clone());
        breaker.suspect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while probes.load(Ordering::SeqCst) == 0 || breaker.probing.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "no probe ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..10 {
            breaker.suspect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(probes.load(Ordering::SeqCst), 1, "a busy process would probe on every slow request");
        assert!(!breaker.is_down());
        // A backend that answers is never reported down, however long one waits.
        assert!(tokio::time::timeout(Duration::from_millis(1200), breaker.until_down(Duration::ZERO)).await.is_err());
    }
}
