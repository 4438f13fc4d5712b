//! Benchmarks users run: `load.rs` is the load generator of `tollgate bench`; `compare`
//! runs every mode side by side over the same backends and writes a report.

pub mod load;
