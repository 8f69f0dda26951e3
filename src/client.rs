//! One client connection: its unparsed input, its reply slots in request
//! order, its output, and what it told us about itself (name, library).
//!
//! A reply may become ready out of order (a cache hit behind a miss still
//! waiting on Redis); it waits in its slot until every earlier reply has
//! gone out. This module never decides what a request means and never
//! talks to Redis; the server does both.

use crate::net::Stream;
use crate::pubsub::ClientSubscriptions;
use crate::resp::{Protocol, ProtocolError, Request, RequestParser};
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;

/// How many requests a client may have unanswered before sidecache stops
/// reading from it, so one client cannot swamp the shared pipeline.
pub const MAX_PENDING_REPLIES: usize = 1024;
/// Output waiting to be written past which sidecache stops reading from the client.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;
/// An emptied buffer larger than this is given back to the allocator, so an
/// idle connection holds next to nothing however much it once sent or read.
const KEEP_IDLE_CAPACITY: usize = 4 * 1024;

/// Where a connection is in its life. Every transition is in `server`:
/// `Open` → `Draining` on QUIT, a protocol error, end of input or shutdown;
/// `Open | Draining` → `Closed` once nothing is owed, or at once on a socket
/// error; a `Closed` client is removed from the slab at the end of the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading requests and sending replies.
    Open,
    /// No more requests are read; the connection closes once every owed reply is sent.
    Draining,
    /// Deregistered; waits for the end of the turn to leave the slab, so
    /// that a later event in the same batch never finds a reused slot.
    Closed,
}

pub struct Client {
    pub stream: Stream,
    /// Unique for the life of the process, so it doubles as the generation
    /// that tells a reused slab slot from the client that held it before.
    pub id: u64,
    pub phase: Phase,
    /// The protocol its replies are in; requests go to the data connection of this protocol.
    pub protocol: Protocol,
    /// Set when the client's next request goes to another connection to
    /// Redis than those still owing it replies (it switched protocol, or
    /// needs a connection of its own): the request waits until those are
    /// answered, since it could otherwise run before them.
    barrier: bool,
    /// Between a MULTI that sidecache refused and its EXEC or DISCARD.
    pub in_refused_multi: bool,
    /// The slab key of the connection to Redis pinned to this client, while
    /// it holds a transaction or a blocking call there.
    pub pinned: Option<usize>,
    pub subscriptions: ClientSubscriptions,
    /// `CLIENT REPLY`: whether replies to its commands are sent.
    pub reply_mode: ReplyMode,
    /// Passed AUTH, or no password is required.
    pub authenticated: bool,
    /// When it last sent a request or was last sent all it was owed (or
    /// connected), for `--idle-timeout`: as in Redis, a client is idle only
    /// from when the connection last did something.
    pub last_activity: Instant,
    pub input: Input,
    pub replies: Replies,
    /// Readable readiness seen and not yet used up (edge-triggered: cleared
    /// only on WouldBlock), kept while reading is paused at a limit.
    pub readable: bool,
    /// Already in the server's list of clients with output to write.
    pub flush_queued: bool,
    /// Registered for writability: output is waiting for room in the socket.
    writable_interest: bool,
    /// The peer's FIN (or an error) was reported: read until end of input.
    pub peer_closing: bool,
    pub name: Option<Box<[u8]>>,
    pub lib_name: Option<Box<[u8]>>,
    pub lib_ver: Option<Box<[u8]>>,
}

impl Client {
    pub fn new(stream: Stream, id: u64) -> Self {
        Client {
            stream,
            id,
            phase: Phase::Open,
            protocol: Protocol::Resp2,
            barrier: false,
            in_refused_multi: false,
            pinned: None,
            subscriptions: ClientSubscriptions::default(),
            reply_mode: ReplyMode::On,
            authenticated: true,
            last_activity: Instant::now(),
            input: Input::default(),
            replies: Replies::default(),
            readable: false,
            flush_queued: false,
            writable_interest: false,
            peer_closing: false,
            name: None,
            lib_name: None,
            lib_ver: None,
        }
    }

    /// Whether the client is below its limits and may have more requests read.
    pub fn can_take_more(&mut self) -> bool {
        if self.barrier && self.replies.slots.is_empty() {
            self.barrier = false;
        }
        self.phase == Phase::Open
            && !self.barrier
            && self.replies.slots.len() < MAX_PENDING_REPLIES
            && self.replies.unsent() < OUTPUT_HIGH_WATER
    }

    /// Whether reading is paused because the client is at a limit: too
    /// many replies owed, or too much output unsent.
    pub fn is_paused_at_a_limit(&self) -> bool {
        self.replies.slots.len() >= MAX_PENDING_REPLIES
            || self.replies.unsent() >= OUTPUT_HIGH_WATER
    }

