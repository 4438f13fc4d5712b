//! The reverse proxy's own content work, per route: serving a directory
//! (`static_files`), compressing responses (`compress`) and caching them in memory
//! (`cache`). docs/config.md describes the keys; each part counts itself in metrics.

pub mod accept_encoding;
pub mod cache;
pub mod cache_policy;
pub mod cache_store;
pub mod compress;
pub mod etag;
pub mod static_files;
