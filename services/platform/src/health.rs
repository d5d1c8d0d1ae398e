//! `/health/live` answers while the process runs; `/health/ready` checks the database and the
//! cache and fails while the process drains, so the load balancer stops routing here.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::cache::Cache;
use crate::db::Database;
use crate::http::Json;
use crate::shutdown::Shutdown;

/// A dependency check that takes longer counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness checks.
#[derive(Clone, Debug)]
pub struct HealthState {
    /// The database pool.
    pub db: Database,
    /// The cache.
    pub cache: Cache,
    /// The shutdown switch: draining means not ready.
    pub shutdown: Shutdown,
}

/// The body of both health answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `unavailable` or `draining`.
    pub status: &'static str,
    /// Per-dependency result, on readiness only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// One dependency's result. The answer is public (the load balancer and anyone may ask), so it
/// says only whether the check passed; why it failed is logged.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `database` or `cache`.
    pub name: &'static str,
    /// `ok`, `unavailable` (the check failed) or `timed out`.
    pub status: &'static str,
}

/// The health routes.
pub fn router(state: HealthState) -> Router {
    Router::new().route("/health/live", get(live)).route("/health/ready", get(ready)).with_state(state)
}

/// The process is running.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok", checks: Vec::new() })
}

/// The process can serve: database and cache answer, and it is not draining.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    if state.shutdown.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "draining", checks: Vec::new() }));
    }
    let (db, cache) =
        tokio::join!(tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()), tokio::time::timeout(CHECK_TIMEOUT, state.cache.ping()));
    let outcome = |name: &'static str, result: Result<anyhow::Result<()>, tokio::time::error::Elapsed>| {
        let status = match result {
            Ok(Ok(())) => "ok",
            Ok(Err(err)) => {
                tracing::warn!(dependency = name, error = format!("{err:#}"), "readiness check failed");
                "unavailable"
            }
            Err(_) => {
                tracing::warn!(dependency = name, timeout_ms = CHECK_TIMEOUT.as_millis() as u64, "readiness check timed out");
                "timed out"
            }
        };
        Check { name, status }
    };
    let checks = vec![outcome("database", db), outcome("cache", cache)];
    let healthy = checks.iter().all(|c| c.status == "ok");
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Health { status: if healthy { "ok" } else { "unavailable" }, checks }))
}