    /// Switches the protocol of the replies to come.
    pub fn switch_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
        self.wait_for_replies();
    }

    /// Holds the next request until every owed reply has arrived.
    pub fn wait_for_replies(&mut self) {
        self.barrier = !self.replies.slots.is_empty();
    }

    /// Whether the connection has nothing more to do and can be closed.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Draining && self.replies.slots.is_empty() && self.replies.unsent() == 0
    }

    /// Reads one chunk from the socket through `scratch`, a buffer shared
    /// by every client, so that only unparsed input is kept per client.
    pub fn read(&mut self, scratch: &mut [u8]) -> ReadOutcome {
        match self.input.read_from(&mut self.stream, scratch) {
            Ok(0) => ReadOutcome::Eof,
            // A read that did not fill the buffer emptied the socket: bytes
            // arriving later raise a new (edge-triggered) event, so asking
            // again now would only cost a system call that finds nothing.
            // Unless the peer's FIN was already reported: it raises no new
            // event, and must be read.
            Ok(n) if n < scratch.len() && !self.peer_closing => {
                self.readable = false;
                ReadOutcome::Drained
            }
            Ok(_) => ReadOutcome::Data,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                ReadOutcome::Drained
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadOutcome::Data,
            Err(e) => ReadOutcome::Failed(e),
        }
    }

    /// Writes owed output until done or the socket is full. The socket is
    /// registered (as `token`) for writability only while output waits for
    /// room in it, so that the loop is not woken by every ACK.
    pub fn flush(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let replies = &mut self.replies;
        while replies.sent < replies.output.len() {
            match self.stream.write(&replies.output[replies.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => replies.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.want_writable(registry, token, true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        replies.output.clear();
        replies.sent = 0;
        if replies.output.capacity() > KEEP_IDLE_CAPACITY {
            replies.output = Vec::new();
        }
        self.want_writable(registry, token, false)
    }

    fn want_writable(&mut self, registry: &Registry, token: Token, wanted: bool) -> io::Result<()> {
        if self.writable_interest != wanted {
            let interest = match wanted {
                true => Interest::READABLE | Interest::WRITABLE,
                false => Interest::READABLE,
            };
            registry.reregister(&mut self.stream, token, interest)?;
            self.writable_interest = wanted;
        }
        Ok(())
    }
}

/// `CLIENT REPLY ON|OFF|SKIP`. Pub/sub traffic is sent whatever the mode, as in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    /// The next command's reply is not sent; then `On` again.
    SkipNext,
}

pub enum ReadOutcome {
    /// Bytes were read (or the read was interrupted); the socket may hold more.
    Data,
    /// The socket had nothing more.
    Drained,
    /// The client closed its sending side.
    Eof,
    Failed(io::Error),
}

/// Bytes read from the client and not yet consumed by the parser.
#[derive(Default)]
pub struct Input {
    buf: Vec<u8>,
    /// Start of the first request not yet parsed completely.
    start: usize,
    parser: RequestParser,
}

impl Input {
    /// The unparsed input; a request the parser returns is relative to it.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Parses the next request from the unparsed input.
    pub fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        self.parser.parse(&self.buf[self.start..])
    }

    /// Drops `n` bytes of parsed requests from the front.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_IDLE_CAPACITY {
                self.buf = Vec::new();
            }
        }
    }

    fn read_from(&mut self, stream: &mut Stream, scratch: &mut [u8]) -> io::Result<usize> {
        let n = stream.read(scratch)?;
        // Move the partial request to the front before growing, so a
        // long-lived connection does not creep forward through memory.
        if self.start > 0 && self.buf.capacity() - self.buf.len() < n {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(&scratch[..n]);
        Ok(n)
    }
}

/// Replies owed to the client, in request order, and the output being written.
#[derive(Default)]
pub struct Replies {
    /// One per request still waiting for an earlier reply or for its own.
    slots: VecDeque<Slot>,
    /// Sequence number of the slot at the front of `slots`.
    first_seq: u64,
    /// Bytes of the ready replies waiting in `slots`.
    slot_bytes: usize,
    output: Vec<u8>,
    sent: usize,
    /// While set, replies of the request being handled are dropped
    /// (`CLIENT REPLY OFF` or `SKIP`); pub/sub traffic still goes out.
    pub silent: bool,
}

enum Slot {
    Waiting,
    /// Waiting for a reply that will be dropped, keeping its place so
    /// that later replies still leave in order.
    Dropped,
    Ready(Vec<u8>),
}

impl Replies {
    /// Reserves the next slot for a reply that will come later; returns its sequence number.
    pub fn reserve(&mut self) -> u64 {
        let slot = match self.silent {
            true => Slot::Dropped,
            false => Slot::Waiting,
        };
        self.slots.push_back(slot);
        self.first_seq + self.slots.len() as u64 - 1
    }

