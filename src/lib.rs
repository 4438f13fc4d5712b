//! tollgate: an edge load balancer that serves TLS passthrough and TLS offloading on one
//! port, chosen per SNI.
//!
//! The life of a connection, module by module:
//!
//! - [`listener`]: accept loop (socket2 bind, connection limit, TCP_NODELAY), a task per
//!   connection, dispatch by protocol.
//! - [`tls::peek`] + [`tls::client_hello`]: read the ClientHello under a timeout and a
//!   64 KiB bound (sans-io parser on tls-parser), keep the bytes for replay.
//! - [`route`]: the SNI/Host table (exact, longest wildcard, default).
//! - [`l4::passthrough`] + [`l4::tcp_tunnel`]: connect to a backend of the pool (next one
//!   on failure), replay the ClientHello, copy both ways with half-close and idle timeout;
//!   [`conn_task`] runs the tunnel outside the connection's span.
//! - [`tls::terminate`] → [`http`]: terminate TLS with rustls (certificate by SNI), then
//!   proxy HTTP/1.1 with hyper: routes by Host/path, header rules, backend connections
//!   per request or pooled.
//! - [`upstream`]: pools, backend state, the balancer's candidate order.
//! - [`server`]: the state snapshot behind an `ArcSwap`, start and graceful shutdown.
//! - [`config`]: the YAML model and its validation; [`metrics`] and [`admin`]: what
//!   operators see. [`origin`] and [`demo`]: the built-in backend and the demo edge.
//! - [`woken`]: a wrapper that keeps rarely-firing signals (shutdown, shedding) from
//!   being polled at every wake of a connection task.

pub mod access_log;
pub mod admin;
pub mod bench;
pub mod config;
pub mod conn_task;
pub mod content;
pub mod demo;
pub mod error;
pub mod http;
pub mod l4;
pub mod listener;
pub mod log_fields;
pub mod metrics;
pub mod origin;
pub mod peer_field;
pub mod protect;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod woken;
