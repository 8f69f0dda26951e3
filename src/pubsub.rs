//! Pub/sub, fanned out: which sidecache clients listen to which channel,
//! pattern or shard channel, and the acknowledgements Redis would send them.
//!
//! sidecache holds one connection to Redis for every subscription, with one
//! SUBSCRIBE per channel however many clients listen to it. Each client's
//! own subscriptions and counts are kept here, so its acknowledgements are
//! Redis's bytes, and a message reaches a client only once Redis confirmed
//! the subscription it arrived for: a PUBLISH made after a client saw its
//! acknowledgement always reaches it, and one made before never does.
//! Pure: no sockets; the server sends what this module asks for.

use crate::resp::Protocol;
use hashlink::{LinkedHashMap, LinkedHashSet};
use std::collections::HashMap;

/// The three kinds of subscription Redis has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// SUBSCRIBE / UNSUBSCRIBE, delivering `message`.
    Channel,
    /// PSUBSCRIBE / PUNSUBSCRIBE, delivering `pmessage`.
    Pattern,
    /// SSUBSCRIBE / SUNSUBSCRIBE, delivering `smessage`.
    Shard,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Channel => 0,
            Kind::Pattern => 1,
            Kind::Shard => 2,
        }
    }

    /// The command, lower case, as Redis names it in acknowledgements.
    pub fn subscribe_name(self) -> &'static str {
        match self {
            Kind::Channel => "subscribe",
            Kind::Pattern => "psubscribe",
            Kind::Shard => "ssubscribe",
        }
    }

    pub fn unsubscribe_name(self) -> &'static str {
        match self {
            Kind::Channel => "unsubscribe",
            Kind::Pattern => "punsubscribe",
            Kind::Shard => "sunsubscribe",
        }
    }
}

/// One client's subscriptions, in the order it made them.
#[derive(Default)]
pub struct ClientSubscriptions {
    sets: [LinkedHashSet<Box<[u8]>>; 3],
}

impl ClientSubscriptions {
    /// The count Redis puts in an acknowledgement of `kind`: channels and
    /// patterns count together, shard channels on their own.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Channel | Kind::Pattern => self.sets[0].len() + self.sets[1].len(),
            Kind::Shard => self.sets[2].len(),
        }
    }

    /// Whether the client is in pub/sub mode (which restricts a RESP2 client's commands).
    pub fn any(&self) -> bool {
        self.sets.iter().any(|s| !s.is_empty())
    }

    /// Adds a subscription; false if the client had it already.
    pub fn add(&mut self, kind: Kind, name: &[u8]) -> bool {
        if self.sets[kind.index()].contains(name) {
            return false;
        }
        self.sets[kind.index()].insert(Box::from(name))
    }

    /// Removes a subscription; false if the client did not have it.
    pub fn remove(&mut self, kind: Kind, name: &[u8]) -> bool {
        self.sets[kind.index()].remove(name)
    }

    /// The client's subscriptions of `kind`, oldest first.
    pub fn names(&self, kind: Kind) -> Vec<Box<[u8]>> {
        self.sets[kind.index()].iter().cloned().collect()
    }

    /// Empties the set, returning every subscription it held.
    pub fn take_all(&mut self) -> Vec<(Kind, Box<[u8]>)> {
        let mut all = Vec::new();
        for kind in [Kind::Channel, Kind::Pattern, Kind::Shard] {
            let set = std::mem::take(&mut self.sets[kind.index()]);
            all.extend(set.into_iter().map(|name| (kind, name)));
        }
        all
    }
}

/// An acknowledgement as Redis sends it: `[kind-name, channel or nil, count]`,
/// an array in RESP2 and a push in RESP3.
pub fn ack(out: &mut Vec<u8>, protocol: Protocol, what: &str, name: Option<&[u8]>, count: usize) {
    push_header(out, 3, protocol);
    crate::resp::bulk(out, what.as_bytes());
    match name {
        Some(name) => crate::resp::bulk(out, name),
        None => crate::resp::null(out, protocol),
    }
    crate::resp::integer(out, count as i64);
}

/// The header of an out-of-band message: `*n` in RESP2, `>n` in RESP3.
pub fn push_header(out: &mut Vec<u8>, n: usize, protocol: Protocol) {
    let marker = match protocol {
        Protocol::Resp2 => b'*',
        Protocol::Resp3 => b'>',
    };
    out.push(marker);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A reply slot of a client waiting for Redis to confirm a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub key: usize,
    pub id: u64,
    pub seq: u64,
    /// The acknowledgement to fill the slot with.
    pub ack: Vec<u8>,
}

