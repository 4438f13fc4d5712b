//! Benchmarks users run: `load.rs` is the load generator of `tollgate bench`; `compare`
//! runs every mode side by side over the same backends and writes a report.

pub mod chart;
pub mod compare;
pub mod load;
pub mod pinning;
pub mod procstat;
pub mod report;
pub mod testbed;
