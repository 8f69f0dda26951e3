//! The event loop: one thread, one `mio::Poll`. Owns the listener, the slab
//! of clients, the backend connection and the cache, and is the only place
//! that opens, closes or moves data between them.
//!
//! Each turn: handle the batch of readiness events; run due timers; resume
//! clients that have input left; write the backend's queued requests (one
//! write batches every client's requests of the turn); write each client's
//! output; and only then remove closed clients from the slab, so an event
//! later in the same batch never lands on a reused slot. A reply is routed
//! by slab key AND client id, so a reply owed to a departed client is
//! dropped, never given to the next tenant of its slot.

use crate::backend::{Backend, InFlight, Progress};
use crate::cache::Cache;
use crate::client::{Client, Phase, ReadOutcome, Replies};
use crate::command::{self, Action, LibAttr};
use crate::config::Config;
use crate::log;
use crate::resp::{self, Request};
use anyhow::Context;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const BACKEND: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Client tokens are slab keys shifted past the fixed tokens.
const FIRST_CLIENT: usize = 3;

/// How long shutdown waits for owed replies to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Reads from one client per wake-up before others get a turn.
const READS_PER_TURN: usize = 16;

const BACKEND_UNAVAILABLE: &[u8] = b"-ERR backend unavailable\r\n";

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    clients: Slab<Client>,
    backend: Backend,
    cache: Cache,
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
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            clients: Slab::new(),
            backend: Backend::new(config.redis, BACKEND, Instant::now()),
            cache: Cache::new(config.capacity, config.ttl),
            next_client_id: 1,
            to_flush: Vec::new(),
            to_resume: Vec::new(),
            to_remove: Vec::new(),
            shutdown_deadline: None,
            connect_failures: 0,
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
            self.backend.addr()
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling for events"),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    BACKEND => self.backend_ready(event.is_readable(), event.is_writable()),
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
            self.flush_backend();
            self.flush_clients();
            for key in self.to_remove.drain(..) {
                self.clients.remove(key);
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
        let deadlines = [self.backend.next_deadline(), self.shutdown_deadline];
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
        if writable {
            self.queue_flush(key);
        }
        if readable {
            if let Some(client) = self.clients.get_mut(key) {
                client.readable = true;
            }
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
                ReadOutcome::Data => {}
                ReadOutcome::Drained => {}
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
                        execute(
                            client,
                            key,
                            &request,
                            &mut self.backend,
                            &mut self.cache,
                            now,
                        );
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

    // ---- the backend -----------------------------------------------------

    fn backend_ready(&mut self, readable: bool, writable: bool) {
        let now = Instant::now();
        if matches!(self.backend.state, crate::backend::State::Connecting { .. }) {
            match self.backend.poll_connect() {
                Ok(Progress::Connected) => {
                    log!("connected to Redis at {}", self.backend.addr());
                    self.connect_failures = 0;
                    // Whatever was cached before may have changed while we were away.
                    self.cache.clear();
                }
                Ok(Progress::Unchanged) => return,
                Err(e) => {
                    self.backend_lost(&format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        if writable {
            self.flush_backend();
        }
        if readable {
            self.read_backend(now);
        }
    }

    fn read_backend(&mut self, now: Instant) {
        loop {
            let more = match self.backend.read() {
                Ok(more) => more,
                Err(e) => {
                    self.backend_lost(&e.to_string(), now);
                    return;
                }
            };
            loop {
                match self.backend.next_reply() {
                    Ok(Some((entry, len))) => {
                        self.deliver(entry, len, now);
                        self.backend.consume(len);
                    }
                    Ok(None) => break,
                    Err(desync) => {
                        self.backend_lost(&desync.to_string(), now);
                        return;
                    }
                }
            }
            if !more {
                return;
            }
        }
    }

    /// Routes the reply of `len` bytes at the front of the backend's input.
    fn deliver(&mut self, entry: InFlight, len: usize, now: Instant) {
        let reply = self.backend.reply(len);
        match entry {
            InFlight::Handshake => {
                if reply.first() == Some(&b'-') {
                    log!(
                        "Redis refused sidecache's handshake: {}",
                        String::from_utf8_lossy(reply).trim_end()
                    );
                }
                let reply = reply.to_vec();
                self.backend.handshake_done(&reply);
            }
            InFlight::Client { key, id, seq, fill } => {
                if let Some((cache_key, ticket)) = fill {
                    // Bulk strings and nils are values; errors are never cached.
                    if reply.first() == Some(&b'$') {
                        self.cache.fill(&cache_key, reply, ticket, now);
                    }
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
        }
    }

    fn flush_backend(&mut self) {
        if !self.backend.has_output() {
            return;
        }
        if let Err(e) = self.backend.flush() {
            self.backend_lost(&e.to_string(), Instant::now());
        }
    }

    /// One rule for every way the backend connection ends: fail each
    /// request in flight, in order; forget the cache; retry later.
    fn backend_lost(&mut self, why: &str, now: Instant) {
        let was_ready = matches!(self.backend.state, crate::backend::State::Ready { .. });
        let failed = self.backend.lose(self.poll.registry(), now);
        self.cache.clear();
        if was_ready {
            log!("lost the connection to Redis: {why}");
            self.connect_failures = 0;
        } else {
            self.log_connect_failure(why);
        }
        for entry in failed {
            if let InFlight::Client { key, id, seq, .. } = entry {
                if let Some(client) = self.clients.get_mut(key) {
                    if client.id == id && client.phase != Phase::Closed {
                        client.replies.fill(seq, BACKEND_UNAVAILABLE);
                        self.queue_flush(key);
                    }
                }
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        match self.backend.state {
            crate::backend::State::Down { retry_at } if now >= retry_at => {
                if self.shutdown_deadline.is_some() {
                    return;
                }
                if let Err(e) = self.backend.connect(self.poll.registry(), now) {
                    self.log_connect_failure(&e.to_string());
                }
            }
            crate::backend::State::Connecting { deadline, .. } if now >= deadline => {
                self.backend_lost("connect timed out", now);
            }
            _ => {}
        }
    }

    /// Logs the first failure in a row, then one in 30 (about one a minute at the backoff cap).
    fn log_connect_failure(&mut self, why: &str) {
        if self.connect_failures % 30 == 0 {
            log!(
                "Redis at {} is unreachable ({} attempt(s)): {why}",
                self.backend.addr(),
                self.connect_failures + 1
            );
        }
        self.connect_failures += 1;
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

/// Acts on one request: answers it, serves it from the cache, or queues it
/// for Redis with a reserved reply slot.
fn execute(
    client: &mut Client,
    key: usize,
    request: &Request,
    backend: &mut Backend,
    cache: &mut Cache,
    now: Instant,
) {
    let input = client.input.pending();
    let arg = |i: usize| request.arg(input, i).unwrap_or_default();
    let replies = &mut client.replies;
    let mut out = Vec::new();
    match command::classify(request.argc(), arg) {
        Action::Get => {
            if let Some(hit) = cache.get(arg(1), now) {
                replies.push_shared(hit);
                return;
            }
            let fill = cache
                .is_enabled()
                .then(|| (Box::from(arg(1)), cache.fill_ticket()));
            forward(replies, key, client.id, request, input, backend, fill);
            return;
        }
        Action::Forward => {
            forward(replies, key, client.id, request, input, backend, None);
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
            hello_reply(&mut out, client.id, backend.redis_version.as_deref());
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
/// that Redis is unavailable.
fn forward(
    replies: &mut Replies,
    key: usize,
    id: u64,
    request: &Request,
    input: &[u8],
    backend: &mut Backend,
    fill: Option<(Box<[u8]>, crate::cache::FillTicket)>,
) {
    if !backend.accepts_requests() {
        replies.push(BACKEND_UNAVAILABLE);
        return;
    }
    let seq = replies.reserve();
    backend.queue(InFlight::Client { key, id, seq, fill }, |out| {
        request.write_wire(input, out)
    });
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
