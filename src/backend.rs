//! One connection to the backing Redis: connecting, backing off, the
//! outgoing pipeline, reply framing, and the in-flight FIFO that pairs each
//! reply with the request it answers. sidecache has several: the data
//! connection every client's forwarded requests share, and the invalidation
//! connection; each has its own kind of in-flight entry `T`.
//!
//! Invariant: `in_flight` has exactly one entry per request queued on the
//! current connection and not yet answered, in the order written, the
//! handshake included. On loss every entry is handed back to be failed, in
//! order, and the queue starts empty. This module never looks inside a
//! client and never decides what a reply means.

use crate::net::{Address, Stream};
use crate::resp::{FrameError, ReplyFramer};
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;
const KEEP_IDLE_CAPACITY: usize = 256 * 1024;

/// Where the connection is. Transitions, all in this file:
/// `Down` → `Connecting` (`connect`, when `retry_at` has passed);
/// `Connecting` → `Ready` (`poll_connect` sees the connect finish);
/// `Connecting | Ready` → `Down` (`lose`: a failure, a timeout, or a reply out of step);
/// any → `Off` (`turn_off`: the connection is not wanted, e.g. Redis cannot track).
pub enum State {
    /// Not wanted: never connects.
    Off,
    /// Not connected; the next attempt is due at `retry_at`.
    Down { retry_at: Instant },
    /// A non-blocking connect is under way; requests queue meanwhile.
    Connecting { stream: Stream, deadline: Instant },
    /// Connected: queued requests are written as the socket allows.
    Ready { stream: Stream },
}

pub struct Backend<T> {
    /// Which connection this is, for log lines.
    pub role: &'static str,
    addr: Address,
    token: Token,
    pub state: State,
    /// Requests not yet written; `sent` bytes of it have been.
    out: Vec<u8>,
    sent: usize,
    /// Replies read are `input[input_start..input_end]`; what lies before
    /// was delivered. The bytes past `input_end` are room for the next
    /// read, zeroed once when the buffer grew rather than on every read.
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    framer: ReplyFramer,
    /// Each request waiting for a reply, with when it was queued; `None`
    /// for one that may take as long as it likes (a blocking command).
    in_flight: VecDeque<(T, Option<Instant>)>,
    backoff: Duration,
    /// Longest wait for the connect, and for the reply to the oldest request.
    timeout: Duration,
    /// Redis's FIN (or an error) was reported for the current socket: read
    /// until end of input rather than stopping at a short read.
    pub peer_closing: bool,
    /// Whether the socket is registered for writability too: only while
    /// connecting, or while requests wait for room in the socket, so that
    /// every ACK does not wake the loop.
    writable_interest: bool,
}

/// What the event loop's reader needs of any connection to Redis, whatever
/// the requests it carries: read, frame the replies, know it still serves.
pub trait Framed {
    fn read(&mut self) -> io::Result<bool>;
    fn next_frame(&mut self) -> Result<Option<usize>, Desync>;
    fn is_ready(&self) -> bool;
}

impl<T> Framed for Backend<T> {
    fn read(&mut self) -> io::Result<bool> {
        Backend::read(self)
    }

    fn next_frame(&mut self) -> Result<Option<usize>, Desync> {
        Backend::next_frame(self)
    }

    fn is_ready(&self) -> bool {
        Backend::is_ready(self)
    }
}

/// What a connect attempt or a socket event came to.
pub enum Progress {
    /// Nothing changed.
    Unchanged,
    /// The TCP connection to Redis is up.
    Connected,
}

impl<T> Backend<T> {
    /// A connection that will connect to `addr` on the first `connect`.
    pub fn new(
        role: &'static str,
        addr: Address,
        token: Token,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        Backend {
            role,
            addr,
            token,
            state: State::Down { retry_at: now },
            out: Vec::new(),
            sent: 0,
            input: Vec::new(),
            input_start: 0,
            input_end: 0,
            framer: ReplyFramer::default(),
            in_flight: VecDeque::new(),
            backoff: BACKOFF_MIN,
            timeout,
            writable_interest: false,
            peer_closing: false,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn addr(&self) -> &Address {
        &self.addr
    }

    /// Whether a request queued now will be sent (at once, or once the connect finishes).
    pub fn accepts_requests(&self) -> bool {
        matches!(self.state, State::Connecting { .. } | State::Ready { .. })
    }

    /// When the loop must next call `on_timer`, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Down { retry_at } => Some(retry_at),
            State::Connecting { deadline, .. } => Some(deadline),
            // Redis must answer the oldest request in time, or the
            // connection is taken for dead.
            State::Ready { .. } => self
                .in_flight
                .front()
                .and_then(|(_, sent)| *sent)
                .map(|sent| sent + self.timeout),
            State::Off => None,
        }
    }

