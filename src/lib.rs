//! minos: a consensus-backed session scheduler.

pub mod api;
pub mod bench;
pub mod chaos;
pub mod client;
pub mod config;
pub mod handler;
pub mod handlers;
pub mod lease;
pub mod model;
pub mod network;
pub mod node;
pub mod placement;
pub mod raft;
pub mod runtime;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod testkit;
