//! The event loop: one thread, one `mio::Poll`. Owns the listener, the slab
//! of clients, the connections to Redis and the cache, and is the only
//! place that opens, closes or moves data between them.
//!
//! Each turn: handle the batch of readiness events: the invalidation
//! connection's first, then the pub/sub connection's, then the other
//! connections to Redis, and the clients' last; run due timers; resume clients that have input left;
//! write the data connection's queued requests (one write batches every
//! client's requests of the turn); write each client's output; and only
//! then remove closed clients from the slab, so an event later in the same
//! batch never lands on a reused slot. A reply is routed by slab key AND
//! client id, so a reply owed to a departed client is dropped, never given
//! to the next tenant of its slot.
//!
//! There is one data connection per protocol in use: RESP2 from the start,
//! RESP3 once a client says `HELLO 3`, so every client gets exactly the
//! bytes Redis sends a client of its protocol. A client that switches
//! protocol waits until its requests on the other connection are answered,
//! so its requests still run in the order it sent them.
//!
//! The cache serves only while it can be kept coherent: Redis's command
//! table is loaded (to see which keys a forwarded write touches) and, when
//! tracking is in use, the invalidation connection is subscribed. A GET may
//! fill the cache only through a data connection whose reads Redis tracks.

use crate::backend::{info_field, login_refused, Backend, Framed, Login, LoginStep, Progress};
use crate::cache::{Cache, FillTicket, Hit, Limits, Rewrites};
use crate::client::{Client, Phase, ReadOutcome, Replies, ReplyMode};
use crate::command::{self, Action, InRefusedMulti, LibAttr};
use crate::config::{Config, TrackingMode};
use crate::keys::{CommandTable, Writes};
use crate::net::{Address, Listener};
use crate::pinned::{Owner, Pinned, PinnedRequest, Step, EXECABORT};
use crate::pubsub::{self, Channels, Kind, Subscribed, Waiter};
use crate::resp::Protocol;
use crate::resp::{self, Request, Value};
use crate::stats;
use crate::tracking::{self, Incoming};
use crate::{log, log_debug, log_warn};
use anyhow::{anyhow, Context};
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const DATA_RESP2: Token = Token(1);
const DATA_RESP3: Token = Token(2);
const INVALIDATION: Token = Token(3);
const SIGNALS: Token = Token(4);
const PUBSUB: Token = Token(5);
/// Client tokens are slab keys shifted past the fixed tokens.
const FIRST_CLIENT: usize = 6;
/// Pinned connections' tokens are their slab keys shifted past every
/// client token there can be.
const FIRST_PINNED: usize = usize::MAX / 2;
/// Clean pinned connections kept open for the next client that needs one.
const PINNED_POOL: usize = 8;

const PROTOCOLS: [Protocol; 2] = [Protocol::Resp2, Protocol::Resp3];

/// One of the connections to Redis, named for what they all share: their
/// replies are read and framed alike, and each kind has its own way of
/// being lost.
#[derive(Clone, Copy)]
enum Link {
    Data(Protocol),
    Invalidation,
    PubSub,
    Pinned(usize),
}

/// Index of a protocol's data connection.
fn conn(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Resp2 => 0,
        Protocol::Resp3 => 1,
    }
}

/// How long shutdown waits for owed replies to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Reads from one client per wake-up before others get a turn.
const READS_PER_TURN: usize = 16;
/// How often the idle invalidation connection is checked with a PING, and
/// how long its answer may take before the connection counts as lost:
/// Redis says nothing to the data connection when its redirect target dies.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

const BACKEND_UNAVAILABLE: &[u8] = b"-ERR backend unavailable\r\n";

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, \
     otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client \
     and select the RESP protocol version at the same time";

/// Who waits for a reply on the data connection, and what to do with it.
#[derive(Debug)]
enum DataRequest {
    /// A client's request: the reply goes to slot `seq` of client `id`,
    /// which lived in slab slot `key` when the request was sent.
    /// `fills` marks a GET miss whose reply the following `Fill` may store.
    /// `rewrites` holds what a write touches, to drop from the cache again
    /// when its reply arrives: a GET sent on the other data connection may
    /// have run before the write although it was sent after it.
    Client {
        key: usize,
        id: u64,
        seq: u64,
        fills: bool,
        rewrites: Option<Box<Rewrites>>,
        /// A PUBLISH or SPUBLISH to this channel: Redis counts sidecache's
        /// one subscribed connection, the client expects its subscribers.
        publish: Option<Box<(Kind, Box<[u8]>)>>,
    },
    /// The PTTL sent right after a GET miss: it completes the fill, so a
    /// cached value never outlives the key's own expiry.
    Fill {
        key: Box<[u8]>,
        ticket: FillTicket,
        sent_at: Instant,
    },
    Login(LoginStep),
    /// `HELLO 3`, first on the RESP3 data connection after the login.
    Hello,
    SetName,
    ServerInfo,
    CommandTable,
    TrackingOn {
        redirect: i64,
    },
}

/// A connection to Redis that requests are queued on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Data(usize),
    Pubsub,
    Pinned(usize),
}

/// sidecache's requests on the pub/sub connection: one (un)subscription each.
#[derive(Debug)]
enum PubsubRequest {
    Login(LoginStep),
    SetName,
    Subscribe {
        kind: Kind,
        name: Box<[u8]>,
    },
    /// With the acknowledgement held until Redis stopped delivering the
    /// channel, so that a PUBLISH after it is not counted for sidecache.
    Unsubscribe(Option<Box<Waiter>>),
    /// A PING whose answer comes after every message Redis queued for
    /// sidecache before it: the reply to a PUBLISH waits for it, so the
    /// messages reach sidecache's subscribers before the publisher hears
    /// back, as they would from Redis.
    Barrier(Box<Waiter>),
}

/// sidecache's own requests on the invalidation connection.
#[derive(Debug)]
enum InvalidationRequest {
    Login(LoginStep),
    SetName,
    ClientId,
    Subscribe,
    Ping,
}

/// The state of client tracking across both connections.
struct Tracking {
    mode: TrackingMode,
    /// Learned from Redis: `Some(false)` once it answered that it cannot track.
    supported: Option<bool>,
    /// CLIENT ID of the invalidation connection, once known.
    client_id: Option<i64>,
    subscribed: bool,
    /// Per data connection: Redis acknowledged tracking, redirected to `client_id`.
    on: [bool; 2],
    ping_sent_at: Option<Instant>,
    next_ping_at: Option<Instant>,
}

impl Tracking {
    fn wanted(&self) -> bool {
        self.mode != TrackingMode::Off && self.supported != Some(false)
    }
}

/// What a request's execution needs besides its client.
struct Proxy {
    registry: Registry,
    /// One data connection per protocol, indexed by [`conn`].
    data: [Backend<DataRequest>; 2],
    /// Per data connection: a GET sent on it may fill the cache.
    fills_allowed: [bool; 2],
    cache: Cache,
    commands: Option<CommandTable>,
    redis_version: Option<String>,
    /// A data connection `open` started, for the server to ask for tracking on it.
    opened: Option<Protocol>,
    /// Connections pinned to a client, and the clean ones pooled for reuse.
    pinned: Slab<Pinned>,
    pool: Vec<usize>,
    max_pinned: usize,
    /// Pinned connections with requests to write at the end of the turn.
    pinned_to_flush: Vec<usize>,
    /// The one connection that holds every client's subscriptions.
    pubsub: Backend<PubsubRequest>,
    channels: Channels,
    redis: Address,
    timeout: Duration,
    /// Where requests were last queued this turn: every other connection
    /// has been written out since.
    last_route: Option<Route>,
    /// `--requirepass`: the password clients must AUTH with.
    requirepass: Option<Box<[u8]>>,
    /// What INFO reports.
    counters: stats::Counters,
    cache_max_memory: usize,
    /// AUTH and SELECT for every new connection to Redis.
    login: Login,
    /// Why Redis refused sidecache's login, until a login succeeds: the
    /// clients' "backend unavailable" errors say it.
    login_error: Option<String>,
    /// Per data connection: GET misses in flight that later GETs of the
    /// same key share, by key, oldest first.
    coalesced: [HashMap<Box<[u8]>, Vec<Coalesced>>; 2],
}

/// A GET miss in flight and the GETs of the same key that arrived while it
/// was: they get its reply rather than each sending their own (a stampede
/// on a cold key costs Redis one GET). A GET joins only while the first
/// one's fill ticket is valid, that is while no write, invalidation or
/// flush of the key came since it was sent: exactly when the reply may
/// still be cached, and served to them from the cache a moment later.
struct Coalesced {
    ticket: FillTicket,
    /// Reply slots of the GETs that joined: client slab key, id, slot.
    waiters: Vec<(usize, u64, u64)>,
}

impl Proxy {
    /// The error for a request Redis cannot be asked now, with the reason
    /// when Redis refused sidecache's login.
    fn unavailable_message(&self) -> String {
        match &self.login_error {
            None => "ERR backend unavailable".to_string(),
            Some(why) => format!("ERR backend unavailable: {why}"),
        }
    }

    fn unavailable(&self) -> Vec<u8> {
        let mut out = Vec::new();
        resp::error(&mut out, &self.unavailable_message());
        out
    }

    /// Whether `user` (the default user when `None`) with `password` may
    /// use sidecache: the default user with `--requirepass`, or with any
    /// password when there is none, as Redis's default user. The password
    /// is compared in constant time.
    fn credentials_ok(&self, user: Option<&[u8]>, password: &[u8]) -> bool {
        let default_user = user.is_none_or(|u| u == b"default");
        match &self.requirepass {
            None => default_user,
            Some(required) => default_user & constant_time_eq(password, required),
        }
    }

    /// Called before a request is queued on `next`: writes out what was
    /// queued on every other connection first, so that requests reach
    /// Redis in the order clients sent them, across connections too (a
    /// write on the shared connection, then a transaction's EXEC on a
    /// pinned one, must not run the other way round). Requests in a row
    /// for one connection are still written together. A write error is
    /// left for the end of the turn, whose flush meets it again.
    fn route(&mut self, next: Route) {
        if self.last_route == Some(next) {
            return;
        }
        self.last_route = Some(next);
        for c in 0..2 {
            if next != Route::Data(c) && self.data[c].has_output() {
                let _ = self.data[c].flush(&self.registry);
            }
        }
        if next != Route::Pubsub && self.pubsub.has_output() {
            let _ = self.pubsub.flush(&self.registry);
        }
        for &p in &self.pinned_to_flush {
            if next != Route::Pinned(p) {
                if let Some(pinned) = self.pinned.get_mut(p) {
                    let _ = pinned.backend.flush(&self.registry);
                }
            }
        }
    }

    /// A connection of its own for `owner`, in its protocol: a pooled one,
    /// or a new one that takes requests while it connects. The error is
    /// the client's reply.
    fn pin(&mut self, owner: Owner, protocol: Protocol, now: Instant) -> Result<usize, String> {
        if !self.data[0].accepts_requests() {
            return Err(self.unavailable_message());
        }
        let p = match self.pooled(now) {
            Some(p) => p,
            None => {
                if self.pinned.len() >= self.max_pinned {
                    return Err(format!(
                        "ERR max pinned connections reached (--max-pinned {}): \
                         too many clients are in a transaction or a blocking command",
                        self.max_pinned
                    ));
                }
                let entry = self.pinned.vacant_entry();
                let token = Token(FIRST_PINNED + entry.key());
                let mut backend =
                    Backend::new("pinned", self.redis.clone(), token, self.timeout, now);
                if backend.connect(&self.registry, now).is_err() {
                    return Err(self.unavailable_message());
                }
                self.login.queue(&mut backend, PinnedRequest::Login);
                backend.queue(PinnedRequest::SetName, |out| {
                    resp::command(
                        out,
                        &[&b"CLIENT"[..], b"SETNAME", tracking::PINNED_CONNECTION_NAME],
                    )
                });
                backend.queue(PinnedRequest::ClientId, |out| {
                    resp::command(out, &["CLIENT", "ID"])
                });
                let p = entry.key();
                entry.insert(Pinned::new(backend));
                p
            }
        };
        self.pinned[p].owner = Some(owner);
        self.switch_pinned_protocol(p, protocol);
        Ok(p)
    }

    /// Redis's id for the pinned connection on which client `id` is in a
    /// blocking call (or has anything in flight), if there is one.
    fn blocked_redis_id(&self, id: i64) -> Option<i64> {
        let id = u64::try_from(id).ok()?;
        self.pinned
            .iter()
            .find(|(_, p)| p.owner.is_some_and(|o| o.id == id) && p.backend.in_flight() > 0)
            .and_then(|(_, p)| p.redis_id)
    }