/// What the server must do after a client subscribes.
#[derive(Debug, PartialEq, Eq)]
pub enum Subscribed {
    /// Redis already delivers this channel to sidecache: acknowledge now.
    Now,
    /// A SUBSCRIBE for it is on its way: acknowledge once it is confirmed
    /// (reserve a slot and `wait`).
    Later,
    /// Nobody listened: send SUBSCRIBE to Redis, then as `Later`.
    SendSubscribe,
}

/// One channel, pattern or shard channel that sidecache listens to for its clients.
#[derive(Default)]
struct Entry {
    /// Redis acknowledged sidecache's SUBSCRIBE: messages may be delivered.
    confirmed: bool,
    /// The clients listening, by client id, with their slab keys.
    subscribers: LinkedHashMap<u64, usize>,
    /// Acknowledgements held back until Redis confirms.
    waiters: Vec<Waiter>,
}

/// Every subscription sidecache holds at Redis on behalf of its clients.
/// An entry exists from its SUBSCRIBE until its UNSUBSCRIBE is sent, and is
/// removed only once confirmed, so each SUBSCRIBE reply belongs to the one
/// entry that sent it.
#[derive(Default)]
pub struct Channels {
    /// By kind (`Kind::index`), then name: a lookup borrows the name.
    entries: [HashMap<Box<[u8]>, Entry>; 3],
}

impl Channels {
    fn of(&mut self, kind: Kind) -> &mut HashMap<Box<[u8]>, Entry> {
        &mut self.entries[kind.index()]
    }

    fn get(&self, kind: Kind, name: &[u8]) -> Option<&Entry> {
        self.entries[kind.index()].get(name)
    }

    /// Adds client `id` (in slab slot `key`) to the listeners of `name`.
    pub fn subscribe(&mut self, kind: Kind, name: &[u8], key: usize, id: u64) -> Subscribed {
        let entries = self.of(kind);
        let new = !entries.contains_key(name);
        let entry = entries.entry(Box::from(name)).or_default();
        entry.subscribers.insert(id, key);
        match (entry.confirmed, new) {
            (true, _) => Subscribed::Now,
            (false, false) => Subscribed::Later,
            (false, true) => Subscribed::SendSubscribe,
        }
    }

    /// Holds an acknowledgement until Redis confirms `name`.
    pub fn wait(&mut self, kind: Kind, name: &[u8], waiter: Waiter) {
        if let Some(entry) = self.of(kind).get_mut(name) {
            entry.waiters.push(waiter);
        }
    }

    /// Removes client `id` from the listeners of `name`. True when nobody
    /// listens any more and Redis was told to deliver it: the caller sends
    /// UNSUBSCRIBE (the entry is gone).
    pub fn unsubscribe(&mut self, kind: Kind, name: &[u8], id: u64) -> bool {
        let Some(entry) = self.of(kind).get_mut(name) else {
            return false;
        };
        entry.subscribers.remove(&id);
        if entry.confirmed && entry.subscribers.is_empty() {
            self.of(kind).remove(name);
            return true;
        }
        false
    }

    /// Whether client `id` is the only listener of `name` and Redis
    /// delivers it: unsubscribing it would send UNSUBSCRIBE.
    pub fn is_last(&self, kind: Kind, name: &[u8], id: u64) -> bool {
        self.get(kind, name).is_some_and(|e| {
            e.confirmed && e.subscribers.len() == 1 && e.subscribers.contains_key(&id)
        })
    }

    /// Redis confirmed sidecache's SUBSCRIBE: returns the held
    /// acknowledgements, and whether nobody listens any more (the caller
    /// then sends UNSUBSCRIBE at once).
    pub fn confirm(&mut self, kind: Kind, name: &[u8]) -> (Vec<Waiter>, bool) {
        let Some(entry) = self.of(kind).get_mut(name) else {
            return (Vec::new(), false);
        };
        entry.confirmed = true;
        let waiters = std::mem::take(&mut entry.waiters);
        let abandoned = entry.subscribers.is_empty();
        if abandoned {
            self.of(kind).remove(name);
        }
        (waiters, abandoned)
    }

