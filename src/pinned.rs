//! Connections to Redis pinned to one client while it holds connection
//! state there: a transaction (MULTI, or WATCH before it) or a blocking
//! call. Every request of that client goes over its pinned connection
//! until the state ends and nothing is in flight; then the connection goes
//! back to a small pool, clean, or is closed.
//!
//! This module owns what Redis holds for such a connection (in a MULTI,
//! watching keys) as foreseen from the requests sent, in the order Redis
//! will run them, so the server knows at send time whether a request will
//! be queued inside a transaction. It never reads a socket and never
//! touches a client; the server does both.

use crate::backend::{Backend, LoginStep};
use crate::cache::Rewrites;
use crate::resp::Protocol;

/// The client a pinned connection serves: slab key and client id, as for
/// every reply routed in sidecache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub key: usize,
    pub id: u64,
}

/// What waits for a reply on a pinned connection.
#[derive(Debug)]
pub enum PinnedRequest {
    /// The owner's request, answered in its reply slot `seq`.
    Client {
        seq: u64,
        /// Keys to drop from the cache when the reply arrives: a write's,
        /// or for EXEC those of every command queued in the transaction.
        rewrites: Option<Box<Rewrites>>,
        /// A DISCARD sent in place of an EXEC whose transaction sidecache
        /// spoiled by refusing a command: the client gets EXECABORT.
        aborts: bool,
    },
    /// sidecache's own: the login, the protocol, the name and the id of
    /// the connection.
    Login(LoginStep),
    Hello,
    SetName,
    ClientId,
}

/// The EXEC reply of a transaction in which sidecache refused a command.
pub const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// Commands that change what Redis holds for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Reset,
    Other,
}

impl Step {
    /// The step a command name takes.
    pub fn of(name: &[u8]) -> Step {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("MULTI") {
            Step::Multi
        } else if is("EXEC") {
            Step::Exec
        } else if is("DISCARD") {
            Step::Discard
        } else if is("WATCH") {
            Step::Watch
        } else if is("UNWATCH") {
            Step::Unwatch
        } else if is("RESET") {
            Step::Reset
        } else {
            Step::Other
        }
    }
}

/// What Redis holds for a connection, as of the last request sent on it.
/// Exact as long as Redis runs the requests in order: MULTI fails only
/// inside a MULTI, EXEC and DISCARD always end one (unwatching), and WATCH
/// and UNWATCH inside one are errors or queued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub in_multi: bool,
    pub watching: bool,
    /// sidecache refused a command inside the MULTI: its EXEC is a DISCARD.
    pub spoiled: bool,
}

impl Session {
    pub fn send(&mut self, step: Step) {
        match step {
            Step::Multi => self.in_multi = true,
            Step::Exec | Step::Discard if self.in_multi => *self = Session::default(),
            Step::Watch if !self.in_multi => self.watching = true,
            Step::Unwatch if !self.in_multi => self.watching = false,
            Step::Reset => *self = Session::default(),
            _ => {}
        }
    }

    /// Whether Redis holds nothing for the connection.
    pub fn is_clean(&self) -> bool {
        !self.in_multi && !self.watching
    }
}

/// One pinned connection.
pub struct Pinned {
    pub backend: Backend<PinnedRequest>,
    /// `None` while pooled, or once its client left.
    pub owner: Option<Owner>,
    /// The protocol Redis speaks on it, after the requests sent so far.
    pub protocol: Protocol,
    pub session: Session,
    /// Keys written by the commands queued in the open transaction.
    pub tx_writes: Option<Rewrites>,
    /// Already in the server's list of pinned connections to write.
    pub flush_queued: bool,
    /// Redis's id for the connection, for CLIENT UNBLOCK.
    pub redis_id: Option<i64>,
}

impl Pinned {
    pub fn new(backend: Backend<PinnedRequest>) -> Pinned {
        Pinned {
            backend,
            owner: None,
            protocol: Protocol::Resp2,
            session: Session::default(),
            tx_writes: None,
            flush_queued: false,
            redis_id: None,
        }
    }

    /// Whether the connection can serve another client as it is.
    pub fn is_reusable(&self) -> bool {
        self.session.is_clean() && self.backend.in_flight() == 0 && self.backend.is_ready()
    }

    /// Whether its client's state there has ended and nothing is in flight,
    /// so the client goes back to the shared connection.
    pub fn is_done(&self) -> bool {
        self.session.is_clean() && self.backend.in_flight() == 0
    }

    /// Keeps what a queued command writes, to drop once EXEC has run;
    /// outside a transaction the writes go with the command's own reply.
    pub fn note_writes(&mut self, rewrites: Option<Rewrites>) -> Option<Box<Rewrites>> {
        let rewrites = rewrites?;
        if !self.session.in_multi {
            return Some(Box::new(rewrites));
        }
        match &mut self.tx_writes {
            Some(all) => all.merge(rewrites),
            None => self.tx_writes = Some(rewrites),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_follows_redis() {
        let mut s = Session::default();
        s.send(Step::Watch);
        assert!(s.watching && !s.is_clean());
        s.send(Step::Multi);
        // Inside MULTI these are queued or refused by Redis: no change.
        s.send(Step::Unwatch);
        s.send(Step::Watch);
        assert!(s.in_multi && s.watching);
        s.send(Step::Multi); // nested: an error, still in the MULTI
        assert!(s.in_multi);
        s.send(Step::Exec);
        assert!(s.is_clean(), "EXEC ends the MULTI and unwatches");
        s.send(Step::Exec); // EXEC without MULTI: an error, nothing held
        assert!(s.is_clean());
        s.send(Step::Watch);
        s.send(Step::Unwatch);
        assert!(s.is_clean());
        s.send(Step::Watch);
        s.send(Step::Discard); // DISCARD without MULTI keeps the watch
        assert!(s.watching);
        s.send(Step::Multi);
        s.send(Step::Discard);
        assert!(s.is_clean());
        s.send(Step::Watch);
        s.send(Step::Multi);
        s.send(Step::Reset);
        assert!(s.is_clean());
    }

    #[test]
    fn steps_by_name() {
        assert_eq!(Step::of(b"multi"), Step::Multi);
        assert_eq!(Step::of(b"ExEc"), Step::Exec);
        assert_eq!(Step::of(b"GET"), Step::Other);
    }
}
