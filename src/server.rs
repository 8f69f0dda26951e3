//! The event loop: one thread, one `mio::Poll`. Owns the listener, the slab
//! of clients, the connections to Redis and the cache, and is the only
//! place that opens, closes or moves data between them.
//!
//! Each turn: handle the batch of readiness events, the invalidation
//! connection's first; run due timers; resume clients that have input left;
//! write the data connection's queued requests (one write batches every
//! client's requests of the turn); write each client's output; and only
//! then remove closed clients from the slab, so an event later in the same
//! batch never lands on a reused slot. A reply is routed by slab key AND
//! client id, so a reply owed to a departed client is dropped, never given
//! to the next tenant of its slot.
//!
//! The cache serves only while it can be kept coherent: the data
//! connection is up with Redis's command table loaded (to see which keys a
//! forwarded write touches) and, when tracking is in use, the invalidation
//! connection is subscribed and tracking is on for the data connection.

use crate::backend::{info_field, Backend, Progress};
use crate::cache::{Cache, FillTicket};
use crate::client::{Client, Phase, ReadOutcome, Replies};
use crate::command::{self, Action, LibAttr};
use crate::config::{Config, TrackingMode};
use crate::keys::{CommandTable, Writes};
use crate::log;
use crate::resp::{self, Request, Value};
use crate::tracking::{self, Incoming};
use anyhow::{anyhow, Context};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const DATA: Token = Token(1);
const INVALIDATION: Token = Token(2);
const SIGNALS: Token = Token(3);
/// Client tokens are slab keys shifted past the fixed tokens.
const FIRST_CLIENT: usize = 4;

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

/// Who waits for a reply on the data connection, and what to do with it.
#[derive(Debug)]
enum DataRequest {
    /// A client's request: the reply goes to slot `seq` of client `id`,
    /// which lived in slab slot `key` when the request was sent.
    /// `fills` marks a GET miss whose reply the following `Fill` may store.
    Client {
        key: usize,
        id: u64,
        seq: u64,
        fills: bool,
    },
    /// The PTTL sent right after a GET miss: it completes the fill, so a
    /// cached value never outlives the key's own expiry.
    Fill {
        key: Box<[u8]>,
        ticket: FillTicket,
        sent_at: Instant,
    },
    SetName,
    ServerInfo,
    CommandTable,
    TrackingOn {
        redirect: i64,
    },
}

/// sidecache's own requests on the invalidation connection.
#[derive(Debug)]
enum InvalidationRequest {
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
    /// Redis acknowledged tracking on the data connection, redirected to `client_id`.
    on: bool,
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
    data: Backend<DataRequest>,
    cache: Cache,
    commands: Option<CommandTable>,
    redis_version: Option<String>,
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    clients: Slab<Client>,
    proxy: Proxy,
    invalidation: Backend<InvalidationRequest>,
    tracking: Tracking,
    /// The GET reply of a fill, kept until its PTTL answers; `None` inside
    /// when the GET's reply was not a value.
    fill_reply: Option<Option<Box<[u8]>>>,
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
}

