//! Guildhall's integration tests, one binary (`cargo test -p guildhall --test it`): each module is
//! what was once its own test binary, so the workspace links one test executable here instead of
//! seventeen. Filter by module: `cargo test -p guildhall --test it chat::`.

#[macro_use]
mod common;

mod accounts;
mod chat;
mod console;
mod containers;
mod identity;
mod leaderboard;
mod notifications;
mod openapi;
mod outage;
mod rank_repair;
mod redis_flush;
mod region;
mod replicas;
mod seasons;
mod trace_propagation;
mod uploads;
mod webhooks;
