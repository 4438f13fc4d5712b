//! The L4 engine's data path: `passthrough.rs` connects a routed connection to a backend
//! and replays what the peek read; `tcp_tunnel.rs` copies bytes both ways between the two
//! sockets with half-close and an idle timeout (`tunnel_wakers.rs` tells it which side
//! woke it); `splice.rs` does the same for any two streams (upgraded L7 tunnels).
//! `protocol: tcp` listeners use the same path without the peek.

pub mod passthrough;
pub mod splice;
pub mod tcp_tunnel;
mod tunnel_wakers;