    /// Redis refused sidecache's SUBSCRIBE: forgets the entry and returns
    /// who waited for it and who listened.
    pub fn refuse(&mut self, kind: Kind, name: &[u8]) -> (Vec<Waiter>, Vec<(u64, usize)>) {
        match self.of(kind).remove(name) {
            Some(entry) => (entry.waiters, entry.subscribers.into_iter().collect()),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// The clients a message for `name` goes to: none until Redis confirmed it.
    pub fn listeners(&self, kind: Kind, name: &[u8]) -> Vec<(u64, usize)> {
        match self.get(kind, name) {
            Some(entry) if entry.confirmed => entry
                .subscribers
                .iter()
                .map(|(&id, &key)| (id, key))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Forgets everything (the connection to Redis is gone); returns every
    /// held acknowledgement so its slot can be answered.
    pub fn clear(&mut self) -> Vec<Waiter> {
        self.entries
            .iter_mut()
            .flat_map(|entries| entries.drain())
            .flat_map(|(_, entry)| entry.waiters)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(HashMap::is_empty)
    }

    /// How many receivers a PUBLISH (`Kind::Channel`) or SPUBLISH
    /// (`Kind::Shard`) to `channel` has among sidecache's subscriptions:
    /// as Redis counts sidecache's one connection (a channel and each
    /// matching pattern once), and as Redis would count sidecache's
    /// clients had they subscribed directly.
    pub fn receivers(&self, kind: Kind, channel: &[u8]) -> (usize, usize) {
        // Shard channels match by name only; channels by name and by
        // every pattern.
        let patterns = match kind {
            Kind::Channel => &self.entries[Kind::Pattern.index()],
            _ => &HashMap::new(),
        };
        let matching = patterns
            .iter()
            .filter(|(pattern, _)| glob_match(pattern, channel))
            .map(|(_, entry)| entry);
        let confirmed = self
            .get(kind, channel)
            .into_iter()
            .chain(matching)
            .filter(|entry| entry.confirmed);
        confirmed.fold((0, 0), |(connection, clients), entry| {
            (connection + 1, clients + entry.subscribers.len())
        })
    }
}

/// Whether `subject` matches the glob-style `pattern` as Redis matches
/// PSUBSCRIBE patterns: `*`, `?`, `[abc]`, `[^a-z]`, and `\` escapes.
pub fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0, 0);
    // Where the last `*` was, and where in the subject it is tried up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while s < subject.len() {
        if pattern.get(p) == Some(&b'*') {
            backtrack = Some((p, s));
            p += 1;
            continue;
        }
        if let Some(next) = match_one(pattern, p, subject[s]) {
            p = next;
            s += 1;
            continue;
        }
        match backtrack {
            Some((star, tried)) => {
                p = star + 1;
                s = tried + 1;
                backtrack = Some((star, tried + 1));
            }
            None => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// If the pattern element at `p` (not a `*`) matches byte `c`, where the next element starts.
fn match_one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            while i < pattern.len() && pattern[i] != b']' {
                if pattern[i] == b'\\' && i + 1 < pattern.len() {
                    matched |= pattern[i + 1] == c;
                    i += 2;
                } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
                    let (a, b) = (pattern[i], pattern[i + 2]);
                    matched |= (a.min(b)..=a.max(b)).contains(&c);
                    i += 3;
                } else {
                    matched |= pattern[i] == c;
                    i += 1;
                }
            }
            (matched != negate).then_some((i + 1).min(pattern.len()))
        }
        literal => (literal == c).then_some(p + 1),
    }
}

/// What a frame read on the pub/sub connection is.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A message for the listeners of `name`.
    Message { kind: Kind, name: &'a [u8] },
    /// The answer to one of sidecache's own requests.
    Reply,
}

