//! What every Guildhall service stands on: configuration, logging, the error type, tokens,
//! database and cache ports, health, metrics, rate limits and shutdown.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod blobs;
pub mod cache;
pub mod config;
pub mod db;
pub mod digest;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod online;
pub mod ratelimit;
pub mod rds;
pub mod reachability;
pub mod region;
pub mod replica;
pub mod restore;
pub mod revocations;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod time;
pub mod tokens;

pub use error::{ApiError, ApiResult, OnUnique};