    /// Starts a non-blocking connect; the caller queues its handshake next.
    /// On failure the connection is `Down` again with a longer backoff.
    pub fn connect(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        debug_assert!(self.in_flight.is_empty());
        let mut stream = match Stream::connect(&self.addr) {
            Ok(stream) => stream,
            Err(e) => {
                self.schedule_retry(now);
                return Err(e);
            }
        };
        if let Err(e) = registry.register(
            &mut stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.schedule_retry(now);
            return Err(e);
        }
        self.writable_interest = true;
        self.peer_closing = false;
        self.state = State::Connecting {
            stream,
            deadline: now + self.timeout,
        };
        Ok(())
    }

    /// While connecting: checks whether the connect finished.
    pub fn poll_connect(&mut self) -> io::Result<Progress> {
        let State::Connecting { stream, .. } = &mut self.state else {
            return Ok(Progress::Unchanged);
        };
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        if !stream.is_connected()? {
            return Ok(Progress::Unchanged);
        }
        stream.set_nodelay();
        let State::Connecting { stream, .. } = std::mem::replace(
            &mut self.state,
            State::Down {
                retry_at: Instant::now(),
            },
        ) else {
            unreachable!("checked above");
        };
        self.state = State::Ready { stream };
        Ok(Progress::Connected)
    }

    /// Redis answered: the connection works, so the next loss starts
    /// backing off from the minimum again.
    pub fn reset_backoff(&mut self) {
        self.backoff = BACKOFF_MIN;
    }

    /// Whether the connection is up and its socket ready for requests.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    pub fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    /// Queues a request written by `write` and its in-flight entry. The
    /// caller checks `accepts_requests` first.
    pub fn queue(&mut self, entry: T, write: impl FnOnce(&mut Vec<u8>)) {
        debug_assert!(self.accepts_requests());
        write(&mut self.out);
        self.in_flight.push_back((entry, Some(Instant::now())));
    }

    /// Like `queue`, for a request Redis may rightly take any time to
    /// answer (a blocking command): `--timeout` does not apply while it is
    /// the oldest one waiting.
    pub fn queue_untimed(&mut self, entry: T, write: impl FnOnce(&mut Vec<u8>)) {
        debug_assert!(self.accepts_requests());
        write(&mut self.out);
        self.in_flight.push_back((entry, None));
    }

    /// Whether requests are waiting to be written.
    pub fn has_output(&self) -> bool {
        self.sent < self.out.len()
    }

