//! The platform crate's integration tests, one binary (`cargo test -p platform --test it`).

mod cache;
mod database;
mod events;
mod sqs;