    /// A pooled connection still open: one that Redis closed while it
    /// sat idle (its `timeout`, a CLIENT KILL) shows it by being readable.
    fn pooled(&mut self, now: Instant) -> Option<usize> {
        while let Some(p) = self.pool.pop() {
            let backend = &mut self.pinned[p].backend;
            match backend.read() {
                Ok(false) if backend.is_ready() && !backend.has_input() => return Some(p),
                // Gone, or bytes nobody asked for: not to be trusted.
                _ => {
                    backend.turn_off(&self.registry, now);
                    self.pinned.remove(p);
                }
            }
        }
        None
    }

    /// Makes Redis speak `protocol` on pinned connection `p` from its next request on.
    fn switch_pinned_protocol(&mut self, p: usize, protocol: Protocol) {
        let pinned = &mut self.pinned[p];
        if pinned.protocol == protocol || !pinned.backend.accepts_requests() {
            return;
        }
        pinned.protocol = protocol;
        self.route(Route::Pinned(p));
        let pinned = &mut self.pinned[p];
        let version = match protocol {
            Protocol::Resp2 => "2",
            Protocol::Resp3 => "3",
        };
        pinned.backend.queue(PinnedRequest::Hello, |out| {
            resp::command(out, &["HELLO", version])
        });
        self.flush_pinned_later(p);
    }

    fn flush_pinned_later(&mut self, p: usize) {
        if let Some(pinned) = self.pinned.get_mut(p) {
            if !pinned.flush_queued {
                pinned.flush_queued = true;
                self.pinned_to_flush.push(p);
            }
        }
    }

    /// Connects the pub/sub connection on first need; false when it cannot take requests.
    fn open_pubsub(&mut self, now: Instant) -> bool {
        let pubsub = &mut self.pubsub;
        if pubsub.is_off() {
            if !self.data[0].accepts_requests() {
                return false;
            }
            pubsub.turn_on(now);
            if pubsub.connect(&self.registry, now).is_err() {
                pubsub.turn_off(&self.registry, now);
                return false;
            }
            self.login.queue(pubsub, PubsubRequest::Login);
            pubsub.queue(PubsubRequest::SetName, |out| {
                resp::command(
                    out,
                    &[&b"CLIENT"[..], b"SETNAME", tracking::PUBSUB_CONNECTION_NAME],
                )
            });
        }
        pubsub.accepts_requests()
    }

    /// Client `id` no longer listens to `name`: Redis stops delivering it
    /// to sidecache once nobody does. Returns whether an UNSUBSCRIBE was
    /// sent; `waiter` then gets its acknowledgement once Redis answers it.
    fn unsubscribe(&mut self, kind: Kind, name: &[u8], id: u64, waiter: Option<Waiter>) -> bool {
        if !self.channels.unsubscribe(kind, name, id) || !self.pubsub.accepts_requests() {
            return false;
        }
        let verb = kind.unsubscribe_name().as_bytes();
        let request = PubsubRequest::Unsubscribe(waiter.map(Box::new));
        self.route(Route::Pubsub);
        self.pubsub
            .queue(request, |out| resp::command(out, &[verb, name]));
        true
    }

    /// Opens the RESP3 data connection on first need, at once, so that
    /// requests can queue on it while it connects.
    fn open(&mut self, protocol: Protocol, now: Instant) {
        let data = &mut self.data[conn(protocol)];
        if data.is_off() {
            data.turn_on(now);
            if data.connect(&self.registry, now).is_ok() {
                data_handshake(data, protocol, &self.login);
                self.opened = Some(protocol);
            }
        }
    }
}

pub struct Server {
    poll: Poll,
    listener: Option<Listener>,
    local_addr: Address,
    signals: Signals,
    clients: Slab<Client>,
    proxy: Proxy,
    invalidation: Backend<InvalidationRequest>,
    tracking: Tracking,
    /// Per data connection: the GET reply of a fill, kept until its PTTL
    /// answers; `None` inside when the GET's reply was not a value.
    fill_reply: [Option<Box<[u8]>>; 2],
    next_client_id: u64,
    /// Clients with new output, written at the end of the turn.
    to_flush: Vec<usize>,
    /// Clients with input or readiness left over, resumed next turn.
    to_resume: Vec<usize>,
    /// Clients closed this turn, removed from the slab at its end.
    to_remove: Vec<usize>,
    /// Set once SIGINT or SIGTERM arrives: the time to give up waiting.
    shutdown_deadline: Option<Instant>,
    /// Failed connects since Redis last answered, to keep the log quiet while it is down.
    connect_failures: u32,
    /// Set when sidecache cannot go on (`--tracking on` and Redis cannot track).
    fatal: Option<anyhow::Error>,
    limits: ClientLimits,
    /// Every client read goes through this one buffer.
    scratch: Vec<u8>,
    /// While accepting fails for want of file descriptors: when to try again.
    accept_paused_until: Option<Instant>,
    /// When to look for idle clients next, if `--idle-timeout` is set.
    next_idle_check: Option<Instant>,
    /// When to hand freed memory back to the system next.
    next_trim: Instant,
    /// When sidecache started, for INFO's uptime.
    started: Instant,
    /// `--busy-poll`: how long to keep polling after an event.
    busy_poll: Duration,
}

/// The limits on each client, from the command line.
struct ClientLimits {
    max_clients: usize,
    max_output: usize,
    idle_timeout: Option<Duration>,
}

/// Bytes asked of the kernel per client read.
const READ_CHUNK: usize = 64 * 1024;

/// How often freed memory is handed back to the system.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// How long accepting pauses after running out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

const MAX_CLIENTS_REACHED: &[u8] = b"-ERR max number of clients reached\r\n";