    /// Writes queued requests until done or the socket is full; in the
    /// latter case asks `registry` to report when there is room again.
    pub fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        let State::Ready { stream } = &mut self.state else {
            return Ok(());
        };
        while self.sent < self.out.len() {
            match stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.want_writable(registry, true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > KEEP_IDLE_CAPACITY {
            self.out = Vec::new();
        }
        self.want_writable(registry, false)
    }

    fn want_writable(&mut self, registry: &Registry, wanted: bool) -> io::Result<()> {
        if self.writable_interest == wanted {
            return Ok(());
        }
        let State::Ready { stream } = &mut self.state else {
            return Ok(());
        };
        let interest = match wanted {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        registry.reregister(stream, self.token, interest)?;
        self.writable_interest = wanted;
        Ok(())
    }

    /// Reads one chunk of replies. `Ok(false)` when the socket had nothing more.
    pub fn read(&mut self) -> io::Result<bool> {
        let State::Ready { stream } = &mut self.state else {
            return Ok(false);
        };
        // Delivered replies are dropped once per read, not once per reply.
        self.input.copy_within(self.input_start..self.input_end, 0);
        self.input_end -= self.input_start;
        self.input_start = 0;
        let filled = self.input_end;
        if self.input.len() < filled + READ_CHUNK {
            self.input.resize(filled + READ_CHUNK, 0);
        }
        let room = self.input.len() - filled;
        let result = stream.read(&mut self.input[filled..]);
        self.input_end += *result.as_ref().unwrap_or(&0);
        match result {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            )),
            // A short read emptied the socket; what arrives later raises a
            // new event. Not so a FIN already reported: read on to it.
            Ok(n) if n < room && !self.peer_closing => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The length of the next complete reply (or push message), if one has
    /// arrived. Its bytes are `self.reply(len)`; call `consume(len)` after
    /// use. An error means the stream is out of step: `lose` it.
    pub fn next_frame(&mut self) -> Result<Option<usize>, Desync> {
        let pending = &self.input[self.input_start..self.input_end];
        self.framer.frame(pending).map_err(Desync::Malformed)
    }

    /// The request the next reply answers. A reply with none waiting means
    /// the stream is out of step.
    pub fn pop_in_flight(&mut self) -> Result<T, Desync> {
        self.in_flight
            .pop_front()
            .map(|(entry, _)| entry)
            .ok_or(Desync::Unrequested)
    }

    /// The first `len` bytes of what was read: the reply `next_reply` found.
    pub fn reply(&self, len: usize) -> &[u8] {
        &self.input[self.input_start..self.input_start + len]
    }

    pub fn consume(&mut self, len: usize) {
        // Clamped: acting on a reply may have lost the connection (a refused
        // login, say), emptying the input under the caller's feet.
        self.input_start = (self.input_start + len).min(self.input_end);
        if self.input_start == self.input_end {
            self.input_start = 0;
            self.input_end = 0;
            if self.input.len() > KEEP_IDLE_CAPACITY {
                self.input = Vec::new();
            }
        }
    }

    /// Drops the connection and schedules the next attempt. Returns every
    /// request that was waiting for a reply, in order, so each can be failed.
    pub fn lose(&mut self, registry: &Registry, now: Instant) -> VecDeque<T> {
        match &mut self.state {
            State::Connecting { stream, .. } | State::Ready { stream } => {
                let _ = registry.deregister(stream);
            }
            State::Down { .. } | State::Off => {}
        }
        self.schedule_retry(now);
        self.out.clear();
        self.sent = 0;
        self.input = Vec::new();
        self.input_start = 0;
        self.input_end = 0;
        self.framer = ReplyFramer::default();
        std::mem::take(&mut self.in_flight)
            .into_iter()
            .map(|(entry, _)| entry)
            .collect()
    }

    /// Drops the connection for good (until `turn_on`). Returns the requests
    /// that were waiting, like `lose`.
    pub fn turn_off(&mut self, registry: &Registry, now: Instant) -> VecDeque<T> {
        let waiting = self.lose(registry, now);
        self.state = State::Off;
        waiting
    }

    /// Lets an `Off` connection connect again, at once.
    pub fn turn_on(&mut self, now: Instant) {
        if matches!(self.state, State::Off) {
            self.backoff = BACKOFF_MIN;
            self.state = State::Down { retry_at: now };
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        self.state = State::Down {
            retry_at: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Whether bytes were read that no reply has consumed yet.
    pub fn has_input(&self) -> bool {
        self.input_end > self.input_start
    }

    /// Whether a request that may take any time (a blocking command) is in flight.
    pub fn has_untimed(&self) -> bool {
        self.in_flight.iter().any(|(_, queued)| queued.is_none())
    }

    /// Number of requests waiting for a reply.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// What every new connection to Redis sends first, from `--redis`: AUTH
/// with the configured credentials, SELECT of the configured database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStep {
    Auth,
    Select,
}

impl LoginStep {
    pub fn command(self) -> &'static str {
        match self {
            LoginStep::Auth => "AUTH",
            LoginStep::Select => "SELECT",
        }
    }
}

/// The credentials and database of `--redis`.
pub struct Login {
    /// User (the default user if `None`) and password.
    pub auth: Option<(Option<String>, String)>,
    pub db: u32,
}

impl Login {
    /// Queues AUTH and SELECT as needed, `entry` making their in-flight entries.
    pub fn queue<T>(&self, backend: &mut Backend<T>, entry: impl Fn(LoginStep) -> T) {
        if let Some((user, password)) = &self.auth {
            backend.queue(entry(LoginStep::Auth), |out| match user {
                Some(user) => crate::resp::command(out, &["AUTH", user, password]),
                None => crate::resp::command(out, &["AUTH", password]),
            });
        }
        if self.db != 0 {
            let db = self.db.to_string();
            backend.queue(entry(LoginStep::Select), |out| {
                crate::resp::command(out, &["SELECT", &db])
            });
        }
    }
}

/// Why a connection to Redis is given up when Redis answers a login step
/// with `error` (without its `-`), for the log and the clients' errors.
pub fn login_refused(step: LoginStep, error: &[u8]) -> String {
    format!(
        "Redis refused sidecache's {}: {}",
        step.command(),
        String::from_utf8_lossy(error).trim_end()
    )
}

/// The reply stream cannot be trusted any more.
#[derive(Debug)]
pub enum Desync {
    Malformed(FrameError),
    /// A reply arrived with no request waiting for it.
    Unrequested,
}

impl std::fmt::Display for Desync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Desync::Malformed(e) => e.fmt(f),
            Desync::Unrequested => f.write_str("a reply from Redis that nobody asked for"),
        }
    }
}

/// The value of `field` (such as `redis_version:`) in an INFO reply.
pub fn info_field<'a>(info: &'a [u8], field: &[u8]) -> Option<&'a str> {
    info.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(|v| v.trim_end_matches('\r'))
}

#[cfg(test)]
mod tests {
    use super::info_field;

    #[test]
    fn consuming_after_a_loss_leaves_the_input_sound() {
        let now = std::time::Instant::now();
        let addr = crate::net::Address::Tcp("127.0.0.1:1".parse().unwrap());
        let mut b: super::Backend<()> = super::Backend::new(
            "test",
            addr,
            mio::Token(0),
            std::time::Duration::from_secs(1),
            now,
        );
        // What the server does when acting on a reply lost the connection.
        b.consume(64);
        assert!(!b.has_input());
        assert_eq!(b.next_frame().ok(), Some(None));
    }

    #[test]
    fn finds_the_version_in_info() {
        let info = b"$60\r\n# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n\r\n";
        assert_eq!(info_field(info, b"redis_version:"), Some("7.0.15"));
        assert_eq!(info_field(info, b"nope:"), None);
    }
}
