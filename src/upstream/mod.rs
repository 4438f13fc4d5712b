//! Backends and pools: the runtime state of each backend (up/down, open connections,
//! weight), the pool that orders candidates through its balancer, and connecting to
//! the first candidate that answers.

pub mod balance;
pub mod connect;
pub mod health;
pub mod hysteresis;
pub mod pool;

pub use pool::{Backend, BackendGuard, Pool};