impl Server {
    /// Binds the listener and sets up signals; connects to Redis once `run` starts.
    pub fn bind(config: &Config) -> anyhow::Result<Server> {
        let poll = Poll::new().context("creating the poll instance")?;
        let mut listener = Listener::bind(&config.listen, config.unix_mode)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_address()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let now = Instant::now();
        let timeout = config.timeout;
        let mut invalidation = Backend::new(
            "invalidation",
            config.redis.clone(),
            INVALIDATION,
            timeout,
            now,
        );
        if config.tracking == TrackingMode::Off || config.capacity == 0 {
            invalidation.turn_off(poll.registry(), now);
        }
        let mut data_resp3 = Backend::new(
            "data (RESP3)",
            config.redis.clone(),
            DATA_RESP3,
            timeout,
            now,
        );
        data_resp3.turn_off(poll.registry(), now);
        let mut pubsub = Backend::new("pub/sub", config.redis.clone(), PUBSUB, timeout, now);
        pubsub.turn_off(poll.registry(), now);
        let registry = poll.registry().try_clone()?;
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            clients: Slab::new(),
            proxy: Proxy {
                registry,
                data: [
                    Backend::new("data", config.redis.clone(), DATA_RESP2, timeout, now),
                    data_resp3,
                ],
                fills_allowed: [false; 2],
                cache: Cache::new(Limits {
                    capacity: config.capacity,
                    ttl: config.ttl,
                    max_memory: config.max_memory,
                    max_value_size: config.max_value_size,
                }),
                commands: None,
                redis_version: None,
                opened: None,
                pinned: Slab::new(),
                pool: Vec::new(),
                max_pinned: config.max_pinned,
                pinned_to_flush: Vec::new(),
                pubsub,
                channels: Channels::default(),
                redis: config.redis.clone(),
                timeout,
                last_route: None,
                coalesced: [HashMap::new(), HashMap::new()],
                requirepass: config
                    .requirepass
                    .as_deref()
                    .map(|p| Box::from(p.as_bytes())),
                login: Login {
                    auth: config
                        .redis_auth
                        .as_ref()
                        .map(|a| (a.user.clone(), a.password.clone())),
                    db: config.redis_db,
                },
                login_error: None,
                counters: stats::Counters::default(),
                cache_max_memory: config.max_memory,
            },
            invalidation,
            tracking: Tracking {
                mode: config.tracking,
                supported: None,
                client_id: None,
                subscribed: false,
                on: [false; 2],
                ping_sent_at: None,
                next_ping_at: None,
            },
            fill_reply: [None, None],
            next_client_id: 1,
            to_flush: Vec::new(),
            to_resume: Vec::new(),
            to_remove: Vec::new(),
            shutdown_deadline: None,
            connect_failures: 0,
            fatal: None,
            limits: ClientLimits {
                max_clients: config.max_clients,
                max_output: config.max_output,
                idle_timeout: config.idle_timeout,
            },
            scratch: vec![0; READ_CHUNK],
            accept_paused_until: None,
            next_idle_check: config
                .idle_timeout
                .map(|idle| now + idle_check_interval(idle)),
            next_trim: now + TRIM_INTERVAL,
            started: now,
            busy_poll: config.busy_poll,
        })
    }

    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// Redis closed (or broke) the connection behind `token`: its reads go
    /// on to the end of input.
    fn note_peer_closing(&mut self, token: Token) {
        let backend_closing = match token {
            DATA_RESP2 => &mut self.proxy.data[0].peer_closing,
            DATA_RESP3 => &mut self.proxy.data[1].peer_closing,
            INVALIDATION => &mut self.invalidation.peer_closing,
            PUBSUB => &mut self.proxy.pubsub.peer_closing,
            Token(t) if t >= FIRST_PINNED => match self.proxy.pinned.get_mut(t - FIRST_PINNED) {
                Some(pinned) => &mut pinned.backend.peer_closing,
                None => return,
            },
            _ => return,
        };
        *backend_closing = true;
    }

    /// Serves until a shutdown signal, then until owed replies are sent.
    pub fn run(mut self) -> anyhow::Result<()> {
        log!(
            "sidecache {} listening on {}, backing Redis at {}",
            env!("CARGO_PKG_VERSION"),
            self.local_addr,
            self.proxy.data[0].addr()
        );
        let mut events = Events::with_capacity(1024);
        // Busy polling: a peer that writes to a sleeping process pays for
        // waking it (an interrupt to another CPU, in a VM an exit to the
        // host), which at one request per round trip costs the client
        // more than the request itself. Polling on for `--busy-poll` after
        // the last event keeps sidecache awake while traffic flows and
        // asleep when it stops. Not while Redis owes a data reply: Redis
        // may share this CPU, and the reply's wake-up is needed anyway.
        let mut keep_polling_until = None;
        loop {
            let now = Instant::now();
            let timeout = match keep_polling_until {
                Some(until) if now < until && !self.redis_owes_data_replies() => {
                    Some(Duration::ZERO)
                }
                _ => self.poll_timeout(now),
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling for events"),
            }
            if !self.busy_poll.is_zero() && !events.is_empty() {
                keep_polling_until = Some(Instant::now() + self.busy_poll);
            }
            for event in events.iter() {
                if event.is_read_closed() || event.is_error() {
                    self.note_peer_closing(event.token());
                }
            }
            // Invalidations first: one that arrived before a client's GET
            // must be applied before that GET is answered from the cache.
            if events.iter().any(|e| e.token() == INVALIDATION) {
                self.invalidation_ready();
            }
            // Then pub/sub messages: Redis queued one for a subscriber
            // before it answered the PUBLISH, and a reply to the
            // subscriber's next command must not overtake it.
            if let Some(e) = events.iter().find(|e| e.token() == PUBSUB) {
                self.pubsub_ready(e.is_readable(), e.is_writable());
            }
            // Then Redis's replies, before the clients' new requests: what
            // Redis answered before a request arrived is known when it runs
            // (a pinned connection's id for CLIENT UNBLOCK, say).
            for event in events.iter() {
                let (readable, writable) = (event.is_readable(), event.is_writable());
                match event.token() {
                    DATA_RESP2 => self.data_ready(Protocol::Resp2, readable, writable),
                    DATA_RESP3 => self.data_ready(Protocol::Resp3, readable, writable),
                    Token(token) if token >= FIRST_PINNED => {
                        self.pinned_ready(token - FIRST_PINNED, readable, writable)
                    }
                    _ => {}
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => self.signalled(),
                    DATA_RESP2 | DATA_RESP3 | INVALIDATION | PUBSUB => {}
                    Token(token) if token >= FIRST_PINNED => {}
                    Token(token) => self.client_ready(
                        token - FIRST_CLIENT,
                        event.is_readable() || event.is_read_closed(),
                        event.is_writable(),
                        event.is_read_closed() || event.is_error(),
                    ),
                }
            }
            self.run_timers(Instant::now());
            for key in std::mem::take(&mut self.to_resume) {
                self.pump(key);
            }
            // Subscription changes first: Redis then applies them before a
            // PUBLISH that arrived in the same turn, as it would had the
            // clients been its own.
            self.flush_pubsub();
            self.flush_data();
            self.flush_invalidation();
            self.flush_pinned();
            self.proxy.last_route = None;
            self.flush_clients();
            for key in self.to_remove.drain(..) {
                self.clients.remove(key);
            }
            if let Some(error) = self.fatal.take() {
                return Err(error);
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.clients.is_empty() {
                    log!("all replies sent; exiting");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    log!(
                        "exiting with {} client(s) still owed replies after {:?}",
                        self.clients.len(),
                        SHUTDOWN_GRACE
                    );
                    return Ok(());
                }
            }
        }
    }

    fn redis_owes_data_replies(&self) -> bool {
        self.proxy.data.iter().any(|data| data.in_flight() > 0)
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.to_resume.is_empty() {
            return Some(Duration::ZERO);
        }
        let keepalive = match self.tracking.ping_sent_at {
            Some(sent) => Some(sent + KEEPALIVE_TIMEOUT),
            None => self.tracking.next_ping_at,
        };
        let deadlines = [
            self.proxy.data[0].next_deadline(),
            self.proxy.data[1].next_deadline(),
            self.invalidation.next_deadline(),
            self.proxy.pubsub.next_deadline(),
            self.proxy
                .pinned
                .iter()
                .filter_map(|(_, p)| p.backend.next_deadline())
                .min(),
            keepalive,
            self.shutdown_deadline,
            self.accept_paused_until,
            self.next_idle_check,
            Some(self.next_trim),
        ];
        deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    // ---- clients -------------------------------------------------------

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return; // the timer resumes accepting
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the
                    // clients we have and try again shortly. The listener
                    // would not signal again for connections already waiting.
                    log_warn!(
                        "cannot accept a client: {e}; trying again in {:?}",
                        ACCEPT_PAUSE
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            };
            self.proxy.counters.connections_received += 1;
            if self.clients.len() >= self.limits.max_clients {
                self.proxy.counters.rejected_connections += 1;
                // Best effort, as Redis does: the socket is new, so the
                // short error fits in its send buffer.
                let _ = std::io::Write::write(&mut stream, MAX_CLIENTS_REACHED);
                continue;
            }
            stream.set_nodelay();
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(FIRST_CLIENT + key),
                // Writability only while replies wait for room: see Client::flush.
                Interest::READABLE,
            ) {
                log_warn!("cannot register a client: {e}");
                continue;
            }
            let id = self.next_client_id;
            self.next_client_id += 1;
            let mut client = Client::new(stream, id);
            client.authenticated = self.proxy.requirepass.is_none();
            log_debug!("client {id} connected from {peer}");
            entry.insert(client);
        }
    }

    fn client_ready(&mut self, key: usize, readable: bool, writable: bool, closing: bool) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.phase == Phase::Closed {
            return;
        }
        if readable {
            client.readable = true;
        }
        if closing {
            client.peer_closing = true;
        }
        if writable {
            self.queue_flush(key);
        }
        if readable {
            self.pump(key);
        }
    }

    /// Handles buffered requests and reads more while the client is within
    /// its limits, for a bounded number of reads.
    fn pump(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            self.handle_requests(key);
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            // A client at a limit is resumed when its replies drain.
            if !client.can_take_more() || !client.readable {
                return;
            }
            match client.read(&mut self.scratch) {
                ReadOutcome::Data | ReadOutcome::Drained => {}
                ReadOutcome::Eof => {
                    // The client may half-close after its last request and
                    // still read the replies: answer what arrived, then close.
                    self.handle_requests(key);
                    // But a blocking call may never end: Redis frees a
                    // client whose input ended, and so does sidecache, so
                    // the call does not take a value nobody will read.
                    if self.is_blocked(key) {
                        self.close(key);
                        return;
                    }
                    let client = &mut self.clients[key];
                    client.readable = false;
                    if client.phase == Phase::Open {
                        client.phase = Phase::Draining;
                    }
                    self.close_if_done(key);
                    return;
                }
                ReadOutcome::Failed(_) => {
                    self.close(key);
                    return;
                }
            }
        }
        self.to_resume.push(key);
    }

    /// Parses and acts on every complete request in the client's input.
    fn handle_requests(&mut self, key: usize) {
        let now = Instant::now();
        // A subscriber's messages already sent by Redis go out before the
        // replies to what it asks now, as they would from Redis itself.
        if self.clients.get(key).is_some_and(|c| c.subscriptions.any())
            && self.proxy.pubsub.is_ready()
        {
            self.read_pubsub(now);
        }
        let mut replied = false;
        loop {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            if !client.can_take_more() {
                break;
            }
            match client.input.next_request() {
                Ok(Some(request)) => {
                    client.last_activity = now;
                    self.proxy.counters.commands_processed += 1;
                    if request.argc() > 0 {
                        match execute(client, key, &request, &mut self.proxy, now) {
                            Executed::Done => replied = true,
                            // Parsed again once the client's owed replies are in.
                            Executed::Wait => break,
                            Executed::Info { sections, silent } => {
                                let text = self.info_text(&sections, now);
                                let client = &mut self.clients[key];
                                client.replies.silent = silent;
                                let mut out = Vec::new();
                                resp::bulk(&mut out, text.as_bytes());
                                client.replies.push(&out);
                                client.replies.silent = false;
                                replied = true;
                            }
                        }
                    }
                    self.clients[key].input.consume(request.consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    // As Redis does: say why, then close once it is sent.
                    let mut out = Vec::new();
                    resp::error(&mut out, &format!("ERR {e}"));
                    client.replies.push(&out);
                    client.phase = Phase::Draining;
                    self.proxy.counters.protocol_errors += 1;
                    replied = true;
                    break;
                }
            }
        }
        if let Some(protocol) = self.proxy.opened.take() {
            self.enable_tracking_on(protocol);
        }
        if replied {
            self.queue_flush(key);
        }
    }

    /// INFO's text: sidecache's counters and state, in Redis's format.
    fn info_text(&self, sections: &[Box<[u8]>], now: Instant) -> String {
        let data = &self.proxy.data[0];
        let backend_state = if data.is_ready() {
            "up"
        } else if data.is_connecting() {
            "connecting"
        } else if data.is_off() {
            "off"
        } else {
            "down"
        };
        let tracking = if !self.tracking.wanted() {
            "off"
        } else if self.tracking.on.contains(&true) {
            "on"
        } else {
            "setting up"
        };
        let clients = self.clients.iter().map(|(_, c)| c);
        let snapshot = stats::Snapshot {
            counters: self.proxy.counters.clone(),
            sidecache_version: env!("CARGO_PKG_VERSION"),
            redis_version: self.proxy.redis_version.clone(),
            process_id: std::process::id(),
            listen: self.local_addr.to_string(),
            tcp_port: match &self.local_addr {
                Address::Tcp(addr) => addr.port(),
                Address::Unix(_) => 0,
            },
            uptime_seconds: now.saturating_duration_since(self.started).as_secs(),
            connected_clients: self.clients.len(),
            blocked_clients: self
                .proxy
                .pinned
                .iter()
                .filter(|(_, p)| p.owner.is_some() && p.backend.has_untimed())
                .count(),
            clients_waiting_on_backpressure: clients
                .clone()
                .filter(|c| c.phase == Phase::Open && c.is_paused_at_a_limit())
                .count(),
            pubsub_clients: clients.filter(|c| c.subscriptions.any()).count(),
            max_clients: self.limits.max_clients,
            cache_bytes: self.proxy.cache.memory(),
            cache_entries: self.proxy.cache.len(),
            max_memory: self.proxy.cache_max_memory,
            rss_bytes: resident_set_size(),
            evicted_keys: self.proxy.cache.evicted,
            expired_keys: self.proxy.cache.expired,
            backend_address: self.proxy.data[0].addr().to_string(),
            backend_state,
            tracking,
            cache_serving: self.proxy.cache.is_serving(),
            requests_in_flight: self.proxy.data.iter().map(Backend::in_flight).sum(),
            pinned_connections: self.proxy.pinned.len(),
        };
        let sections: Vec<&[u8]> = sections.iter().map(|s| &s[..]).collect();
        stats::info(&snapshot, &sections)
    }

    /// Marks the client as having output to write at the end of the turn.
    /// Every new reply comes through here, so this is where a client that
    /// does not read is stopped before its replies pile up without bound.
    fn queue_flush(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if client.replies.held() > self.limits.max_output {
                log_warn!(
                    "closing client {} holding {} bytes of unread replies (over --max-output)",
                    client.id,
                    client.replies.held()
                );
                self.close(key);
                return;
            }
            if !client.flush_queued {
                client.flush_queued = true;
                self.to_flush.push(key);
            }
        }
    }

    fn flush_clients(&mut self) {
        for key in std::mem::take(&mut self.to_flush) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.flush_queued = false;
            if client.phase == Phase::Closed {
                continue;
            }
            let token = Token(FIRST_CLIENT + key);
            if client.flush(self.poll.registry(), token).is_err() {
                self.close(key);
                continue;
            }
            if client.replies.owed() == 0 && client.replies.unsent() == 0 {
                client.last_activity = Instant::now();
            }
            // A client paused at a limit (or with requests still buffered)
            // carries on now that replies have gone out.
            if client.can_take_more() && (client.readable || !client.input.pending().is_empty()) {
                self.to_resume.push(key);
            }
            self.close_if_done(key);
        }
    }

    /// Whether the client waits on a blocking call on its pinned connection.
    fn is_blocked(&self, key: usize) -> bool {
        let pinned = self.clients.get(key).and_then(|c| c.pinned);
        pinned
            .and_then(|p| self.proxy.pinned.get(p))
            .is_some_and(|p| p.backend.has_untimed())
    }

    fn close_if_done(&mut self, key: usize) {
        if self.clients.get(key).is_some_and(Client::is_done) {
            self.close(key);
        }
    }

    /// Deregisters the client now; it leaves the slab at the end of the turn.
    fn close(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.phase == Phase::Closed {
            return;
        }
        client.phase = Phase::Closed;
        log_debug!("client {} closed", client.id);
        let _ = self.poll.registry().deregister(&mut client.stream);
        self.to_remove.push(key);
        let id = client.id;
        let pinned = client.pinned.take();
        for (kind, name) in client.subscriptions.take_all() {
            self.proxy.unsubscribe(kind, &name, id, None);
        }
        if let Some(p) = pinned {
            // A connection left mid-transaction or mid-call is closed, so
            // Redis drops its state and unblocks it: a value it would have
            // popped stays where it was.
            self.unpin(p);
        }
    }

    // ---- the data connections ------------------------------------------

    fn data_ready(&mut self, protocol: Protocol, readable: bool, writable: bool) {
        let now = Instant::now();
        let data = &mut self.proxy.data[conn(protocol)];
        if data.is_connecting() {
            match data.poll_connect() {
                Ok(Progress::Connected) => {
                    log!("connected to Redis at {} ({})", data.addr(), data.role);
                    self.connect_failures = 0;
                }
                Ok(Progress::Unchanged) => return,
                Err(e) => {
                    self.data_lost(protocol, &format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        if writable {
            self.flush_data();
        }
        if readable {
            self.read_data(protocol, now);
        }
    }

    /// Asks Redis to track the reads of every data connection that can
    /// take requests, redirected to the invalidation connection, once that
    /// is subscribed.
    fn enable_tracking(&mut self) {
        for protocol in PROTOCOLS {
            self.enable_tracking_on(protocol);
        }
    }

    fn enable_tracking_on(&mut self, protocol: Protocol) {
        let (Some(redirect), true) = (self.tracking.client_id, self.tracking.subscribed) else {
            return;
        };
        let data = &mut self.proxy.data[conn(protocol)];
        if !self.tracking.wanted() || !data.accepts_requests() {
            return;
        }
        let id = redirect.to_string();
        data.queue(DataRequest::TrackingOn { redirect }, |out| {
            resp::command(out, &["CLIENT", "TRACKING", "ON", "REDIRECT", &id])
        });
    }

    fn read_data(&mut self, protocol: Protocol, now: Instant) {
        let c = conn(protocol);
        self.drain(Link::Data(protocol), now, |server, len| {
            let data = &mut server.proxy.data[c];
            // RESP3 push frames are not replies: nothing waits for them.
            if data.reply(len).first() == Some(&b'>') {
                let push = resp::parse_value(data.reply(len));
                data.consume(len);
                server.data_push(protocol, push, now);
                return Ok(());
            }
            let request = data.pop_in_flight().map_err(|d| d.to_string())?;
            server.data_reply(protocol, request, len, now);
            server.proxy.data[c].consume(len);
            Ok(())
        });
    }

    /// Reads what Redis sent on `link` and hands each complete frame's
    /// length to `on_frame`, which consumes it, until the input runs dry or
    /// the connection stops serving. `Err` from `on_frame` loses the
    /// connection with that reason, as a read error or a desync does.
    fn drain(
        &mut self,
        link: Link,
        now: Instant,
        mut on_frame: impl FnMut(&mut Self, usize) -> Result<(), String>,
    ) {
        loop {
            let Some(framed) = self.framed(link) else {
                return;
            };
            let more = match framed.read() {
                Ok(more) => more,
                Err(e) => return self.link_lost(link, &e.to_string(), now),
            };
            loop {
                let Some(framed) = self.framed(link) else {
                    return;
                };
                let len = match framed.next_frame() {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(desync) => return self.link_lost(link, &desync.to_string(), now),
                };
                if let Err(why) = on_frame(self, len) {
                    return self.link_lost(link, &why, now);
                }
                if self.fatal.is_some() || !self.framed(link).is_some_and(|f| f.is_ready()) {
                    return;
                }
            }
            if !more {
                return;
            }
        }
    }

    /// The connection behind `link`; `None` once a pinned one is gone.
    fn framed(&mut self, link: Link) -> Option<&mut dyn Framed> {
        match link {
            Link::Data(protocol) => Some(&mut self.proxy.data[conn(protocol)]),
            Link::Invalidation => Some(&mut self.invalidation),
            Link::PubSub => Some(&mut self.proxy.pubsub),
            Link::Pinned(p) => match self.proxy.pinned.get_mut(p) {
                Some(pinned) => Some(&mut pinned.backend),
                None => None,
            },
        }
    }

    fn link_lost(&mut self, link: Link, why: &str, now: Instant) {
        match link {
            Link::Data(protocol) => self.data_lost(protocol, why, now),
            Link::Invalidation => self.invalidation_lost(why, now),
            Link::PubSub => self.pubsub_lost(why, now),
            Link::Pinned(p) => self.pinned_lost(p, why, now),
        }
    }

    /// A push on a RESP3 data connection. With tracking redirected, the one
    /// Redis sends is `tracking-redir-broken <id>`: the invalidation
    /// connection `<id>` is gone, so invalidations may have been lost. Redis
    /// repeats it for every write while the redirect stays broken, so it
    /// counts only when it names the invalidation connection in use.
    fn data_push(
        &mut self,
        protocol: Protocol,
        push: Result<Value, resp::FrameError>,
        now: Instant,
    ) {
        let Ok(push) = push else {
            self.data_lost(protocol, "malformed push from Redis", now);
            return;
        };
        if let Some([kind, id]) = push.as_array() {
            if kind.as_bytes() == Some(b"tracking-redir-broken")
                && id.as_integer().is_some()
                && id.as_integer() == self.tracking.client_id
            {
                self.invalidation_lost("Redis reports the tracking redirect broken", now);
            }
        }
    }

    /// Acts on the reply of `len` bytes at the front of a data connection's input.
    fn data_reply(&mut self, protocol: Protocol, request: DataRequest, len: usize, now: Instant) {
        let c = conn(protocol);
        let reply = self.proxy.data[c].reply(len);
        match request {
            DataRequest::Client {
                key,
                id,
                seq,
                fills,
                rewrites,
                publish,
            } => {
                if fills {
                    self.fill_reply[c] = Some(Box::from(reply));
                }
                if let Some(rewrites) = rewrites {
                    rewrites.apply(&mut self.proxy.cache);
                }
                let mut reply = self.proxy.data[c].reply(len);
                let mut counted = Vec::new();
                if let Some((kind, channel)) = publish.as_deref() {
                    let receivers = resp::parse_value(reply).ok().and_then(|v| v.as_integer());
                    if let Some(n) = receivers {
                        let (ours, clients) = self.proxy.channels.receivers(*kind, channel);
                        let n = (n as usize).saturating_sub(ours) + clients;
                        resp::integer(&mut counted, n as i64);
                        if ours > 0 && self.proxy.pubsub.is_ready() {
                            // Redis queued the messages for sidecache before
                            // it answered, but may write them after.
                            let waiter = Waiter {
                                key,
                                id,
                                seq,
                                ack: counted,
                            };
                            self.proxy.route(Route::Pubsub);
                            self.proxy
                                .pubsub
                                .queue(PubsubRequest::Barrier(Box::new(waiter)), |out| {
                                    resp::command(out, &["PING"])
                                });
                            return;
                        }
                        reply = &counted;
                    }
                }
                // Its client may have gone; the slot may have a new tenant.
                let Some(client) = live_client(&mut self.clients, key, id) else {
                    return;
                };
                client.replies.fill(seq, reply);
                self.queue_flush(key);
            }
            DataRequest::Fill {
                key,
                ticket,
                sent_at,
            } => {
                let get_reply = self.fill_reply[c].take();
                let value = get_reply.as_deref().and_then(cacheable_value);
                let pttl = resp::parse_value(reply).ok().and_then(|v| v.as_integer());
                let (value, expires_at) = fill_expiry(value.as_deref(), pttl, sent_at);
                self.proxy
                    .cache
                    .complete_fill(&key, ticket, value, expires_at, now);
                // The GETs that joined get the reply now, after the cache
                // was filled, so a GET arriving meanwhile joined rather than
                // asking Redis again.
                let waiters = self.take_coalesced(c, &key, ticket);
                let get_reply = get_reply.as_deref().unwrap_or(BACKEND_UNAVAILABLE);
                for (key, id, seq) in waiters {
                    self.fill_slot(key, id, seq, get_reply);
                }
            }
            DataRequest::Login(step) => {
                if let Some(error) = reply.strip_prefix(b"-") {
                    let why = login_refused(step, error);
                    self.proxy.login_error = Some(why.clone());
                    self.data_lost(protocol, &why, now);
                }
            }
            DataRequest::Hello => {
                if reply.first() == Some(&b'-') {
                    let error = String::from_utf8_lossy(reply).trim_end().to_string();
                    self.data_lost(protocol, &format!("Redis refused HELLO 3: {error}"), now);
                }
            }
            DataRequest::SetName => {}
            DataRequest::ServerInfo => {
                self.proxy.redis_version = info_field(reply, b"redis_version:").map(str::to_string);
                if reply.first() == Some(&b'-') {
                    log_warn!(
                        "Redis refused sidecache's handshake: {}",
                        String::from_utf8_lossy(reply).trim_end()
                    );
                } else {
                    self.proxy.data[c].reset_backoff();
                    self.proxy.login_error = None;
                }
            }
            DataRequest::CommandTable => {
                let table = resp::parse_value(reply)
                    .map_err(|e| e.to_string())
                    .and_then(|value| CommandTable::from_command_reply(&value));
                match table {
                    Ok(table) => self.proxy.commands = Some(table),
                    Err(e) => {
                        log_warn!("cannot read Redis's command table, so nothing is cached: {e}")
                    }
                }
                self.update_serving();
            }
            DataRequest::TrackingOn { redirect } => match resp::parse_value(reply) {
                Ok(Value::Simple(_)) => {
                    if self.tracking.client_id == Some(redirect) && self.tracking.subscribed {
                        self.tracking.on[c] = true;
                        self.tracking.supported = Some(true);
                        self.update_serving();
                    }
                }
                Ok(Value::Error(e)) => self.tracking_refused(&e, now),
                _ => self.data_lost(protocol, "unexpected reply to CLIENT TRACKING", now),
            },
        }
    }

    fn flush_data(&mut self) {
        for protocol in PROTOCOLS {
            let data = &mut self.proxy.data[conn(protocol)];
            if !data.has_output() {
                continue;
            }
            if let Err(e) = data.flush(self.poll.registry()) {
                self.data_lost(protocol, &e.to_string(), Instant::now());
            }
        }
    }

    /// One rule for every way a data connection ends: fail each request in
    /// flight, in order; forget the cache (Redis forgets what this
    /// connection read, so no invalidation would come for it); retry later.
    fn data_lost(&mut self, protocol: Protocol, why: &str, now: Instant) {
        let c = conn(protocol);
        let data = &mut self.proxy.data[c];
        let was_ready = data.is_ready();
        let failed = data.lose(self.poll.registry(), now);
        self.tracking.on[c] = false;
        self.fill_reply[c] = None;
        self.proxy.cache.clear();
        self.update_serving();
        if was_ready {
            self.proxy.counters.backend_reconnects += 1;
            log_warn!(
                "lost the connection to Redis ({}): {why}",
                self.proxy.data[c].role
            );
            self.connect_failures = 0;
        } else {
            self.log_connect_failure(why);
        }
        let unavailable = self.proxy.unavailable();
        for request in failed {
            if let DataRequest::Client { key, id, seq, .. } = request {
                self.fill_slot(key, id, seq, &unavailable);
            }
        }
        let coalesced = std::mem::take(&mut self.proxy.coalesced[c]);
        for waiter in coalesced.into_values().flatten().flat_map(|co| co.waiters) {
            let (key, id, seq) = waiter;
            self.fill_slot(key, id, seq, &unavailable);
        }
    }

    /// The GETs that joined the GET miss of `key` sent with `ticket`.
    fn take_coalesced(
        &mut self,
        c: usize,
        key: &[u8],
        ticket: FillTicket,
    ) -> Vec<(usize, u64, u64)> {
        let Some(pending) = self.proxy.coalesced[c].get_mut(key) else {
            return Vec::new();
        };
        let waiters = match pending.iter().position(|co| co.ticket == ticket) {
            Some(i) => pending.remove(i).waiters,
            None => Vec::new(),
        };
        if pending.is_empty() {
            let coalesced = &mut self.proxy.coalesced[c];
            coalesced.remove(key);
            // After a burst of misses, give the table's memory back.
            if coalesced.is_empty() && coalesced.capacity() > 1024 {
                *coalesced = HashMap::new();
            }
        }
        waiters
    }

    /// Logs the first failure in a row, then one in 30 (about one a minute at the backoff cap).
    fn log_connect_failure(&mut self, why: &str) {
        if self.connect_failures % 30 == 0 {
            log_warn!(
                "Redis at {} is unreachable ({} attempt(s)): {why}",
                self.proxy.data[0].addr(),
                self.connect_failures + 1
            );
        }
        self.connect_failures += 1;
    }

    // ---- the invalidation connection -----------------------------------

    fn invalidation_ready(&mut self) {
        let now = Instant::now();
        if self.invalidation.is_connecting() {
            match self.invalidation.poll_connect() {
                Ok(Progress::Connected) => {}
                Ok(Progress::Unchanged) => return,
                Err(e) => {
                    self.invalidation_lost(&format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        self.flush_invalidation();
        self.drain(Link::Invalidation, now, |server, len| {
            let frame = resp::parse_value(server.invalidation.reply(len));
            server.invalidation.consume(len);
            match frame.map(tracking::classify).map_err(|e| e.to_string())? {
                Incoming::Invalidate(keys) => {
                    server.proxy.counters.invalidations += keys.len() as u64;
                    for key in keys {
                        server.proxy.cache.invalidate(&key);
                    }
                }
                Incoming::InvalidateAll => {
                    server.proxy.counters.invalidations += 1;
                    server.proxy.cache.clear();
                }
                Incoming::Reply(reply) => {
                    let request = server.invalidation.pop_in_flight();
                    let request = request.map_err(|d| d.to_string())?;
                    server.invalidation_reply(request, reply, now);
                }
            }
            Ok(())
        });
    }

    /// Queues what every new invalidation connection starts with: its name,
    /// its id (the target of the data connection's redirect), and the
    /// subscription to the invalidation channel.
    fn invalidation_handshake(&mut self) {
        let conn = &mut self.invalidation;
        self.proxy.login.queue(conn, InvalidationRequest::Login);
        conn.queue(InvalidationRequest::SetName, |out| {
            resp::command(
                out,
                &[
                    &b"CLIENT"[..],
                    b"SETNAME",
                    tracking::INVALIDATION_CONNECTION_NAME,
                ],
            )
        });
        conn.queue(InvalidationRequest::ClientId, |out| {
            resp::command(out, &["CLIENT", "ID"])
        });
        conn.queue(InvalidationRequest::Subscribe, |out| {
            resp::command(out, &[&b"SUBSCRIBE"[..], tracking::CHANNEL])
        });
    }

    fn invalidation_reply(&mut self, request: InvalidationRequest, reply: Value, now: Instant) {
        if let Value::Error(e) = &reply {
            match request {
                InvalidationRequest::SetName => {}
                InvalidationRequest::Login(step) => {
                    self.invalidation_lost(&login_refused(step, e), now);
                }
                _ => self.tracking_refused(e, now),
            }
            return;
        }
        match request {
            InvalidationRequest::SetName | InvalidationRequest::Login(_) => {}
            InvalidationRequest::ClientId => self.tracking.client_id = reply.as_integer(),
            InvalidationRequest::Subscribe => {
                self.tracking.subscribed = true;
                self.tracking.next_ping_at = Some(now + KEEPALIVE_INTERVAL);
                self.invalidation.reset_backoff();
                self.enable_tracking();
            }
            InvalidationRequest::Ping => {
                self.tracking.ping_sent_at = None;
                self.tracking.next_ping_at = Some(now + KEEPALIVE_INTERVAL);
            }
        }
    }

    /// Redis answered a tracking request with an error: it cannot track at
    /// all, or this attempt failed (say the invalidation connection died
    /// in between), in which case both are set up afresh.
    fn tracking_refused(&mut self, error: &[u8], now: Instant) {
        let error = String::from_utf8_lossy(error).into_owned();
        if !tracking::means_unsupported(error.as_bytes()) {
            self.invalidation_lost(&format!("Redis refused tracking: {error}"), now);
            return;
        }
        self.tracking.supported = Some(false);
        if self.tracking.mode == TrackingMode::On {
            self.fatal = Some(anyhow!(
                "--tracking on, but Redis at {} cannot track keys ({error}); \
                 use --tracking auto or off to cache by TTL only",
                self.proxy.data[0].addr()
            ));
            return;
        }
        log_warn!(
            "Redis cannot track keys ({error}); caching with TTL only: \
             a GET may return a value up to --ttl old after another client changes it"
        );
        self.invalidation.turn_off(self.poll.registry(), now);
        self.reset_tracking();
        self.update_serving();
    }

    fn flush_invalidation(&mut self) {
        if !self.invalidation.has_output() {
            return;
        }
        if let Err(e) = self.invalidation.flush(self.poll.registry()) {
            self.invalidation_lost(&e.to_string(), Instant::now());
        }
    }

    /// The invalidation connection ended: invalidations may have been
    /// lost, so the cache is emptied and serves nothing until tracking is
    /// set up again on a new connection.
    fn invalidation_lost(&mut self, why: &str, now: Instant) {
        if self.invalidation.is_ready() {
            self.proxy.counters.backend_reconnects += 1;
            log_warn!(
                "lost the invalidation connection to Redis: {why}; cache emptied until it is back"
            );
        }
        // Losing a connection that is already down would only push its
        // next attempt further out.
        if self.invalidation.is_ready() || self.invalidation.is_connecting() {
            self.invalidation.lose(self.poll.registry(), now);
        }
        self.reset_tracking();
        self.update_serving();
    }

    fn reset_tracking(&mut self) {
        self.tracking.client_id = None;
        self.tracking.subscribed = false;
        self.tracking.on = [false; 2];
        self.tracking.ping_sent_at = None;
        self.tracking.next_ping_at = None;
    }

    /// Serves from the cache exactly while it can be kept coherent.
    fn update_serving(&mut self) {
        let tracking_needed = self.tracking.wanted();
        for c in 0..2 {
            self.proxy.fills_allowed[c] =
                self.proxy.data[c].is_ready() && (!tracking_needed || self.tracking.on[c]);
        }
        let serving = self.proxy.commands.is_some()
            && (!tracking_needed || self.tracking.subscribed)
            && self.proxy.fills_allowed.contains(&true);
        let cache = &mut self.proxy.cache;
        if serving != cache.is_serving() && cache.is_enabled() {
            if serving {
                let how = if tracking_needed {
                    "kept coherent by client tracking"
                } else {
                    "entries live up to --ttl"
                };
                log!("serving GETs from the cache ({how})");
            } else {
                log!("cache emptied; GETs go to Redis until the cache can be kept coherent again");
            }
        }
        cache.set_serving(serving);
    }

    // ---- pinned connections ---------------------------------------------

    fn pinned_ready(&mut self, p: usize, readable: bool, writable: bool) {
        let now = Instant::now();
        let Some(pinned) = self.proxy.pinned.get_mut(p) else {
            return;
        };
        if pinned.backend.is_connecting() {
            match pinned.backend.poll_connect() {
                Ok(Progress::Connected) => {}
                Ok(Progress::Unchanged) => return,
                Err(e) => {
                    self.pinned_lost(p, &format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        if writable {
            if let Err(e) = self.proxy.pinned[p].backend.flush(self.poll.registry()) {
                self.pinned_lost(p, &e.to_string(), now);
                return;
            }
        }
        if readable {
            self.read_pinned(p, now);
        }
    }

    fn read_pinned(&mut self, p: usize, now: Instant) {
        self.drain(Link::Pinned(p), now, |server, len| {
            let backend = &mut server.proxy.pinned[p].backend;
            if backend.reply(len).first() == Some(&b'>') {
                // Not a reply; nothing on a pinned connection asks for pushes.
                backend.consume(len);
                return Ok(());
            }
            let request = backend.pop_in_flight().map_err(|d| d.to_string())?;
            server.pinned_reply(p, request, len, now);
            Ok(())
        });
    }

    /// Acts on the reply of `len` bytes at the front of pinned connection
    /// `p`'s input, then lets the connection go if its client is done with it.
    fn pinned_reply(&mut self, p: usize, request: PinnedRequest, len: usize, now: Instant) {
        let pinned = &mut self.proxy.pinned[p];
        let owner = pinned.owner;
        match request {
            PinnedRequest::Client {
                seq,
                rewrites,
                aborts,
            } => {
                if let Some(rewrites) = rewrites {
                    rewrites.apply(&mut self.proxy.cache);
                }
                let mut abort_reply = Vec::new();
                if aborts {
                    resp::error(&mut abort_reply, EXECABORT);
                }
                let reply = match aborts {
                    true => &abort_reply[..],
                    false => self.proxy.pinned[p].backend.reply(len),
                };
                if let Some(owner) = owner {
                    if let Some(client) = live_client(&mut self.clients, owner.key, owner.id) {
                        client.replies.fill(seq, reply);
                        self.queue_flush(owner.key);
                    }
                }
            }
            PinnedRequest::Hello => {
                if pinned.backend.reply(len).first() == Some(&b'-') {
                    self.pinned_lost(p, "Redis refused HELLO", now);
                    return;
                }
            }
            PinnedRequest::SetName => {}
            PinnedRequest::Login(step) => {
                if let Some(error) = pinned.backend.reply(len).strip_prefix(b"-") {
                    let why = login_refused(step, error);
                    self.proxy.login_error = Some(why.clone());
                    self.pinned_lost(p, &why, now);
                    return;
                }
            }
            PinnedRequest::ClientId => {
                let id = resp::parse_value(pinned.backend.reply(len));
                pinned.redis_id = id.ok().and_then(|v| v.as_integer());
            }
        }
        let pinned = &mut self.proxy.pinned[p];
        pinned.backend.consume(len);
        if pinned.is_done() && pinned.owner.is_some() {
            self.release(p);
        }
    }

    /// The client's state on its pinned connection has ended: its next
    /// requests go to the shared connection again.
    fn release(&mut self, p: usize) {
        let Some(owner) = self.proxy.pinned[p].owner.take() else {
            return;
        };
        if let Some(client) = self.clients.get_mut(owner.key) {
            if client.id == owner.id {
                client.pinned = None;
            }
        }
        self.park(p);
    }

    /// The client of pinned connection `p` left.
    fn unpin(&mut self, p: usize) {
        if let Some(pinned) = self.proxy.pinned.get_mut(p) {
            pinned.owner = None;
            self.park(p);
        }
    }

    /// Pools a connection with nothing held or in flight; closes any other.
    fn park(&mut self, p: usize) {
        if self.proxy.pinned[p].is_reusable() && self.proxy.pool.len() < PINNED_POOL {
            self.proxy.pool.push(p);
        } else {
            self.close_pinned(p, Instant::now());
        }
    }

    /// Closes pinned connection `p`; returns what was in flight on it.
    fn close_pinned(&mut self, p: usize, now: Instant) -> Pinned {
        let mut pinned = self.proxy.pinned.remove(p);
        self.proxy.pool.retain(|&q| q != p);
        if !pinned.backend.is_off() {
            pinned.backend.turn_off(self.poll.registry(), now);
        }
        pinned
    }

    /// A pinned connection failed: its requests in flight fail, in order.
    /// A client whose transaction or watch was there is closed once told,
    /// as Redis forgot them: going on could run a transaction unwatched.
    fn pinned_lost(&mut self, p: usize, why: &str, now: Instant) {
        let mut pinned = self.proxy.pinned.remove(p);
        self.proxy.pool.retain(|&q| q != p);
        let failed = pinned.backend.turn_off(self.poll.registry(), now);
        if let Some(writes) = pinned.tx_writes.take() {
            writes.apply(&mut self.proxy.cache);
        }
        let Some(owner) = pinned.owner else {
            return;
        };
        self.proxy.counters.backend_reconnects += 1;
        log_warn!(
            "lost a connection to Redis pinned to client {}: {why}",
            owner.id
        );
        let mut seqs = Vec::new();
        for request in failed {
            if let PinnedRequest::Client { seq, rewrites, .. } = request {
                // A write that was sent may have run.
                if let Some(rewrites) = rewrites {
                    rewrites.apply(&mut self.proxy.cache);
                }
                seqs.push(seq);
            }
        }
        let Some(client) = live_client(&mut self.clients, owner.key, owner.id) else {
            return;
        };
        client.pinned = None;
        for seq in seqs {
            client.replies.fill(seq, BACKEND_UNAVAILABLE);
        }
        if !pinned.session.is_clean() && client.phase == Phase::Open {
            client.phase = Phase::Draining;
        }
        self.queue_flush(owner.key);
        self.close_if_done(owner.key);
    }

    fn flush_pinned(&mut self) {
        for p in std::mem::take(&mut self.proxy.pinned_to_flush) {
            let Some(pinned) = self.proxy.pinned.get_mut(p) else {
                continue;
            };
            pinned.flush_queued = false;
            if let Err(e) = pinned.backend.flush(self.poll.registry()) {
                self.pinned_lost(p, &e.to_string(), Instant::now());
            }
        }
    }

    // ---- the pub/sub connection ------------------------------------------

    fn pubsub_ready(&mut self, readable: bool, writable: bool) {
        let now = Instant::now();
        let pubsub = &mut self.proxy.pubsub;
        if pubsub.is_connecting() {
            match pubsub.poll_connect() {
                Ok(Progress::Connected) => {}
                Ok(Progress::Unchanged) => return,
                Err(e) => {
                    self.pubsub_lost(&format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        if writable {
            self.flush_pubsub();
        }
        if readable {
            self.read_pubsub(now);
        }
    }

    fn read_pubsub(&mut self, now: Instant) {
        self.drain(Link::PubSub, now, |server, len| {
            let Ok(frame) = resp::parse_value(server.proxy.pubsub.reply(len)) else {
                return Err("malformed reply from Redis".to_string());
            };
            match pubsub::classify(&frame) {
                pubsub::Incoming::Message { kind, name } => {
                    let listeners = server.proxy.channels.listeners(kind, name);
                    server.deliver(&listeners, len);
                }
                pubsub::Incoming::Reply => {
                    let request = server.proxy.pubsub.pop_in_flight();
                    let request = request.map_err(|d| d.to_string())?;
                    server.pubsub_reply(request, &frame);
                }
            }
            server.proxy.pubsub.consume(len);
            Ok(())
        });
    }

    /// Hands the message of `len` bytes at the front of the pub/sub
    /// connection's input to each listener, in its protocol: Redis's RESP2
    /// array, or the same as a RESP3 push.
    fn deliver(&mut self, listeners: &[(u64, usize)], len: usize) {
        let message = self.proxy.pubsub.reply(len);
        let mut as_push = None;
        let mut delivered = Vec::with_capacity(listeners.len());
        for &(id, key) in listeners {
            let Some(client) = live_client(&mut self.clients, key, id) else {
                continue;
            };
            match client.protocol {
                Protocol::Resp2 => client.replies.push_out_of_band(message),
                Protocol::Resp3 => {
                    let push = as_push.get_or_insert_with(|| {
                        let mut push = message.to_vec();
                        push[0] = b'>';
                        push
                    });
                    client.replies.push_out_of_band(push);
                }
            }
            delivered.push(key);
        }
        for key in delivered {
            self.queue_flush(key);
        }
    }

    fn pubsub_reply(&mut self, request: PubsubRequest, reply: &Value) {
        let (kind, name) = match request {
            PubsubRequest::Subscribe { kind, name } => (kind, name),
            PubsubRequest::Unsubscribe(Some(waiter)) | PubsubRequest::Barrier(waiter) => {
                self.fill_slot(waiter.key, waiter.id, waiter.seq, &waiter.ack);
                return;
            }
            PubsubRequest::Login(step) => {
                if let Value::Error(e) = reply {
                    let why = login_refused(step, e);
                    self.proxy.login_error = Some(why.clone());
                    self.pubsub_lost(&why, Instant::now());
                }
                return;
            }
            PubsubRequest::Unsubscribe(None) | PubsubRequest::SetName => return,
        };
        let waiters = if let Value::Error(e) = reply {
            log_warn!(
                "Redis refused to subscribe to {:?}: {}",
                String::from_utf8_lossy(&name),
                String::from_utf8_lossy(e)
            );
            let (waiters, listeners) = self.proxy.channels.refuse(kind, &name);
            for (id, key) in listeners {
                if let Some(client) = self.clients.get_mut(key).filter(|c| c.id == id) {
                    client.subscriptions.remove(kind, &name);
                }
            }
            let mut error = Vec::new();
            resp::error(&mut error, &format!("ERR {}", String::from_utf8_lossy(e)));
            waiters
                .into_iter()
                .map(|w| Waiter {
                    ack: error.clone(),
                    ..w
                })
                .collect()
        } else {
            let (waiters, abandoned) = self.proxy.channels.confirm(kind, &name);
            if abandoned {
                let verb = kind.unsubscribe_name().as_bytes();
                self.proxy
                    .pubsub
                    .queue(PubsubRequest::Unsubscribe(None), |out| {
                        resp::command(out, &[verb, &name])
                    });
            }
            waiters
        };
        for waiter in waiters {
            self.fill_slot(waiter.key, waiter.id, waiter.seq, &waiter.ack);
        }
    }

    /// Fills reply slot `seq` of client `id`, if it is still there.
    fn fill_slot(&mut self, key: usize, id: u64, seq: u64, reply: &[u8]) {
        if let Some(client) = live_client(&mut self.clients, key, id) {
            client.replies.fill(seq, reply);
            self.queue_flush(key);
        }
    }

    fn flush_pubsub(&mut self) {
        if !self.proxy.pubsub.has_output() {
            return;
        }
        if let Err(e) = self.proxy.pubsub.flush(self.poll.registry()) {
            self.pubsub_lost(&e.to_string(), Instant::now());
        }
    }

    /// The pub/sub connection ended: every subscription is gone at Redis,
    /// and messages may have been lost, so the subscribed clients are
    /// closed once told, as they would be by a Redis restart; they
    /// subscribe again on a new connection.
    fn pubsub_lost(&mut self, why: &str, now: Instant) {
        if self.proxy.pubsub.is_ready() {
            self.proxy.counters.backend_reconnects += 1;
            log_warn!("lost the pub/sub connection to Redis: {why}; closing subscribed clients");
        }
        let in_flight = self.proxy.pubsub.turn_off(self.poll.registry(), now);
        // With the connection gone, Redis delivers nothing more: an
        // unsubscription waiting for its answer is done.
        for request in in_flight {
            if let PubsubRequest::Unsubscribe(Some(w)) | PubsubRequest::Barrier(w) = request {
                self.fill_slot(w.key, w.id, w.seq, &w.ack);
            }
        }
        for waiter in self.proxy.channels.clear() {
            self.fill_slot(waiter.key, waiter.id, waiter.seq, BACKEND_UNAVAILABLE);
        }
        let subscribed: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.subscriptions.any())
            .map(|(key, _)| key)
            .collect();
        for key in subscribed {
            let client = &mut self.clients[key];
            client.subscriptions.take_all();
            if client.phase == Phase::Open {
                client.phase = Phase::Draining;
            }
            self.close_if_done(key);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        let stopping = self.shutdown_deadline.is_some();
        let overdue: Vec<(usize, bool)> = self
            .proxy
            .pinned
            .iter()
            .filter(|(_, pinned)| pinned.backend.next_deadline().is_some_and(|due| now >= due))
            .map(|(p, pinned)| (p, pinned.backend.is_connecting()))
            .collect();
        for (p, connecting) in overdue {
            let why = match connecting {
                true => "connect timed out".to_string(),
                false => format!("no reply within {:?}", self.proxy.timeout),
            };
            self.pinned_lost(p, &why, now);
        }
        if self
            .proxy
            .pubsub
            .next_deadline()
            .is_some_and(|due| now >= due)
        {
            self.pubsub_lost("no reply in time", now);
        }
        for protocol in PROTOCOLS {
            let data = &mut self.proxy.data[conn(protocol)];
            match data.next_deadline() {
                Some(due) if now >= due && data.is_connecting() => {
                    self.data_lost(protocol, "connect timed out", now);
                }
                Some(due) if now >= due && data.is_ready() => {
                    let why = format!("no reply within {:?}", data.timeout());
                    self.data_lost(protocol, &why, now);
                }
                Some(due) if now >= due && !stopping => {
                    match data.connect(self.poll.registry(), now) {
                        Ok(()) => {
                            data_handshake(data, protocol, &self.proxy.login);
                            self.enable_tracking_on(protocol);
                        }
                        Err(e) => self.log_connect_failure(&e.to_string()),
                    }
                }
                _ => {}
            }
        }
        match self.invalidation.next_deadline() {
            Some(due) if now >= due && self.invalidation.is_connecting() => {
                self.invalidation_lost("connect timed out", now);
            }
            Some(due) if now >= due && self.invalidation.is_ready() => {
                self.invalidation_lost("no reply in time", now);
            }
            Some(due) if now >= due && !stopping => {
                // A failed connect is retried after the backoff; the data
                // connection's log already says when Redis is unreachable.
                if let Ok(()) = self.invalidation.connect(self.poll.registry(), now) {
                    self.invalidation_handshake();
                }
            }
            _ => {}
        }
        if now >= self.next_trim {
            release_free_memory();
            self.next_trim = now + TRIM_INTERVAL;
        }
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            self.accept();
        }
        if let (Some(idle), Some(due)) = (self.limits.idle_timeout, self.next_idle_check) {
            if now >= due {
                self.close_idle_clients(idle, now);
                self.next_idle_check = Some(now + idle_check_interval(idle));
            }
        }
        if let Some(sent) = self.tracking.ping_sent_at {
            if now >= sent + KEEPALIVE_TIMEOUT {
                self.invalidation_lost("no answer to PING", now);
            }
        } else if self.tracking.next_ping_at.is_some_and(|at| now >= at) {
            self.tracking.next_ping_at = None;
            self.tracking.ping_sent_at = Some(now);
            self.invalidation.queue(InvalidationRequest::Ping, |out| {
                resp::command(out, &["PING"])
            });
        }
    }

    /// Closes the clients that sent nothing for `idle` and are owed nothing.
    fn close_idle_clients(&mut self, idle: Duration, now: Instant) {
        let idle_keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                // As in Redis, subscribers and clients in a transaction
                // or a blocking call are not idle.
                c.phase == Phase::Open
                    && c.pinned.is_none()
                    && !c.subscriptions.any()
                    && c.replies.owed() == 0
                    && c.replies.unsent() == 0
                    && now.saturating_duration_since(c.last_activity) >= idle
            })
            .map(|(key, _)| key)
            .collect();
        for key in idle_keys {
            self.close(key);
        }
    }

    // ---- shutdown --------------------------------------------------------

    fn signalled(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() || self.shutdown_deadline.is_some() {
            return;
        }
        log!(
            "received signal {}; sending owed replies, then exiting",
            signals[0]
        );
        self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            if client.phase == Phase::Open {
                client.phase = Phase::Draining;
            }
            self.close_if_done(key);
        }
    }
}

/// Client `id`, if it still lives in slab slot `key`: a slot reused by a
/// later client, or one closing, gets nothing meant for its predecessor.
fn live_client(clients: &mut Slab<Client>, key: usize, id: u64) -> Option<&mut Client> {
    clients
        .get_mut(key)
        .filter(|c| c.id == id && c.phase != Phase::Closed)
}

/// What of a GET reply may be cached, and until when, given the PTTL that
/// followed it: a value lives no longer than its key; a nil only while the
/// key still does not exist. Anything else changed in between: store nothing.
fn fill_expiry(
    value: Option<&[u8]>,
    pttl: Option<i64>,
    sent_at: Instant,
) -> (Option<&[u8]>, Option<Instant>) {
    let is_nil = value == Some(b"$-1\r\n");
    match (value, pttl) {
        (Some(v), Some(-2)) if is_nil => (Some(v), None),
        (Some(v), Some(-1)) if !is_nil => (Some(v), None),
        // Measured from when the GET was sent, so never later than the key's expiry.
        (Some(v), Some(ms)) if ms >= 0 && !is_nil => {
            (Some(v), Some(sent_at + Duration::from_millis(ms as u64)))
        }
        _ => (None, None),
    }
}

/// What became of a request.
enum Executed {
    /// Answered, served or queued: the request is used up.
    Done,
    /// `INFO`: the server answers it, as only it sees every client.
    Info {
        sections: Vec<Box<[u8]>>,
        silent: bool,
    },
    /// It must go to another connection than the replies the client is
    /// still owed: it waits, unread, until they have arrived.
    Wait,
}

/// Acts on one request, its reply silenced if `CLIENT REPLY` says so.
fn execute(
    client: &mut Client,
    key: usize,
    request: &Request,
    proxy: &mut Proxy,
    now: Instant,
) -> Executed {
    let mode = client.reply_mode;
    client.replies.silent = mode != ReplyMode::On;
    if mode == ReplyMode::SkipNext {
        client.reply_mode = ReplyMode::On;
    }
    let mut executed = execute_request(client, key, request, proxy, now);
    if let Executed::Info { silent, .. } = &mut executed {
        *silent = client.replies.silent;
    }
    client.replies.silent = false;
    if let Executed::Wait = executed {
        client.reply_mode = mode;
    }
    executed
}

/// Acts on one request: answers it, serves it from the cache, or queues it
/// for Redis with a reserved reply slot.
fn execute_request(
    client: &mut Client,
    key: usize,
    request: &Request,
    proxy: &mut Proxy,
    now: Instant,
) -> Executed {
    let input = client.input.pending();
    let arg = |i: usize| request.arg(input, i).unwrap_or_default();
    let protocol = client.protocol;
    let mut out = Vec::new();
    if !client.authenticated && !command::allowed_before_auth(arg(0)) {
        proxy.counters.refused_commands += 1;
        client.replies.push(NOAUTH);
        return Executed::Done;
    }
    if client.in_refused_multi {
        match command::in_refused_multi(arg(0)) {
            InRefusedMulti::Exec => {
                client.in_refused_multi = false;
                resp::error(&mut out, EXECABORT);
            }
            InRefusedMulti::Discard => {
                client.in_refused_multi = false;
                resp::simple(&mut out, b"OK");
            }
            InRefusedMulti::Quit => {
                resp::simple(&mut out, b"OK");
                client.phase = Phase::Draining;
            }
            InRefusedMulti::NotRun(message) => resp::error(&mut out, &message),
        }
        client.replies.push(&out);
        return Executed::Done;
    }
    let mut action = command::classify(request.argc(), arg);
    if protocol == Protocol::Resp2 && client.subscriptions.any() {
        // A RESP2 connection in pub/sub mode takes only these, as in Redis.
        match &action {
            Action::Subscribe(_) | Action::Unsubscribe(_) | Action::Quit | Action::Reset => {}
            Action::Ping => {
                pubsub::push_header(&mut out, 2, protocol);
                resp::bulk(&mut out, b"pong");
                resp::bulk(&mut out, if request.argc() == 2 { arg(1) } else { b"" });
                client.replies.push(&out);
                return Executed::Done;
            }
            _ => match proxy
                .commands
                .as_ref()
                .map(|t| t.full_name(request.argc(), arg))
            {
                // Redis answers an unknown command before it looks at the mode.
                Some(None) => action = Action::Forward,
                known => {
                    let name = known
                        .flatten()
                        .unwrap_or_else(|| String::from_utf8_lossy(arg(0)).to_ascii_lowercase());
                    resp::error(
                        &mut out,
                        &format!(
                            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / \
                             (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                        ),
                    );
                    client.replies.push(&out);
                    return Executed::Done;
                }
            },
        }
    }
    if let Some(p) = client.pinned {
        return execute_pinned(client, key, request, action, proxy, p, now);
    }
    match action {
        Action::Get => {
            if let Some(hit) = proxy.cache.get(arg(1), now) {
                proxy.counters.keyspace_hits += 1;
                // One entry serves both protocols: only a nil is spelled differently.
                match hit {
                    Hit::Value(value) => client.replies.push_bulk(value),
                    Hit::Nil => client.replies.push(resp::null_reply(protocol)),
                }
                return Executed::Done;
            }
            let c = conn(protocol);
            let joinable = proxy.coalesced[c]
                .get_mut(arg(1))
                .and_then(|pending| pending.last_mut())
                .filter(|last| proxy.cache.fill_is_valid(arg(1), last.ticket));
            proxy.counters.keyspace_misses += 1;
            if let Some(last) = joinable {
                last.waiters
                    .push((key, client.id, client.replies.reserve()));
                proxy.counters.coalesced_gets += 1;
                return Executed::Done;
            }
            let target = Target::new(&mut client.replies, key, client.id, protocol);
            forward(target, request, input, proxy, Forward::Get, now);
            return Executed::Done;
        }
        Action::Forward => {
            // Read-your-writes: the keys a write touches leave the cache
            // before the write is sent, and so do fills of GETs sent before it.
            // Only while both data connections run can a later GET run
            // before this write; then the keys are dropped again on its reply.
            let both = !proxy.data[conn(protocol) ^ 1].is_off();
            let rewrites = drop_written(proxy, request.argc(), arg, both).map(Box::new);
            let publish = match (request.argc(), proxy.channels.is_empty()) {
                (3, false) if arg(0).eq_ignore_ascii_case(b"PUBLISH") => Some(Kind::Channel),
                (3, false) if arg(0).eq_ignore_ascii_case(b"SPUBLISH") => Some(Kind::Shard),
                _ => None,
            }
            .map(|kind| Box::new((kind, Box::from(arg(1)))));
            let target = Target::new(&mut client.replies, key, client.id, protocol);
            forward(
                target,
                request,
                input,
                proxy,
                Forward::Other(rewrites, publish),
                now,
            );
            return Executed::Done;
        }
        Action::Transaction | Action::Blocking => {
            if client.replies.owed() > 0 {
                client.wait_for_replies();
                return Executed::Wait;
            }
            let owner = Owner { key, id: client.id };
            match proxy.pin(owner, protocol, now) {
                Ok(p) => {
                    client.pinned = Some(p);
                    return execute_pinned(client, key, request, action, proxy, p, now);
                }
                Err(reason) if Step::of(arg(0)) == Step::Multi => {
                    client.in_refused_multi = true;
                    resp::error(&mut out, &command::multi_refused(&reason));
                }
                Err(reason) => resp::error(&mut out, &reason),
            }
        }
        Action::Subscribe(kind) => subscribe(client, key, request, kind, proxy, now),
        Action::Unsubscribe(kind) => unsubscribe(client, key, request, kind, proxy),
        Action::Info => return info_request(request, input),
        Action::Reset => {
            reset(client, proxy);
            resp::simple(&mut out, b"RESET");
        }
        Action::ClientUnblock => {
            let reason = (request.argc() == 4).then(|| arg(3));
            match resp::parse_int(arg(2)) {
                None => resp::error(&mut out, "ERR value is not an integer or out of range"),
                Some(id) => match proxy.blocked_redis_id(id) {
                    // Redis's answer says whether the call was still blocked.
                    Some(redis_id) => {
                        let redis_id = redis_id.to_string();
                        let mut unblock = vec![&b"CLIENT"[..], b"UNBLOCK", redis_id.as_bytes()];
                        unblock.extend(reason);
                        let target = Target::new(&mut client.replies, key, client.id, protocol);
                        forward_command(target, proxy, &unblock);
                        return Executed::Done;
                    }
                    None => resp::integer(&mut out, 0),
                },
            }
        }
        other => answer_locally(client, request, other, proxy, &mut out, now),
    }
    client.replies.push(&out);
    Executed::Done
}

/// Answers a request that needs nothing from Redis.
fn answer_locally(
    client: &mut Client,
    request: &Request,
    action: Action,
    proxy: &mut Proxy,
    out: &mut Vec<u8>,
    now: Instant,
) {
    let input = client.input.pending();
    let arg = |i: usize| request.arg(input, i).unwrap_or_default();
    let protocol = client.protocol;
    match action {
        Action::Ping if request.argc() == 1 => resp::simple(out, b"PONG"),
        Action::Ping | Action::Echo => resp::bulk(out, arg(1)),
        Action::Quit => {
            resp::simple(out, b"OK");
            client.phase = Phase::Draining;
        }
        Action::Select(db) if db == i64::from(proxy.login.db) => resp::simple(out, b"OK"),
        Action::Select(_) => resp::error(out, &command::select_refused(proxy.login.db)),
        Action::Hello {
            protocol: new_protocol,
            setname,
            auth,
        } => {
            // As Redis: credentials first; then nothing without them.
            if let Some(user) = auth {
                if !proxy.credentials_ok(Some(arg(user)), arg(user + 1)) {
                    resp::error(out, WRONGPASS);
                    return;
                }
                client.authenticated = true;
            }
            if !client.authenticated {
                resp::error(out, HELLO_NOAUTH);
                return;
            }
            if let Some(i) = setname {
                client.name = non_empty(arg(i));
            }
            if let Some(new_protocol) = new_protocol {
                if new_protocol != protocol {
                    client.switch_protocol(new_protocol);
                    proxy.open(new_protocol, now);
                    if let Some(p) = client.pinned {
                        proxy.switch_pinned_protocol(p, new_protocol);
                    }
                }
            }
            hello_reply(
                out,
                client.id,
                client.protocol,
                proxy.redis_version.as_deref(),
            );
        }
        Action::ClientSetName => {
            client.name = non_empty(arg(2));
            resp::simple(out, b"OK");
        }
        Action::ClientGetName => match &client.name {
            Some(name) => resp::bulk(out, name),
            None => resp::null(out, protocol),
        },
        Action::ClientSetInfo(attr) => {
            let value = non_empty(arg(3));
            match attr {
                LibAttr::Name => client.lib_name = value,
                LibAttr::Version => client.lib_ver = value,
            }
            resp::simple(out, b"OK");
        }
        Action::ClientId => resp::integer(out, client.id as i64),
        Action::Auth { user } => {
            let password = arg(request.argc() - 1);
            if user.is_none() && proxy.requirepass.is_none() {
                resp::error(
                    out,
                    "ERR AUTH <password> called without any password configured for the \
                     default user. Are you sure your configuration is correct?",
                );
            } else if proxy.credentials_ok(user.map(arg), password) {
                client.authenticated = true;
                resp::simple(out, b"OK");
            } else {
                resp::error(out, WRONGPASS);
            }
        }
        // As in Redis: ON is answered even after OFF; OFF and SKIP are not answered.
        Action::ClientReply(ReplyMode::On) => {
            client.reply_mode = ReplyMode::On;
            client.replies.silent = false;
            resp::simple(out, b"OK");
        }
        Action::ClientReply(ReplyMode::Off) => client.reply_mode = ReplyMode::Off,
        Action::ClientReply(ReplyMode::SkipNext) => {
            if client.reply_mode != ReplyMode::Off {
                client.reply_mode = ReplyMode::SkipNext;
            }
        }
        Action::Error(message) => {
            proxy.counters.refused_commands += 1;
            resp::error(out, &message);
        }
        // Handled by the caller.
        Action::Get
        | Action::Forward
        | Action::Transaction
        | Action::Blocking
        | Action::Subscribe(_)
        | Action::Unsubscribe(_)
        | Action::Reset
        | Action::Info
        | Action::ClientUnblock => resp::error(out, "ERR internal error: request misrouted"),
    }
}

/// Acts on a request of a client with a pinned connection: everything
/// Redis can run goes over that connection verbatim, in order, so a
/// transaction sees exactly what Redis would; what changes sidecache's own
/// view of the client is answered here, and refused inside a MULTI (which
/// then fails at EXEC, as a transaction with a refused command does).
fn execute_pinned(
    client: &mut Client,
    key: usize,
    request: &Request,
    action: Action,
    proxy: &mut Proxy,
    p: usize,
    now: Instant,
) -> Executed {
    let input = client.input.pending();
    let arg = |i: usize| request.arg(input, i).unwrap_or_default();
    let in_multi = proxy.pinned[p].session.in_multi;
    let mut out = Vec::new();
    let runs_on_redis = matches!(
        action,
        Action::Get
            | Action::Forward
            | Action::Ping
            | Action::Echo
            | Action::Transaction
            | Action::Blocking
            | Action::Reset
    ) || (in_multi && action == Action::Select(i64::from(proxy.login.db)));
    if runs_on_redis {
        if action == Action::Reset {
            reset(client, proxy);
        }
        let blocks = action == Action::Blocking && !in_multi;
        forward_pinned(client, request, proxy, p, blocks);
        return Executed::Done;
    }
    match action {
        Action::Quit => answer_locally(client, request, action, proxy, &mut out, now),
        Action::Error(message) => {
            proxy.pinned[p].session.spoiled |= in_multi;
            resp::error(&mut out, &message);
        }
        _ if in_multi => {
            proxy.pinned[p].session.spoiled = true;
            resp::error(
                &mut out,
                &format!(
                    "ERR '{}' is not supported by sidecache inside a transaction",
                    String::from_utf8_lossy(arg(0)).to_ascii_lowercase()
                ),
            );
        }
        Action::Subscribe(kind) => subscribe(client, key, request, kind, proxy, now),
        Action::Unsubscribe(kind) => unsubscribe(client, key, request, kind, proxy),
        Action::Info => return info_request(request, input),
        other => answer_locally(client, request, other, proxy, &mut out, now),
    }
    client.replies.push(&out);
    Executed::Done
}

/// INFO's sections, for the server to answer.
fn info_request(request: &Request, input: &[u8]) -> Executed {
    let sections = (1..request.argc())
        .map(|i| Box::from(request.arg(input, i).unwrap_or_default()))
        .collect();
    Executed::Info {
        sections,
        silent: false,
    }
}

/// Queues a request verbatim on the client's pinned connection.
fn forward_pinned(
    client: &mut Client,
    request: &Request,
    proxy: &mut Proxy,
    p: usize,
    blocks: bool,
) {
    let input = client.input.pending();
    let arg = |i: usize| request.arg(input, i).unwrap_or_default();
    if !proxy.pinned[p].backend.accepts_requests() {
        client.replies.push(&proxy.unavailable());
        return;
    }
    let step = Step::of(arg(0));
    let written = drop_written(proxy, request.argc(), arg, true);
    let pinned = &mut proxy.pinned[p];
    let session = pinned.session;
    let mut rewrites = pinned.note_writes(written);
    let aborts = step == Step::Exec && session.in_multi && session.spoiled;
    if session.in_multi && matches!(step, Step::Exec | Step::Discard | Step::Reset) {
        // What the transaction wrote is known to be written once its EXEC answers.
        let tx_writes = pinned.tx_writes.take();
        if step == Step::Exec && !aborts {
            rewrites = tx_writes.map(Box::new);
        }
    }
    pinned.session.send(step);
    if step == Step::Reset {
        pinned.protocol = Protocol::Resp2;
    }
    let entry = PinnedRequest::Client {
        seq: client.replies.reserve(),
        rewrites,
        aborts,
    };
    proxy.route(Route::Pinned(p));
    let backend = &mut proxy.pinned[p].backend;
    if aborts {
        backend.queue(entry, |out| resp::command(out, &["DISCARD"]));
    } else if blocks {
        backend.queue_untimed(entry, |out| request.write_wire(input, out));
    } else {
        backend.queue(entry, |out| request.write_wire(input, out));
    }
    proxy.flush_pinned_later(p);
}

/// Drops from the cache the keys a request writes (everything, if it
/// cannot tell) and, if `keep`, returns them to drop again on its reply.
fn drop_written<'a>(
    proxy: &mut Proxy,
    argc: usize,
    arg: impl Fn(usize) -> &'a [u8],
    keep: bool,
) -> Option<Rewrites> {
    // Without a cache (--capacity 0) there is nothing to keep coherent.
    if !proxy.cache.is_enabled() {
        return None;
    }
    let commands = proxy.commands.as_ref()?;
    let cache = &mut proxy.cache;
    let mut kept = keep.then(Vec::new);
    let writes = commands.writes(argc, &arg, |i| {
        cache.invalidate(arg(i));
        if let Some(kept) = kept.as_mut() {
            kept.push(Box::from(arg(i)));
        }
    });
    match writes {
        Writes::Nothing => None,
        Writes::Keys => kept.map(Rewrites::Keys),
        Writes::Everything => {
            cache.clear();
            keep.then_some(Rewrites::Everything)
        }
    }
}

/// `(P|S)SUBSCRIBE`: one acknowledgement per channel, each sent once Redis
/// delivers that channel to sidecache.
fn subscribe(
    client: &mut Client,
    key: usize,
    request: &Request,
    kind: Kind,
    proxy: &mut Proxy,
    now: Instant,
) {
    let input = client.input.pending();
    if !proxy.open_pubsub(now) {
        client.replies.push(&proxy.unavailable());
        return;
    }
    for i in 1..request.argc() {
        let name = request.arg(input, i).unwrap_or_default();
        let added = client.subscriptions.add(kind, name);
        let mut ack = Vec::new();
        let count = client.subscriptions.count(kind);
        pubsub::ack(
            &mut ack,
            client.protocol,
            kind.subscribe_name(),
            Some(name),
            count,
        );
        if !added {
            client.replies.push_out_of_band(&ack);
            continue;
        }
        match proxy.channels.subscribe(kind, name, key, client.id) {
            Subscribed::Now => {
                client.replies.push_out_of_band(&ack);
                continue;
            }
            Subscribed::Later => {}
            Subscribed::SendSubscribe => {
                let request = PubsubRequest::Subscribe {
                    kind,
                    name: Box::from(name),
                };
                let verb = kind.subscribe_name().as_bytes();
                proxy.route(Route::Pubsub);
                proxy
                    .pubsub
                    .queue(request, |out| resp::command(out, &[verb, name]));
            }
        }
        let waiter = Waiter {
            key,
            id: client.id,
            seq: client.replies.reserve_out_of_band(),
            ack,
        };
        proxy.channels.wait(kind, name, waiter);
    }
}

/// `(P|S)UNSUBSCRIBE`: from the channels named, or from all of the kind.
fn unsubscribe(client: &mut Client, key: usize, request: &Request, kind: Kind, proxy: &mut Proxy) {
    let input = client.input.pending();
    let names: Vec<Box<[u8]>> = if request.argc() == 1 {
        client.subscriptions.names(kind)
    } else {
        (1..request.argc())
            .map(|i| Box::from(request.arg(input, i).unwrap_or_default()))
            .collect()
    };
    if names.is_empty() {
        let mut ack = Vec::new();
        let count = client.subscriptions.count(kind);
        pubsub::ack(
            &mut ack,
            client.protocol,
            kind.unsubscribe_name(),
            None,
            count,
        );
        client.replies.push_out_of_band(&ack);
    }
    for name in names {
        let removed = client.subscriptions.remove(kind, &name);
        let mut ack = Vec::new();
        let count = client.subscriptions.count(kind);
        pubsub::ack(
            &mut ack,
            client.protocol,
            kind.unsubscribe_name(),
            Some(&name),
            count,
        );
        let last = proxy.channels.is_last(kind, &name, client.id);
        if removed && last && proxy.pubsub.accepts_requests() {
            // Acknowledged once Redis stopped delivering it, so a PUBLISH
            // the client makes next does not count it.
            let waiter = Waiter {
                key,
                id: client.id,
                seq: client.replies.reserve_out_of_band(),
                ack,
            };
            proxy.unsubscribe(kind, &name, client.id, Some(waiter));
            continue;
        }
        if removed {
            proxy.unsubscribe(kind, &name, client.id, None);
        }
        client.replies.push_out_of_band(&ack);
    }
}

/// What `RESET` does to sidecache's view of the client; a pinned
/// connection gets the RESET itself.
fn reset(client: &mut Client, proxy: &mut Proxy) {
    for (kind, name) in client.subscriptions.take_all() {
        proxy.unsubscribe(kind, &name, client.id, None);
    }
    client.in_refused_multi = false;
    // As in Redis, RESET logs the client out when there is a password.
    client.authenticated = proxy.requirepass.is_none();
    // RESET turns CLIENT REPLY OFF back on, and answers; a SKIP already
    // under way still swallows its answer, as in Redis.
    if client.reply_mode == ReplyMode::Off {
        client.replies.silent = false;
    }
    client.reply_mode = ReplyMode::On;
    if client.protocol != Protocol::Resp2 {
        client.switch_protocol(Protocol::Resp2);
    }
}

/// The client a forwarded request's reply goes to.
struct Target<'a> {
    replies: &'a mut Replies,
    key: usize,
    id: u64,
    protocol: Protocol,
}

impl<'a> Target<'a> {
    fn new(replies: &'a mut Replies, key: usize, id: u64, protocol: Protocol) -> Self {
        Target {
            replies,
            key,
            id,
            protocol,
        }
    }
}

/// What kind of request is forwarded.
enum Forward {
    /// A GET miss: it may fill the cache.
    Get,
    /// Anything else, with what to drop from the cache again on its reply,
    /// and the channel if it publishes.
    Other(Option<Box<Rewrites>>, Option<Box<(Kind, Box<[u8]>)>>),
}

/// Queues a request on the data connection of its client's protocol with a
/// reserved reply slot, or answers at once that Redis is unavailable. A GET
/// miss that may fill the cache is followed by a PTTL of its key, to learn
/// how long the value may live.
fn forward(
    target: Target<'_>,
    request: &Request,
    input: &[u8],
    proxy: &mut Proxy,
    kind: Forward,
    now: Instant,
) {
    let c = conn(target.protocol);
    if !proxy.data[c].accepts_requests() {
        target.replies.push(&proxy.unavailable());
        return;
    }
    let seq = target.replies.reserve();
    let cache_key = request.arg(input, 1).unwrap_or_default();
    let (ticket, rewrites, publish) = match kind {
        Forward::Get if proxy.fills_allowed[c] => (proxy.cache.fill_ticket(cache_key), None, None),
        Forward::Get => (None, None, None),
        Forward::Other(rewrites, publish) => (None, rewrites, publish),
    };
    let entry = DataRequest::Client {
        key: target.key,
        id: target.id,
        seq,
        fills: ticket.is_some(),
        rewrites,
        publish,
    };
    proxy.route(Route::Data(c));
    let data = &mut proxy.data[c];
    data.queue(entry, |out| request.write_wire(input, out));
    if let Some(ticket) = ticket {
        let coalesced = Coalesced {
            ticket,
            waiters: Vec::new(),
        };
        match proxy.coalesced[c].get_mut(cache_key) {
            Some(pending) => pending.push(coalesced),
            None => {
                proxy.coalesced[c].insert(Box::from(cache_key), vec![coalesced]);
            }
        }
        let data = &mut proxy.data[c];
        let fill = DataRequest::Fill {
            key: Box::from(cache_key),
            ticket,
            sent_at: now,
        };
        data.queue(fill, |out| resp::command(out, &[&b"PTTL"[..], cache_key]));
    }
}

/// Queues a command sidecache wrote for a client on the shared connection
/// of its protocol, its reply going to the client.
fn forward_command(target: Target<'_>, proxy: &mut Proxy, args: &[&[u8]]) {
    let data = &mut proxy.data[conn(target.protocol)];
    if !data.accepts_requests() {
        target.replies.push(BACKEND_UNAVAILABLE);
        return;
    }
    let entry = DataRequest::Client {
        key: target.key,
        id: target.id,
        seq: target.replies.reserve(),
        fills: false,
        rewrites: None,
        publish: None,
    };
    let c = conn(target.protocol);
    proxy.route(Route::Data(c));
    proxy.data[c].queue(entry, |out| resp::command(out, args));
}

/// Whether `a` equals `b`, in a time that depends on their lengths only,
/// so that a client cannot find the password byte by byte by timing AUTH.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let longest = a.len().max(b.len());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..longest {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// This process's resident memory, from /proc (Linux), in bytes.
fn resident_set_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Hands memory the allocator holds free back to the system. After a burst
/// (thousands of clients, large values) glibc keeps freed chunks in the
/// middle of its heap, so without this the RSS could stay near its peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's
    // own free lists under its own lock; it is safe to call at any time from
    // any thread, and Rust's global allocator on this target is that same
    // glibc malloc. Exercised by tests/hardening.rs
    // (memory_comes_back_after_many_clients_leave).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// How often idle clients are looked for: often enough that one is closed
/// within about a tenth of `idle` past it, at most once a second.
fn idle_check_interval(idle: Duration) -> Duration {
    (idle / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Queues what every new data connection starts with, ahead of any client
/// request: the protocol, its name, the server's version and the command
/// table. Tracking follows once the invalidation connection is ready.
fn data_handshake(data: &mut Backend<DataRequest>, protocol: Protocol, login: &Login) {
    login.queue(data, DataRequest::Login);
    let name = match protocol {
        Protocol::Resp2 => tracking::DATA_CONNECTION_NAME,
        Protocol::Resp3 => tracking::DATA_RESP3_CONNECTION_NAME,
    };
    if protocol == Protocol::Resp3 {
        data.queue(DataRequest::Hello, |out| {
            resp::command(out, &["HELLO", "3"])
        });
    }
    data.queue(DataRequest::SetName, |out| {
        resp::command(out, &[&b"CLIENT"[..], b"SETNAME", name])
    });
    data.queue(DataRequest::ServerInfo, |out| {
        resp::command(out, &["INFO", "server"])
    });
    data.queue(DataRequest::CommandTable, |out| {
        resp::command(out, &["COMMAND"])
    });
}

/// A GET reply as the cache keeps it, if it is a value: bulk strings as
/// they are, a RESP3 nil as RESP2's; errors are never cached.
fn cacheable_value(reply: &[u8]) -> Option<Box<[u8]>> {
    match reply.first() {
        Some(b'$') => Some(Box::from(reply)),
        Some(b'_') => Some(Box::from(resp::null_reply(Protocol::Resp2))),
        _ => None,
    }
}

fn non_empty(value: &[u8]) -> Option<Box<[u8]>> {
    (!value.is_empty()).then(|| Box::from(value))
}

/// HELLO's reply, field for field as Redis sends it, in the client's protocol.
fn hello_reply(out: &mut Vec<u8>, id: u64, protocol: Protocol, redis_version: Option<&str>) {
    let proto = match protocol {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    resp::map_header(out, 7, protocol);
    resp::bulk(out, b"server");
    resp::bulk(out, b"redis");
    resp::bulk(out, b"version");
    resp::bulk(out, redis_version.unwrap_or("unknown").as_bytes());
    resp::bulk(out, b"proto");
    resp::integer(out, proto);
    resp::bulk(out, b"id");
    resp::integer(out, id as i64);
    resp::bulk(out, b"mode");
    resp::bulk(out, b"standalone");
    resp::bulk(out, b"role");
    resp::bulk(out, b"master");
    resp::bulk(out, b"modules");
    resp::array_header(out, 0);
}

#[cfg(test)]
mod tests {
    use super::fill_expiry;
    use std::time::{Duration, Instant};

    #[test]
    fn what_a_pttl_lets_the_cache_keep() {
        let sent = Instant::now();
        let value = Some(&b"$1\r\nv\r\n"[..]);
        let nil = Some(&b"$-1\r\n"[..]);
        assert_eq!(fill_expiry(value, Some(-1), sent), (value, None));
        assert_eq!(
            fill_expiry(value, Some(300), sent),
            (value, Some(sent + Duration::from_millis(300)))
        );
        assert_eq!(fill_expiry(nil, Some(-2), sent), (nil, None));
        // The key expired, or was created, between the GET and the PTTL.
        assert_eq!(fill_expiry(value, Some(-2), sent), (None, None));
        assert_eq!(fill_expiry(nil, Some(5), sent), (None, None));
        assert_eq!(fill_expiry(nil, Some(-1), sent), (None, None));
        // An error or a missing reply stores nothing.
        assert_eq!(fill_expiry(None, Some(-1), sent), (None, None));
        assert_eq!(fill_expiry(value, None, sent), (None, None));
    }
}
