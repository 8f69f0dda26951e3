//! The cache of GET replies: at most `capacity` keys and `max_memory` bytes
//! (keys, values and a per-entry overhead), least recently used evicted
//! first, each entry served until the earlier of `ttl` after it was stored
//! and the key's own expiry in Redis. Replies over `max_value_size` are
//! never stored.
//!
//! It also keeps the cache from lying: a GET reply is stored only with a
//! fill ticket taken when the GET was sent, and any invalidation of that key
//! (a write through sidecache, a message from Redis's client tracking) or
//! any clear since then voids the ticket. While the server cannot keep the
//! cache coherent (`serving` is off), nothing is served or stored.
//!
//! Pure: the clock comes in as an argument, so tests need no sleeps. Entries
//! hold the reply exactly as Redis sent it, so a hit is a copy into a
//! client's output and never a re-encode.

use crate::lru::{Lookup, Lru};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Permission to store the reply of one GET, taken when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket(u64);

/// What one entry costs beyond its key and reply bytes: its 40-byte node,
/// its slot in the hash table (4 bytes, at most 8/7 slots per entry), and
/// the allocator's bookkeeping and rounding for its one allocation.
pub const ENTRY_OVERHEAD: usize = 64;

/// An entry's expiry as the LRU map stores it: milliseconds after the
/// cache's epoch, rounded down (an entry may expire a little early, never
/// late); `NEVER` when it does not expire.
const NEVER: u64 = u64::MAX;

fn entry_size(key_len: usize, stored_len: usize) -> usize {
    key_len + stored_len + ENTRY_OVERHEAD
}

/// A cached GET reply as served.
#[derive(Debug, PartialEq, Eq)]
pub enum Hit<'a> {
    /// A bulk string's value, without its `$<len>` header and final CRLF.
    Value(&'a [u8]),
    /// The key did not exist.
    Nil,
}

/// Tags of stored replies: a byte before the value, which costs nothing
/// where the allocator rounds up anyway and saves the RESP framing.
const TAG_VALUE: u8 = b'$';
const TAG_NIL: u8 = b'_';

/// A GET reply as stored: its tag and value, or `None` when it is not a
/// bulk string or a nil (RESP2's `$-1` or RESP3's `_`).
fn stored_form(reply: &[u8]) -> Option<(u8, &[u8])> {
    if reply == b"$-1\r\n" || reply == b"_\r\n" {
        return Some((TAG_NIL, &[]));
    }
    let rest = reply.strip_prefix(b"$")?;
    let header_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(&rest[..header_end])
        .ok()?
        .parse()
        .ok()?;
    let value = rest.get(header_end + 2..)?.strip_suffix(b"\r\n")?;
    (value.len() == len).then_some((TAG_VALUE, value))
}

/// Pending fills kept room for once none is in flight.
const KEEP_IDLE_FILLS: usize = 1024;

/// How many entries the limits allow, to reserve address space for.
fn expected_entries(limits: &Limits) -> usize {
    limits
        .capacity
        .min(limits.max_memory / ENTRY_OVERHEAD)
        .min(1 << 24)
}

/// GETs of one key in flight with a ticket. Kept only while some are, so
/// memory is bounded by the requests in flight.
struct PendingFills {
    outstanding: u32,
    /// Tickets below this were voided by an invalidation of the key.
    valid_from: u64,
}

/// How much the cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries; 0 turns caching off.
    pub capacity: usize,
    /// Longest life of an entry; `None`: until evicted or invalidated.
    pub ttl: Option<Duration>,
    /// Most bytes: keys, replies and `ENTRY_OVERHEAD` per entry.
    pub max_memory: usize,
    /// Largest reply stored.
    pub max_value_size: usize,
}

/// The keys a forwarded write touches, or all of them: dropped from the
/// cache when the write is sent, and again when its reply arrives, since a
/// GET on another connection to Redis may run before the write although
/// it was sent after it.
#[derive(Debug)]
pub enum Rewrites {
    Keys(Vec<Box<[u8]>>),
    Everything,
}

