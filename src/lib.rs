//! sidecache: a read-caching sidecar proxy for Redis.
//!
//! ```text
//!  app ──RESP2/3, inline──▶ client ──▶ command policy ─┬─▶ local reply (PING, HELLO, refused…)
//!   ▲                       (slots)                   ├─▶ cache hit
//!   │                                                 └─▶ data connection of the client's
//!   │                                                     protocol ══ pipelined ══▶ Redis
//!   │                                 in-flight FIFO ◀── reply framer ◀──┘    │ tracking
//!   │                                        │ (fill tickets) ▼               ▼ invalidations
//!   │                                        └──▶ cache ◀── invalidation connection
//!   └──────── reply slots, filled in any order, written in request order ◀─┘
//!
//!  MULTI / WATCH / blocking call ──▶ a connection pinned to that client ══▶ Redis
//!  (P|S)SUBSCRIBE ──▶ one shared subscriber connection ══▶ Redis; messages fanned out
//! ```
//!
//! One thread, one `mio::Poll`, no locks. Modules:
//! - [`config`]: the command line and its validation.
//! - [`resp`]: request parser, reply framer and encoders (pure).
//! - [`command`]: what sidecache does with each request: cache, answer, refuse or forward (pure).
//! - [`keys`]: which keys a command writes, learned from Redis's `COMMAND` reply (pure).
//! - [`cache`]: the LRU + TTL cache of GET replies and its fill tickets (pure).
//! - [`lru`]: the compact recency-ordered map the cache keeps its entries in (pure).
//! - [`client`]: one client connection: its input, its ordered reply slots, its output.
//! - [`net`]: sockets, TCP or Unix: addresses, streams, listeners.
//! - [`backend`]: a connection to Redis: connecting, logging in, backoff, the in-flight FIFO.
//! - [`tracking`]: Redis's client tracking as seen on the invalidation connection (pure).
//! - [`pinned`]: connections pinned to one client for a transaction or a blocking call.
//! - [`pubsub`]: who listens to what, and the acknowledgements Redis would send (pure).
//! - [`stats`]: what sidecache counts, and INFO in Redis's format (pure).
//! - [`server`]: the event loop that owns all of the above.
//! - [`log`](mod@log): timestamped, levelled log lines on stderr.

pub mod backend;
pub mod cache;
pub mod client;
pub mod command;
pub mod config;
pub mod keys;
pub mod log;
pub mod lru;
pub mod net;
pub mod pinned;
pub mod pubsub;
pub mod resp;
pub mod server;
pub mod stats;
pub mod tracking;
