//! TLS on the client side: the sans-io ClientHello parser, the bounded peek that
//! replays what it read, and (for terminate routes) the rustls acceptor.

pub mod certgen;
pub mod client_hello;
pub mod peek;
pub mod terminate;