impl Rewrites {
    /// Adds what `other` touches.
    pub fn merge(&mut self, other: Rewrites) {
        match (self, other) {
            (Rewrites::Everything, _) => {}
            (this, Rewrites::Everything) => *this = Rewrites::Everything,
            (Rewrites::Keys(keys), Rewrites::Keys(more)) => keys.extend(more),
        }
    }

    /// Drops what it names from `cache`.
    pub fn apply(&self, cache: &mut Cache) {
        match self {
            Rewrites::Keys(keys) => {
                for key in keys {
                    cache.invalidate(key);
                }
            }
            Rewrites::Everything => cache.clear(),
        }
    }
}

pub struct Cache {
    /// `None` when caching is off (`--capacity 0`). Unbounded by count in
    /// hashlink: the count and byte limits are enforced here, so that every
    /// eviction is seen and accounted.
    entries: Option<Lru>,
    /// What entry expiries are counted from.
    epoch: Instant,
    limits: Limits,
    /// Bytes held: keys, replies and `ENTRY_OVERHEAD` per entry.
    used: usize,
    serving: bool,
    fills: HashMap<Box<[u8]>, PendingFills>,
    next_ticket: u64,
    /// Tickets below this were voided by a clear.
    valid_from: u64,
    /// Entries evicted to make room, and found expired, since start.
    pub evicted: u64,
    pub expired: u64,
}

