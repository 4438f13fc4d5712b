//! Benchmarks users run: `load.rs` is the load generator of `tollgate bench`; `compare`
//! runs every mode side by side over the same backends and writes a report (what it can
//! run is in `scenarios`, what it samples while running in `sampling`).

pub mod chart;
pub mod compare;
pub mod errors;
pub mod http1;
pub mod load;
pub mod pinning;
pub mod procstat;
pub mod report;
mod sampling;
pub mod scenarios;
pub mod schedule;
pub mod target;
pub mod testbed;
pub mod timer;