    /// Like `reserve`, for pub/sub traffic, which `CLIENT REPLY` does not silence.
    pub fn reserve_out_of_band(&mut self) -> u64 {
        let silent = std::mem::replace(&mut self.silent, false);
        let seq = self.reserve();
        self.silent = silent;
        seq
    }

    /// Queues a reply that is ready now, behind every earlier one.
    pub fn push(&mut self, reply: &[u8]) {
        if !self.silent {
            self.push_out_of_band(reply);
        }
    }

    /// Queues a bulk string reply of `value`, framed here rather than
    /// copied framed, behind every earlier reply.
    pub fn push_bulk(&mut self, value: &[u8]) {
        if self.silent {
            return;
        }
        if self.slots.is_empty() {
            crate::resp::bulk(&mut self.output, value);
            return;
        }
        let mut reply = Vec::with_capacity(value.len() + 16);
        crate::resp::bulk(&mut reply, value);
        self.slot_bytes += reply.len();
        self.slots.push_back(Slot::Ready(reply));
    }

    /// Like `push`, for pub/sub traffic, which `CLIENT REPLY` does not silence.
    pub fn push_out_of_band(&mut self, reply: &[u8]) {
        if self.slots.is_empty() {
            self.output.extend_from_slice(reply);
        } else {
            self.slot_bytes += reply.len();
            self.slots.push_back(Slot::Ready(reply.to_vec()));
        }
    }

    /// Fills the slot `seq` reserved, then moves every ready reply at the front to the output.
    pub fn fill(&mut self, seq: u64, reply: &[u8]) {
        let Some(index) = seq.checked_sub(self.first_seq) else {
            debug_assert!(false, "slot {seq} was filled twice");
            return;
        };
        let index = index as usize;
        let dropped = matches!(self.slots.get(index), Some(Slot::Dropped));
        let reply = if dropped { &[][..] } else { reply };
        if index == 0 {
            self.output.extend_from_slice(reply);
            self.slots.pop_front();
            self.first_seq += 1;
            self.release_ready();
        } else if let Some(slot) = self.slots.get_mut(index) {
            debug_assert!(matches!(slot, Slot::Waiting | Slot::Dropped));
            self.slot_bytes += reply.len();
            *slot = Slot::Ready(reply.to_vec());
        }
    }

    fn release_ready(&mut self) {
        while let Some(slot) = self.slots.front() {
            match slot {
                Slot::Waiting | Slot::Dropped => break,
                Slot::Ready(bytes) => {
                    self.slot_bytes -= bytes.len();
                    self.output.extend_from_slice(bytes)
                }
            }
            self.slots.pop_front();
            self.first_seq += 1;
        }
    }

    /// Number of replies not yet moved to the output.
    pub fn owed(&self) -> usize {
        self.slots.len()
    }

    /// Bytes in the output not yet written to the socket.
    pub fn unsent(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Bytes of replies held for the client: unsent output and ready
    /// replies waiting behind an earlier one.
    pub fn held(&self) -> usize {
        self.unsent() + self.slot_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_request_order() {
        let mut r = Replies::default();
        let miss1 = r.reserve();
        r.push(b"+hit1\r\n");
        let miss2 = r.reserve();
        r.push(b"+hit2\r\n");
        assert_eq!(r.unsent(), 0, "nothing may overtake the first miss");
        assert_eq!(r.held(), 14, "ready replies held behind it count");
        r.fill(miss2, b"+miss2\r\n");
        assert_eq!(r.unsent(), 0);
        assert_eq!(r.held(), 14 + 8);
        r.fill(miss1, b"+miss1\r\n");
        assert_eq!(r.output, b"+miss1\r\n+hit1\r\n+miss2\r\n+hit2\r\n");
        assert_eq!(r.held(), r.output.len());
        assert_eq!(r.owed(), 0);
        r.push(b"+now\r\n");
        assert!(r.output.ends_with(b"+now\r\n"));
    }

    #[test]
    fn silenced_replies_keep_their_place_and_vanish() {
        let mut r = Replies::default();
        let first = r.reserve();
        r.silent = true;
        let dropped = r.reserve();
        r.push(b"+local\r\n");
        r.push_out_of_band(b"+message\r\n");
        r.silent = false;
        let last = r.reserve();
        r.fill(last, b"+last\r\n");
        r.fill(dropped, b"+dropped\r\n");
        assert_eq!(r.unsent(), 0);
        r.fill(first, b"+first\r\n");
        assert_eq!(r.output, b"+first\r\n+message\r\n+last\r\n");
        assert_eq!(r.owed(), 0);
    }

    #[test]
    fn sequence_numbers_keep_counting_across_drains() {
        let mut r = Replies::default();
        for round in 0..3u8 {
            let a = r.reserve();
            let b = r.reserve();
            r.fill(b, &[b'b', round]);
            r.fill(a, &[b'a', round]);
        }
        assert_eq!(r.output, b"a\0b\0a\x01b\x01a\x02b\x02");
    }
}