impl Server {
    /// Binds the listener and sets up signals; connects to Redis once `run` starts.
    pub fn bind(config: &Config) -> anyhow::Result<Server> {
        let poll = Poll::new().context("creating the poll instance")?;
        let mut listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let now = Instant::now();
        let mut invalidation = Backend::new("invalidation", config.redis, INVALIDATION, now);
        if config.tracking == TrackingMode::Off || config.capacity == 0 {
            invalidation.turn_off(poll.registry(), now);
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            clients: Slab::new(),
            proxy: Proxy {
                data: Backend::new("data", config.redis, DATA, now),
                cache: Cache::new(config.capacity, config.ttl),
                commands: None,
                redis_version: None,
            },
            invalidation,
            tracking: Tracking {
                mode: config.tracking,
                supported: None,
                client_id: None,
                subscribed: false,
                on: false,
                ping_sent_at: None,
                next_ping_at: None,
            },
            fill_reply: None,
            next_client_id: 1,
            to_flush: Vec::new(),
            to_resume: Vec::new(),
            to_remove: Vec::new(),
            shutdown_deadline: None,
            connect_failures: 0,
            fatal: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until a shutdown signal, then until owed replies are sent.
    pub fn run(mut self) -> anyhow::Result<()> {
        log!(
            "sidecache {} listening on {}, backing Redis at {}",
            env!("CARGO_PKG_VERSION"),
            self.local_addr,
            self.proxy.data.addr()
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling for events"),
            }
            // Invalidations first: one that arrived before a client's GET
            // must be applied before that GET is answered from the cache.
            if events.iter().any(|e| e.token() == INVALIDATION) {
                self.invalidation_ready();
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    DATA => self.data_ready(event.is_readable(), event.is_writable()),
                    INVALIDATION => {}
                    SIGNALS => self.signalled(),
                    Token(token) => self.client_ready(
                        token - FIRST_CLIENT,
                        event.is_readable(),
                        event.is_writable(),
                    ),
                }
            }
            self.run_timers(Instant::now());
            for key in std::mem::take(&mut self.to_resume) {
                self.pump(key);
            }
            self.flush_data();
            self.flush_invalidation();
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

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.to_resume.is_empty() {
            return Some(Duration::ZERO);
        }
        let keepalive = match self.tracking.ping_sent_at {
            Some(sent) => Some(sent + KEEPALIVE_TIMEOUT),
            None => self.tracking.next_ping_at,
        };
        let deadlines = [
            self.proxy.data.next_deadline(),
            self.invalidation.next_deadline(),
            keepalive,
            self.shutdown_deadline,
        ];
        deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    // ---- clients -------------------------------------------------------

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, _peer) = match listener.accept() {
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
                    // clients we have; the listener signals again on the next
                    // connection.
                    log!("cannot accept a client: {e}");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(FIRST_CLIENT + key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log!("cannot register a client: {e}");
                continue;
            }
            let id = self.next_client_id;
            self.next_client_id += 1;
            entry.insert(Client::new(stream, id));
        }
    }

