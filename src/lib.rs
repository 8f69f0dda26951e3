//! sidecache: a read-caching sidecar proxy for Redis.
//!
//! ```text
//!  app ──RESP/inline──▶ client ──▶ command policy ─┬─▶ local reply (PING, HELLO, refused…)
//!   ▲                   (slots)                   ├─▶ cache hit
//!   │                                             └─▶ backend ══ one pipelined socket ══▶ Redis
//!   │                                                  in-flight FIFO ◀── reply framer ◀──┘
//!   └──────── reply slots, filled in any order, written in request order ◀─┘
//! ```
//!
//! One thread, one `mio::Poll`, no locks. Modules:
//! - [`config`]: the command line and its validation.
//! - [`resp`]: request parser, reply framer and encoders (pure).
//! - [`command`]: what sidecache does with each request: cache, answer, refuse or forward (pure).
//! - [`keys`]: which keys a command writes, learned from Redis's `COMMAND` reply (pure).
//! - [`cache`]: the LRU + TTL cache of GET replies (pure).
//! - [`client`]: one client connection: its input, its ordered reply slots, its output.
//! - [`backend`]: a connection to Redis: connecting, backoff, the in-flight FIFO.
//! - [`tracking`]: Redis's client tracking as seen on the invalidation connection (pure).
//! - [`server`]: the event loop that owns all of the above.

pub mod backend;
pub mod cache;
pub mod client;
pub mod command;
pub mod config;
pub mod keys;
pub mod log;
pub mod resp;
pub mod server;
pub mod tracking;