impl Cache {
    /// An empty cache within `limits`. It starts not serving.
    pub fn new(limits: Limits) -> Self {
        Cache {
            entries: (limits.capacity > 0).then(|| Lru::with_capacity(expected_entries(&limits))),
            epoch: Instant::now(),
            limits,
            used: 0,
            serving: false,
            fills: HashMap::new(),
            next_ticket: 0,
            valid_from: 0,
            evicted: 0,
            expired: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    pub fn is_serving(&self) -> bool {
        self.serving && self.is_enabled()
    }

    /// Turns serving on or off. Either way the cache starts empty: what was
    /// stored before may no longer be true.
    pub fn set_serving(&mut self, serving: bool) {
        if self.serving != serving {
            self.serving = serving;
            self.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    /// Bytes held, keys, values and overhead.
    pub fn memory(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached reply for `key`, marking it most recently used. An entry
    /// past its expiry is removed and reported as a miss.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Hit<'_>> {
        if !self.serving {
            return None;
        }
        let now_ms = self.millis(now);
        match self
            .entries
            .as_mut()?
            .get_fresh(key, |stamp| now_ms >= stamp)
        {
            Lookup::Found(item) => match item.value.split_first() {
                Some((&TAG_VALUE, value)) => Some(Hit::Value(value)),
                _ => Some(Hit::Nil),
            },
            Lookup::Removed { key_len, value_len } => {
                self.used -= entry_size(key_len, value_len);
                self.expired += 1;
                None
            }
            Lookup::Missing => None,
        }
    }

    /// `at` as milliseconds since the epoch, rounded down.
    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A ticket for a GET of `key` about to be sent, or `None` when its
    /// reply could not be stored anyway. Every ticket must be given back
    /// through `complete_fill`, unless the cache is cleared first.
    pub fn fill_ticket(&mut self, key: &[u8]) -> Option<FillTicket> {
        if !self.is_serving() {
            return None;
        }
        let ticket = FillTicket(self.next_ticket);
        self.next_ticket += 1;
        match self.fills.get_mut(key) {
            Some(pending) => pending.outstanding += 1,
            None => {
                self.fills.insert(
                    key.into(),
                    PendingFills {
                        outstanding: 1,
                        valid_from: 0,
                    },
                );
            }
        }
        Some(ticket)
    }

    /// Whether a GET sent with `ticket` may still fill the cache: no write,
    /// invalidation or flush of `key` came since. A GET arriving now may
    /// then share that GET's reply rather than send its own.
    pub fn fill_is_valid(&self, key: &[u8], ticket: FillTicket) -> bool {
        ticket.0 >= self.valid_from
            && self
                .fills
                .get(key)
                .is_some_and(|pending| ticket.0 >= pending.valid_from)
    }

    /// Gives back the ticket of a GET whose reply arrived, storing `reply`
    /// if the ticket is still valid. `key_expires_at` is when the key
    /// expires in Redis, if it does. Returns whether it was stored.
    pub fn complete_fill(
        &mut self,
        key: &[u8],
        ticket: FillTicket,
        reply: Option<&[u8]>,
        key_expires_at: Option<Instant>,
        now: Instant,
    ) -> bool {
        if ticket.0 < self.valid_from {
            return false; // voided by a clear, which also forgot the pending fill
        }
        let Some(pending) = self.fills.get_mut(key) else {
            debug_assert!(false, "a valid ticket without a pending fill");
            return false;
        };
        let valid = ticket.0 >= pending.valid_from;
        pending.outstanding -= 1;
        if pending.outstanding == 0 {
            self.fills.remove(key);
            // After a burst of misses, give the table's memory back.
            if self.fills.is_empty() && self.fills.capacity() > KEEP_IDLE_FILLS {
                self.fills = HashMap::new();
            }
        }
        let (Some(reply), true, true) = (reply, valid, self.entries.is_some()) else {
            return false;
        };
        let Some((tag, value)) = stored_form(reply) else {
            return false;
        };
        let size = entry_size(key.len(), 1 + value.len());
        if value.len() > self.limits.max_value_size || size > self.limits.max_memory {
            return false;
        }
        self.remove(key);
        self.make_room(size);
        let ttl_expiry = self.limits.ttl.map(|ttl| now + ttl);
        let expires_at = match (ttl_expiry, key_expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let stamp = expires_at.map_or(NEVER, |at| self.millis(at));
        let Some(entries) = self.entries.as_mut() else {
            return false;
        };
        if !entries.insert_new(key, [&[tag], value], stamp) {
            return false;
        }
        self.used += size;
        true
    }

    /// Evicts least recently used entries until one of `size` bytes fits
    /// within both limits.
    fn make_room(&mut self, size: usize) {
        let Some(entries) = self.entries.as_mut() else {
            return;
        };
        while !entries.is_empty()
            && (entries.len() >= self.limits.capacity || self.used + size > self.limits.max_memory)
        {
            if let Some((key_len, reply_len)) = entries.pop_lru() {
                self.used -= entry_size(key_len, reply_len);
                self.evicted += 1;
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some((key_len, reply_len)) = self.entries.as_mut().and_then(|e| e.remove(key)) {
            self.used -= entry_size(key_len, reply_len);
        }
    }

    /// The key changed in Redis: drop its entry and void every ticket
    /// taken for it so far.
    pub fn invalidate(&mut self, key: &[u8]) {
        self.remove(key);
        if let Some(pending) = self.fills.get_mut(key) {
            pending.valid_from = self.next_ticket;
        }
    }

    /// Drops every entry and voids every ticket taken so far.
    pub fn clear(&mut self) {
        if let Some(entries) = self.entries.as_mut() {
            entries.clear();
        }
        self.used = 0;
        self.fills.clear();
        self.valid_from = self.next_ticket;
    }

    /// GETs in flight holding a ticket, for tests and stats.
    pub fn pending_fills(&self) -> usize {
        self.fills.values().map(|p| p.outstanding as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    fn serving(capacity: usize, ttl: Option<Duration>) -> Cache {
        serving_within(Limits {
            capacity,
            ttl,
            max_memory: usize::MAX,
            max_value_size: usize::MAX,
        })
    }

    fn serving_within(limits: Limits) -> Cache {
        let mut cache = Cache::new(limits);
        cache.set_serving(true);
        cache
    }

    /// Fills `key` with `reply`: RESP as given if it starts with `$` or `_`, else
    /// as the value of a bulk string.
    fn filled(cache: &mut Cache, key: &str, reply: &str, now: Instant) -> bool {
        let reply = match reply.starts_with('$') || reply.starts_with('_') {
            true => reply.to_string(),
            false => format!("${}\r\n{reply}\r\n", reply.len()),
        };
        let Some(ticket) = cache.fill_ticket(key.as_bytes()) else {
            return false;
        };
        cache.complete_fill(key.as_bytes(), ticket, Some(reply.as_bytes()), None, now)
    }

    fn hit(cache: &mut Cache, key: &str, now: Instant) -> Option<String> {
        cache.get(key.as_bytes(), now).map(|hit| match hit {
            Hit::Value(v) => String::from_utf8(v.to_vec()).unwrap(),
            Hit::Nil => "(nil)".to_string(),
        })
    }

    #[test]
    fn a_fill_stays_shareable_until_its_key_changes() {
        let mut cache = serving(10, None);
        let ticket = cache.fill_ticket(b"k").unwrap();
        assert!(cache.fill_is_valid(b"k", ticket));
        assert!(!cache.fill_is_valid(b"other", ticket));
        cache.invalidate(b"k");
        assert!(!cache.fill_is_valid(b"k", ticket));
        let again = cache.fill_ticket(b"k").unwrap();
        assert!(cache.fill_is_valid(b"k", again));
        cache.clear();
        assert!(!cache.fill_is_valid(b"k", again));
    }

    #[test]
    fn hit_after_fill_and_miss_before() {
        let now = Instant::now();
        let mut cache = serving(10, HOUR);
        assert_eq!(hit(&mut cache, "k", now), None);
        assert!(filled(&mut cache, "k", "$1\r\nv\r\n", now));
        assert_eq!(hit(&mut cache, "k", now).as_deref(), Some("v"));
        assert!(filled(&mut cache, "nil", "$-1\r\n", now));
        assert_eq!(hit(&mut cache, "nil", now).as_deref(), Some("(nil)"));
        assert!(filled(&mut cache, "nil3", "_\r\n", now));
        assert_eq!(hit(&mut cache, "nil3", now).as_deref(), Some("(nil)"));
        // Not a bulk string: never stored.
        assert!(!filled(&mut cache, "e", "$-ERR x\r\n", now));
        assert!(!filled(&mut cache, "short", "$5\r\nabc\r\n", now));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.pending_fills(), 0);
    }

    #[test]
    fn evicts_least_recently_used() {
        let now = Instant::now();
        let mut cache = serving(2, HOUR);
        filled(&mut cache, "a", "A", now);
        filled(&mut cache, "b", "B", now);
        assert!(hit(&mut cache, "a", now).is_some()); // a is now the most recent
        filled(&mut cache, "c", "C", now);
        assert_eq!(hit(&mut cache, "b", now), None);
        assert_eq!(hit(&mut cache, "a", now).as_deref(), Some("A"));
        assert_eq!(hit(&mut cache, "c", now).as_deref(), Some("C"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn refill_replaces_and_does_not_grow() {
        let now = Instant::now();
        let mut cache = serving(2, HOUR);
        filled(&mut cache, "a", "old", now);
        filled(&mut cache, "a", "new", now);
        assert_eq!(hit(&mut cache, "a", now).as_deref(), Some("new"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn counts_bytes_and_evicts_to_stay_within_max_memory() {
        let now = Instant::now();
        let value = "v".repeat(100);
        // Stored as a tag byte and the value.
        let one = entry_size(2, 1 + value.len());
        let mut cache = serving_within(Limits {
            capacity: 1000,
            ttl: HOUR,
            max_memory: 3 * one,
            max_value_size: usize::MAX,
        });
        for i in 0..3 {
            assert!(filled(&mut cache, &format!("k{i}"), &value, now));
        }
        assert_eq!(cache.memory(), 3 * one);
        assert!(hit(&mut cache, "k0", now).is_some()); // k1 is now the least recent
        assert!(filled(&mut cache, "k3", &value, now));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.memory(), 3 * one);
        assert_eq!(hit(&mut cache, "k1", now), None);
        cache.invalidate(b"k0");
        assert_eq!(cache.memory(), 2 * one);
        // A bigger value pushes out as many as it needs.
        let big = "b".repeat(2 * 100 + ENTRY_OVERHEAD);
        assert!(filled(&mut cache, "k4", &big, now));
        assert!(
            cache.memory() <= 3 * one,
            "{} > {}",
            cache.memory(),
            3 * one
        );
        assert_eq!(cache.len(), 2, "one entry had to go to make room");
        cache.clear();
        assert_eq!(cache.memory(), 0);
    }

    #[test]
    fn values_over_the_limit_are_not_stored() {
        let now = Instant::now();
        let mut cache = serving_within(Limits {
            capacity: 10,
            ttl: HOUR,
            max_memory: usize::MAX,
            max_value_size: 10,
        });
        assert!(filled(&mut cache, "small", "$10\r\n0123456789\r\n", now));
        assert!(!filled(&mut cache, "big", "$11\r\n0123456789a\r\n", now));
        assert_eq!(hit(&mut cache, "big", now), None);
        assert_eq!(cache.pending_fills(), 0);
    }

    #[test]
    fn replacing_an_entry_accounts_for_the_old_one() {
        let now = Instant::now();
        let mut cache = serving(10, HOUR);
        filled(&mut cache, "k", "short", now);
        filled(&mut cache, "k", "a longer value", now);
        assert_eq!(cache.memory(), entry_size(1, 1 + "a longer value".len()));
        let expiry = now + Duration::from_secs(1);
        let t = cache.fill_ticket(b"e").unwrap();
        assert!(cache.complete_fill(b"e", t, Some(b"$1\r\nx\r\n"), Some(expiry), now));
        assert_eq!(hit(&mut cache, "e", expiry), None);
        assert_eq!(cache.memory(), entry_size(1, 1 + "a longer value".len()));
    }

    #[test]
    fn expires_after_ttl_on_access() {
        let start = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut cache = serving(10, Some(ttl));
        filled(&mut cache, "k", "v", start);
        assert!(hit(&mut cache, "k", start + ttl - Duration::from_millis(1)).is_some());
        assert_eq!(hit(&mut cache, "k", start + ttl), None);
        assert_eq!(cache.len(), 0, "an expired entry is removed when found");
    }

    #[test]
    fn never_outlives_the_keys_own_expiry() {
        let start = Instant::now();
        let mut cache = serving(10, HOUR);
        let ticket = cache.fill_ticket(b"k").unwrap();
        let key_expiry = start + Duration::from_millis(300);
        assert!(cache.complete_fill(b"k", ticket, Some(b"$1\r\nv\r\n"), Some(key_expiry), start));
        assert!(hit(&mut cache, "k", key_expiry - Duration::from_millis(1)).is_some());
        assert_eq!(hit(&mut cache, "k", key_expiry), None);
    }

    #[test]
    fn no_ttl_means_no_expiry() {
        let start = Instant::now();
        let mut cache = serving(10, None);
        filled(&mut cache, "k", "v", start);
        let much_later = start + Duration::from_secs(365 * 24 * 3600);
        assert!(hit(&mut cache, "k", much_later).is_some());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let now = Instant::now();
        let mut cache = serving(0, HOUR);
        assert!(!cache.is_enabled());
        assert!(cache.fill_ticket(b"k").is_none());
        assert_eq!(hit(&mut cache, "k", now), None);
    }

    #[test]
    fn nothing_served_or_stored_while_not_serving() {
        let now = Instant::now();
        let mut cache = serving(10, HOUR);
        filled(&mut cache, "k", "v", now);
        let ticket = cache.fill_ticket(b"in-flight").unwrap();
        cache.set_serving(false);
        assert_eq!(hit(&mut cache, "k", now), None);
        assert!(cache.fill_ticket(b"k").is_none());
        assert!(!cache.complete_fill(b"in-flight", ticket, Some(b"$1\r\nv\r\n"), None, now));
        cache.set_serving(true);
        assert!(cache.is_empty(), "what was cached before the gap is gone");
        assert!(!cache.complete_fill(b"in-flight", ticket, Some(b"$1\r\nv\r\n"), None, now));
    }

    /// Every order of the three events of a GET miss that races a write:
    /// the ticket is taken (the GET is sent), the key is invalidated, the
    /// reply arrives. A reply may be stored only if its GET was sent after
    /// the last invalidation.
    #[test]
    fn an_invalidation_voids_the_fills_taken_before_it() {
        let now = Instant::now();
        // Sent, invalidated, reply: the reply may predate the write.
        let mut cache = serving(10, HOUR);
        let t = cache.fill_ticket(b"k").unwrap();
        cache.invalidate(b"k");
        assert!(!cache.complete_fill(b"k", t, Some(b"$3\r\nold\r\n"), None, now));
        assert_eq!(hit(&mut cache, "k", now), None);
        // Sent, reply, invalidated: stored, then dropped.
        let t = cache.fill_ticket(b"k").unwrap();
        assert!(cache.complete_fill(b"k", t, Some(b"$3\r\nold\r\n"), None, now));
        cache.invalidate(b"k");
        assert_eq!(hit(&mut cache, "k", now), None);
        // Invalidated, sent, reply: the GET saw the write.
        cache.invalidate(b"k");
        let t = cache.fill_ticket(b"k").unwrap();
        assert!(cache.complete_fill(b"k", t, Some(b"$3\r\nnew\r\n"), None, now));
        assert_eq!(hit(&mut cache, "k", now).as_deref(), Some("new"));
        assert_eq!(cache.pending_fills(), 0);
    }

    #[test]
    fn one_invalidation_voids_every_fill_of_the_key_before_it_only() {
        let now = Instant::now();
        let mut cache = serving(10, HOUR);
        let before1 = cache.fill_ticket(b"k").unwrap();
        let before2 = cache.fill_ticket(b"k").unwrap();
        let other = cache.fill_ticket(b"other").unwrap();
        cache.invalidate(b"k");
        let after = cache.fill_ticket(b"k").unwrap();
        assert!(!cache.complete_fill(b"k", before2, Some(b"$3\r\nold\r\n"), None, now));
        assert!(cache.complete_fill(b"k", after, Some(b"$3\r\nnew\r\n"), None, now));
        assert!(!cache.complete_fill(b"k", before1, Some(b"$3\r\nold\r\n"), None, now));
        assert_eq!(hit(&mut cache, "k", now).as_deref(), Some("new"));
        assert!(cache.complete_fill(b"other", other, Some(b"$1\r\no\r\n"), None, now));
        assert_eq!(cache.pending_fills(), 0);
    }

    #[test]
    fn clear_voids_tickets_taken_before() {
        let now = Instant::now();
        let mut cache = serving(10, HOUR);
        filled(&mut cache, "a", "A", now);
        let before = cache.fill_ticket(b"b").unwrap();
        cache.clear();
        assert!(cache.is_empty());
        assert!(!cache.complete_fill(b"b", before, Some(b"$1\r\nB\r\n"), None, now));
        assert_eq!(hit(&mut cache, "b", now), None);
        assert!(filled(&mut cache, "b", "B", now));
        assert_eq!(cache.pending_fills(), 0);
    }

    #[test]
    fn a_reply_that_is_not_a_value_gives_the_ticket_back() {
        let now = Instant::now();
        let mut cache = serving(10, HOUR);
        let t = cache.fill_ticket(b"k").unwrap();
        assert!(!cache.complete_fill(b"k", t, None, None, now));
        assert_eq!(cache.pending_fills(), 0);
        assert_eq!(hit(&mut cache, "k", now), None);
    }
}