    fn client_ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.phase == Phase::Closed {
            return;
        }
        if readable {
            client.readable = true;
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
            match client.read() {
                ReadOutcome::Data | ReadOutcome::Drained => {}
                ReadOutcome::Eof => {
                    // The client may half-close after its last request and
                    // still read the replies: answer what arrived, then close.
                    self.handle_requests(key);
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
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let now = Instant::now();
        let mut replied = false;
        while client.can_take_more() {
            match client.input.next_request() {
                Ok(Some(request)) => {
                    if request.argc() > 0 {
                        execute(client, key, &request, &mut self.proxy, now);
                        replied = true;
                    }
                    client.input.consume(request.consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    // As Redis does: say why, then close once it is sent.
                    let mut out = Vec::new();
                    resp::error(&mut out, &format!("ERR {e}"));
                    client.replies.push(&out);
                    client.phase = Phase::Draining;
                    replied = true;
                    break;
                }
            }
        }
        if replied {
            self.queue_flush(key);
        }
    }

    fn queue_flush(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
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
            if client.flush().is_err() {
                self.close(key);
                continue;
            }
            // A client paused at a limit (or with requests still buffered)
            // carries on now that replies have gone out.
            if client.can_take_more() && (client.readable || !client.input.pending().is_empty()) {
                self.to_resume.push(key);
            }
            self.close_if_done(key);
        }
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
        let _ = self.poll.registry().deregister(&mut client.stream);
        self.to_remove.push(key);
    }

    // ---- the data connection -------------------------------------------

    fn data_ready(&mut self, readable: bool, writable: bool) {
        let now = Instant::now();
        if self.proxy.data.is_connecting() {
            match self.proxy.data.poll_connect() {
                Ok(Progress::Connected) => {
                    log!("connected to Redis at {}", self.proxy.data.addr());
                    self.connect_failures = 0;
                }
                Ok(Progress::Unchanged) => return,
                Err(e) => {
                    self.data_lost(&format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        if writable {
            self.flush_data();
        }
        if readable {
            self.read_data(now);
        }
    }

    /// Queues what every new data connection starts with, ahead of any
    /// client request: its name, the server's version, the command table,
    /// and tracking if the invalidation connection is ready for it.
    fn data_handshake(&mut self) {
        let data = &mut self.proxy.data;
        data.queue(DataRequest::SetName, |out| {
            resp::command(
                out,
                &[&b"CLIENT"[..], b"SETNAME", tracking::DATA_CONNECTION_NAME],
            )
        });
        data.queue(DataRequest::ServerInfo, |out| {
            resp::command(out, &["INFO", "server"])
        });
        data.queue(DataRequest::CommandTable, |out| {
            resp::command(out, &["COMMAND"])
        });
        self.enable_tracking();
    }

    /// Asks Redis to track the data connection's reads, redirected to the
    /// invalidation connection, when both are ready for it.
    fn enable_tracking(&mut self) {
        let (Some(redirect), true) = (self.tracking.client_id, self.tracking.subscribed) else {
            return;
        };
        if !self.tracking.wanted() || !self.proxy.data.accepts_requests() {
            return;
        }
        let id = redirect.to_string();
        self.proxy
            .data
            .queue(DataRequest::TrackingOn { redirect }, |out| {
                resp::command(out, &["CLIENT", "TRACKING", "ON", "REDIRECT", &id])
            });
    }

    fn read_data(&mut self, now: Instant) {
        loop {
            let more = match self.proxy.data.read() {
                Ok(more) => more,
                Err(e) => {
                    self.data_lost(&e.to_string(), now);
                    return;
                }
            };
            loop {
                let next = match self.proxy.data.next_frame() {
                    Ok(Some(len)) => self.proxy.data.pop_in_flight().map(|r| (r, len)),
                    Ok(None) => break,
                    Err(desync) => Err(desync),
                };
                match next {
                    Ok((request, len)) => {
                        self.data_reply(request, len, now);
                        self.proxy.data.consume(len);
                    }
                    Err(desync) => {
                        self.data_lost(&desync.to_string(), now);
                        return;
                    }
                }
                if self.fatal.is_some() {
                    return;
                }
            }
            if !more {
                return;
            }
        }
    }

    /// Acts on the reply of `len` bytes at the front of the data connection's input.
    fn data_reply(&mut self, request: DataRequest, len: usize, now: Instant) {
        let reply = self.proxy.data.reply(len);
        match request {
            DataRequest::Client {
                key,
                id,
                seq,
                fills,
            } => {
                if fills {
                    // Bulk strings and nils are values; errors are never cached.
                    let value = reply.first() == Some(&b'$');
                    self.fill_reply = Some(value.then(|| Box::from(reply)));
                }
                let Some(client) = self.clients.get_mut(key) else {
                    return;
                };
                if client.id != id || client.phase == Phase::Closed {
                    return; // its client has gone; the slot may have a new tenant
                }
                client.replies.fill(seq, reply);
                self.queue_flush(key);
            }
            DataRequest::Fill {
                key,
                ticket,
                sent_at,
            } => {
                let value = self.fill_reply.take().flatten();
                let pttl = resp::parse_value(reply).ok().and_then(|v| v.as_integer());
                let (value, expires_at) = fill_expiry(value.as_deref(), pttl, sent_at);
                self.proxy
                    .cache
                    .complete_fill(&key, ticket, value, expires_at, now);
            }
            DataRequest::SetName => {}
            DataRequest::ServerInfo => {
                self.proxy.redis_version = info_field(reply, b"redis_version:").map(str::to_string);
                if reply.first() == Some(&b'-') {
                    log!(
                        "Redis refused sidecache's handshake: {}",
                        String::from_utf8_lossy(reply).trim_end()
                    );
                } else {
                    self.proxy.data.reset_backoff();
                }
            }
            DataRequest::CommandTable => {
                let table = resp::parse_value(reply)
                    .map_err(|e| e.to_string())
                    .and_then(|value| CommandTable::from_command_reply(&value));
                match table {
                    Ok(table) => self.proxy.commands = Some(table),
                    Err(e) => log!("cannot read Redis's command table, so nothing is cached: {e}"),
                }
                self.update_serving();
            }
            DataRequest::TrackingOn { redirect } => {
                let reply = resp::parse_value(reply);
                match reply {
                    Ok(Value::Simple(_)) => {
                        if self.tracking.client_id == Some(redirect) && self.tracking.subscribed {
                            self.tracking.on = true;
                            self.tracking.supported = Some(true);
                            log!("client tracking is on: the cache follows writes made to Redis by anyone");
                            self.update_serving();
                        }
                    }
                    Ok(Value::Error(e)) => self.tracking_refused(&e, now),
                    _ => self.data_lost("unexpected reply to CLIENT TRACKING", now),
                }
            }
        }
    }

    fn flush_data(&mut self) {
        if !self.proxy.data.has_output() {
            return;
        }
        if let Err(e) = self.proxy.data.flush() {
            self.data_lost(&e.to_string(), Instant::now());
        }
    }

    /// One rule for every way the data connection ends: fail each request
    /// in flight, in order; forget the cache, the command table and
    /// tracking (Redis forgets what this connection read); retry later.
    fn data_lost(&mut self, why: &str, now: Instant) {
        let was_ready = self.proxy.data.is_ready();
        let failed = self.proxy.data.lose(self.poll.registry(), now);
        self.proxy.commands = None;
        self.tracking.on = false;
        self.fill_reply = None;
        self.update_serving();
        if was_ready {
            log!("lost the connection to Redis: {why}");
            self.connect_failures = 0;
        } else {
            self.log_connect_failure(why);
        }
        for request in failed {
            if let DataRequest::Client { key, id, seq, .. } = request {
                if let Some(client) = self.clients.get_mut(key) {
                    if client.id == id && client.phase != Phase::Closed {
                        client.replies.fill(seq, BACKEND_UNAVAILABLE);
                        self.queue_flush(key);
                    }
                }
            }
        }
    }

    /// Logs the first failure in a row, then one in 30 (about one a minute at the backoff cap).
    fn log_connect_failure(&mut self, why: &str) {
        if self.connect_failures % 30 == 0 {
            log!(
                "Redis at {} is unreachable ({} attempt(s)): {why}",
                self.proxy.data.addr(),
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
        loop {
            let more = match self.invalidation.read() {
                Ok(more) => more,
                Err(e) => {
                    self.invalidation_lost(&e.to_string(), now);
                    return;
                }
            };
            loop {
                let len = match self.invalidation.next_frame() {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(desync) => {
                        self.invalidation_lost(&desync.to_string(), now);
                        return;
                    }
                };
                let frame = resp::parse_value(self.invalidation.reply(len));
                self.invalidation.consume(len);
                match frame.map(tracking::classify) {
                    Ok(Incoming::Invalidate(keys)) => {
                        for key in keys {
                            self.proxy.cache.invalidate(&key);
                        }
                    }
                    Ok(Incoming::InvalidateAll) => self.proxy.cache.clear(),
                    Ok(Incoming::Reply(reply)) => match self.invalidation.pop_in_flight() {
                        Ok(request) => self.invalidation_reply(request, reply, now),
                        Err(desync) => {
                            self.invalidation_lost(&desync.to_string(), now);
                            return;
                        }
                    },
                    Err(e) => {
                        self.invalidation_lost(&e.to_string(), now);
                        return;
                    }
                }
                if self.fatal.is_some() || !self.invalidation.is_ready() {
                    return;
                }
            }
            if !more {
                return;
            }
        }
    }

    /// Queues what every new invalidation connection starts with: its name,
    /// its id (the target of the data connection's redirect), and the
    /// subscription to the invalidation channel.
    fn invalidation_handshake(&mut self) {
        let conn = &mut self.invalidation;
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
                _ => self.tracking_refused(e, now),
            }
            return;
        }
        match request {
            InvalidationRequest::SetName => {}
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
                self.proxy.data.addr()
            ));
            return;
        }
        log!(
            "warning: Redis cannot track keys ({error}); caching with TTL only: \
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
        if let Err(e) = self.invalidation.flush() {
            self.invalidation_lost(&e.to_string(), Instant::now());
        }
    }

    /// The invalidation connection ended: invalidations may have been
    /// lost, so the cache is emptied and serves nothing until tracking is
    /// set up again on a new connection.
    fn invalidation_lost(&mut self, why: &str, now: Instant) {
        if self.invalidation.is_ready() {
            log!(
                "lost the invalidation connection to Redis: {why}; cache emptied until it is back"
            );
        }
        self.invalidation.lose(self.poll.registry(), now);
        self.reset_tracking();
        self.update_serving();
    }

    fn reset_tracking(&mut self) {
        self.tracking.client_id = None;
        self.tracking.subscribed = false;
        self.tracking.on = false;
        self.tracking.ping_sent_at = None;
        self.tracking.next_ping_at = None;
    }

    /// Serves from the cache exactly while it can be kept coherent.
    fn update_serving(&mut self) {
        let serving = self.proxy.commands.is_some()
            && self.proxy.data.is_ready()
            && (!self.tracking.wanted() || self.tracking.on);
        let cache = &mut self.proxy.cache;
        if serving != cache.is_serving() && cache.is_enabled() {
            if serving {
                let how = if self.tracking.on {
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

    fn run_timers(&mut self, now: Instant) {
        let stopping = self.shutdown_deadline.is_some();
        match self.proxy.data.next_deadline() {
            Some(due) if now >= due && self.proxy.data.is_connecting() => {
                self.data_lost("connect timed out", now);
            }
            Some(due) if now >= due && !stopping => {
                match self.proxy.data.connect(self.poll.registry(), now) {
                    Ok(()) => self.data_handshake(),
                    Err(e) => self.log_connect_failure(&e.to_string()),
                }
            }
            _ => {}
        }
        match self.invalidation.next_deadline() {
            Some(due) if now >= due && self.invalidation.is_connecting() => {
                self.invalidation_lost("connect timed out", now);
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

/// Acts on one request: answers it, serves it from the cache, or queues it
/// for Redis with a reserved reply slot.
fn execute(client: &mut Client, key: usize, request: &Request, proxy: &mut Proxy, now: Instant) {
    let input = client.input.pending();
    let arg = |i: usize| request.arg(input, i).unwrap_or_default();
    let replies = &mut client.replies;
    let mut out = Vec::new();
    match command::classify(request.argc(), arg) {
        Action::Get => {
            if let Some(hit) = proxy.cache.get(arg(1), now) {
                replies.push_shared(hit);
                return;
            }
            forward(replies, key, client.id, request, input, proxy, true, now);
            return;
        }
        Action::Forward => {
            // Read-your-writes: the keys a write touches leave the cache
            // before the write is sent, and so do fills of GETs sent before it.
            if let Some(commands) = &proxy.commands {
                let cache = &mut proxy.cache;
                if commands.writes(request.argc(), arg, |i| cache.invalidate(arg(i)))
                    == Writes::Everything
                {
                    cache.clear();
                }
            }
            forward(replies, key, client.id, request, input, proxy, false, now);
            return;
        }
        Action::Ping if request.argc() == 1 => resp::simple(&mut out, b"PONG"),
        Action::Ping | Action::Echo => resp::bulk(&mut out, arg(1)),
        Action::Quit => {
            resp::simple(&mut out, b"OK");
            client.phase = Phase::Draining;
        }
        Action::SelectZero => resp::simple(&mut out, b"OK"),
        Action::Hello { setname } => {
            if let Some(i) = setname {
                client.name = non_empty(arg(i));
            }
            hello_reply(&mut out, client.id, proxy.redis_version.as_deref());
        }
        Action::ClientSetName => {
            client.name = non_empty(arg(2));
            resp::simple(&mut out, b"OK");
        }
        Action::ClientGetName => match &client.name {
            Some(name) => resp::bulk(&mut out, name),
            None => resp::null_bulk(&mut out),
        },
        Action::ClientSetInfo(attr) => {
            let value = non_empty(arg(3));
            match attr {
                LibAttr::Name => client.lib_name = value,
                LibAttr::Version => client.lib_ver = value,
            }
            resp::simple(&mut out, b"OK");
        }
        Action::ClientId => resp::integer(&mut out, client.id as i64),
        Action::Error(message) => resp::error(&mut out, &message),
    }
    client.replies.push(&out);
}

/// Queues a request for Redis with a reserved reply slot, or answers at once
/// that Redis is unavailable. A GET miss (`is_get`) that may fill the cache
/// is followed by a PTTL of its key, to learn how long the value may live.
#[allow(clippy::too_many_arguments)]
fn forward(
    replies: &mut Replies,
    key: usize,
    id: u64,
    request: &Request,
    input: &[u8],
    proxy: &mut Proxy,
    is_get: bool,
    now: Instant,
) {
    if !proxy.data.accepts_requests() {
        replies.push(BACKEND_UNAVAILABLE);
        return;
    }
    let seq = replies.reserve();
    let cache_key = request.arg(input, 1).unwrap_or_default();
    let ticket = if is_get {
        proxy.cache.fill_ticket(cache_key)
    } else {
        None
    };
    let fills = ticket.is_some();
    proxy.data.queue(
        DataRequest::Client {
            key,
            id,
            seq,
            fills,
        },
        |out| request.write_wire(input, out),
    );
    if let Some(ticket) = ticket {
        let fill = DataRequest::Fill {
            key: Box::from(cache_key),
            ticket,
            sent_at: now,
        };
        proxy
            .data
            .queue(fill, |out| resp::command(out, &[&b"PTTL"[..], cache_key]));
    }
}

fn non_empty(value: &[u8]) -> Option<Box<[u8]>> {
    (!value.is_empty()).then(|| Box::from(value))
}

/// HELLO's reply in RESP2, field for field as Redis sends it.
fn hello_reply(out: &mut Vec<u8>, id: u64, redis_version: Option<&str>) {
    resp::array_header(out, 14);
    resp::bulk(out, b"server");
    resp::bulk(out, b"redis");
    resp::bulk(out, b"version");
    resp::bulk(out, redis_version.unwrap_or("unknown").as_bytes());
    resp::bulk(out, b"proto");
    resp::integer(out, 2);
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
