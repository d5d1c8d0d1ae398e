//! One shutdown signal that every task listens to (server, workers, sockets), in two steps:
//! *draining* (readiness fails so the load balancer stops sending work) and then *stopping*
//! (listeners close, in-flight work finishes within the grace period).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The process-wide shutdown switch. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Shutdown {
    /// A switch that nothing has flipped yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once shutdown has begun: readiness answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves when listeners and workers must stop.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// True once listeners and workers must stop.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Starts draining now and stops after `drain`.
    pub async fn begin(&self, drain: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        if !drain.is_zero() {
            tracing::info!(drain_secs = drain.as_secs(), "draining before stop");
            tokio::time::sleep(drain).await;
        }
        self.stop.cancel();
    }

    /// Stops at once (tests, fatal errors).
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    /// Waits for SIGTERM (ECS) or Ctrl-C, then drains for `drain` and stops.
    pub fn on_signal(&self, drain: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            this.begin(drain).await;
        });
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
