//! The L4 engine's data path: `passthrough.rs` connects a routed connection to a backend
//! and replays what the peek read; `splice.rs` copies bytes both ways with half-close and
//! an idle timeout. `protocol: tcp` listeners use the same path without the peek.

pub mod passthrough;
pub mod splice;