/// Classifies a frame by its first element, the way Redis tags pub/sub traffic.
pub fn classify(frame: &crate::resp::Value) -> Incoming<'_> {
    let Some(items) = frame.as_array() else {
        return Incoming::Reply;
    };
    let tag = items.first().and_then(|v| v.as_bytes());
    let name = |i: usize| items.get(i).and_then(|v| v.as_bytes());
    match (tag, items.len()) {
        (Some(b"message"), 3) => name(1).map_or(Incoming::Reply, |name| Incoming::Message {
            kind: Kind::Channel,
            name,
        }),
        (Some(b"smessage"), 3) => name(1).map_or(Incoming::Reply, |name| Incoming::Message {
            kind: Kind::Shard,
            name,
        }),
        (Some(b"pmessage"), 4) => name(1).map_or(Incoming::Reply, |name| Incoming::Message {
            kind: Kind::Pattern,
            name,
        }),
        _ => Incoming::Reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::parse_value;

    #[test]
    fn acknowledgements_are_redis_bytes() {
        let mut out = Vec::new();
        ack(&mut out, Protocol::Resp2, "subscribe", Some(b"ch"), 1);
        assert_eq!(out, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
        out.clear();
        ack(&mut out, Protocol::Resp3, "unsubscribe", None, 0);
        assert_eq!(out, b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
        out.clear();
        ack(&mut out, Protocol::Resp2, "unsubscribe", None, 0);
        assert_eq!(out, b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
    }

    #[test]
    fn counts_follow_redis() {
        let mut s = ClientSubscriptions::default();
        assert!(s.add(Kind::Channel, b"a"));
        assert!(!s.add(Kind::Channel, b"a"));
        assert!(s.add(Kind::Pattern, b"a*"));
        assert!(s.add(Kind::Shard, b"s"));
        assert_eq!(s.count(Kind::Channel), 2);
        assert_eq!(s.count(Kind::Pattern), 2);
        assert_eq!(s.count(Kind::Shard), 1);
        assert!(s.remove(Kind::Channel, b"a"));
        assert!(!s.remove(Kind::Channel, b"a"));
        assert!(s.any());
        assert_eq!(s.take_all().len(), 2);
        assert!(!s.any());
    }

    #[test]
    fn one_subscribe_per_channel_and_messages_only_once_confirmed() {
        let mut r = Channels::default();
        assert_eq!(
            r.subscribe(Kind::Channel, b"ch", 1, 10),
            Subscribed::SendSubscribe
        );
        assert_eq!(r.subscribe(Kind::Channel, b"ch", 2, 20), Subscribed::Later);
        assert!(r.listeners(Kind::Channel, b"ch").is_empty());
        let waiter = |id| Waiter {
            key: 0,
            id,
            seq: 0,
            ack: Vec::new(),
        };
        r.wait(Kind::Channel, b"ch", waiter(10));
        r.wait(Kind::Channel, b"ch", waiter(20));
        let (waiters, abandoned) = r.confirm(Kind::Channel, b"ch");
        assert_eq!(waiters.len(), 2);
        assert!(!abandoned);
        assert_eq!(r.listeners(Kind::Channel, b"ch"), vec![(10, 1), (20, 2)]);
        assert_eq!(r.subscribe(Kind::Channel, b"ch", 3, 30), Subscribed::Now);
        assert!(!r.unsubscribe(Kind::Channel, b"ch", 10));
        assert!(!r.unsubscribe(Kind::Channel, b"ch", 20));
        assert!(r.unsubscribe(Kind::Channel, b"ch", 30), "the last one out");
        assert!(r.is_empty());
    }

    #[test]
    fn an_entry_abandoned_before_confirmation_waits_for_it() {
        let mut r = Channels::default();
        r.subscribe(Kind::Pattern, b"p*", 1, 10);
        // Not confirmed yet: its SUBSCRIBE reply must still find it.
        assert!(!r.unsubscribe(Kind::Pattern, b"p*", 10));
        let (_, abandoned) = r.confirm(Kind::Pattern, b"p*");
        assert!(abandoned);
        assert!(r.is_empty());
    }

    #[test]
    fn globs_match_as_redis_does() {
        for (pattern, subject, expected) in [
            ("*", "", true),
            ("*", "anything", true),
            ("ch*", "channel", true),
            ("ch*", "xchannel", false),
            ("c?annel", "channel", true),
            ("c?annel", "cannel", false),
            ("*.foo.*", "a.foo.b", true),
            ("*.foo.*", "a.bar.b", false),
            ("h[ae]llo", "hello", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("h[c-a]llo", "hbllo", true),
            ("h[a-c]llo", "hdllo", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("**a**b**", "xxaxxbxx", true),
            ("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), subject.as_bytes()),
                expected,
                "{pattern} vs {subject}"
            );
        }
    }

    #[test]
    fn publish_receivers_count_clients_not_the_connection() {
        let mut r = Channels::default();
        r.subscribe(Kind::Channel, b"news", 1, 10);
        r.subscribe(Kind::Channel, b"news", 2, 20);
        r.subscribe(Kind::Pattern, b"n*", 1, 10);
        r.subscribe(Kind::Pattern, b"x*", 3, 30);
        r.confirm(Kind::Channel, b"news");
        r.confirm(Kind::Pattern, b"n*");
        r.confirm(Kind::Pattern, b"x*");
        assert_eq!(r.receivers(Kind::Channel, b"news"), (2, 3));
        assert_eq!(r.receivers(Kind::Channel, b"nope"), (1, 1));
        assert_eq!(r.receivers(Kind::Shard, b"news"), (0, 0));
    }

    #[test]
    fn tells_messages_from_replies() {
        let message = parse_value(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n").unwrap();
        assert_eq!(
            classify(&message),
            Incoming::Message {
                kind: Kind::Channel,
                name: b"ch"
            }
        );
        let pmessage =
            parse_value(b"*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$1\r\nx\r\n").unwrap();
        assert_eq!(
            classify(&pmessage),
            Incoming::Message {
                kind: Kind::Pattern,
                name: b"c*"
            }
        );
        let reply = parse_value(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n").unwrap();
        assert_eq!(classify(&reply), Incoming::Reply);
        let pong = parse_value(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").unwrap();
        assert_eq!(classify(&pong), Incoming::Reply);
    }
}
