//! The cache of GET replies: at most `capacity` keys, least recently used
//! evicted first, each entry served for at most `ttl` after it was stored.
//!
//! Pure: the clock comes in as an argument, so tests need no sleeps. Entries
//! hold the reply exactly as Redis sent it, shared, so a hit is a copy into
//! a client's output and never a re-encode. It must never hand out an entry
//! past its TTL, and never store a reply whose fill ticket was cancelled.

use hashlink::LruCache;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Taken when a GET miss is sent to Redis; its reply may fill the cache
/// only while the ticket is still valid. Clearing the cache cancels every
/// ticket taken before, so a reply from before a reconnect or a flush is
/// never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket(u64);

struct Entry {
    reply: Rc<[u8]>,
    stored_at: Instant,
}

pub struct Cache {
    /// `None` when caching is off (`--capacity 0`).
    entries: Option<LruCache<Box<[u8]>, Entry>>,
    ttl: Option<Duration>,
    /// Bumped by `clear`, which cancels every outstanding fill ticket.
    epoch: u64,
}

impl Cache {
    /// A cache of at most `capacity` keys (0 turns it off) whose entries
    /// live at most `ttl` (`None`: until evicted).
    pub fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        Cache {
            entries: (capacity > 0).then(|| LruCache::new(capacity)),
            ttl,
            epoch: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached reply for `key`, marking it most recently used. An entry
    /// past its TTL is removed and reported as a miss.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Rc<[u8]>> {
        let entries = self.entries.as_mut()?;
        let entry = entries.get(key)?;
        let fresh = self
            .ttl
            .is_none_or(|ttl| now.saturating_duration_since(entry.stored_at) < ttl);
        if fresh {
            Some(Rc::clone(&entry.reply))
        } else {
            entries.remove(key);
            None
        }
    }

    /// A ticket for a GET of some key about to be sent to Redis.
    pub fn fill_ticket(&self) -> FillTicket {
        FillTicket(self.epoch)
    }

    /// Stores `reply` for `key` if `ticket` is still valid; evicts the least
    /// recently used entry when full. Returns whether it was stored.
    pub fn fill(&mut self, key: &[u8], reply: &[u8], ticket: FillTicket, now: Instant) -> bool {
        if ticket.0 != self.epoch {
            return false;
        }
        let Some(entries) = self.entries.as_mut() else {
            return false;
        };
        let entry = Entry {
            reply: Rc::from(reply),
            stored_at: now,
        };
        entries.insert(key.into(), entry);
        true
    }

    /// Drops every entry and cancels every outstanding fill ticket.
    pub fn clear(&mut self) {
        if let Some(entries) = self.entries.as_mut() {
            entries.clear();
        }
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    fn filled(cache: &mut Cache, key: &str, reply: &str, now: Instant) -> bool {
        let ticket = cache.fill_ticket();
        cache.fill(key.as_bytes(), reply.as_bytes(), ticket, now)
    }

    fn hit(cache: &mut Cache, key: &str, now: Instant) -> Option<String> {
        cache
            .get(key.as_bytes(), now)
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
    }

    #[test]
    fn hit_after_fill_and_miss_before() {
        let now = Instant::now();
        let mut cache = Cache::new(10, HOUR);
        assert_eq!(hit(&mut cache, "k", now), None);
        assert!(filled(&mut cache, "k", "$1\r\nv\r\n", now));
        assert_eq!(hit(&mut cache, "k", now).as_deref(), Some("$1\r\nv\r\n"));
        assert!(filled(&mut cache, "nil", "$-1\r\n", now));
        assert_eq!(hit(&mut cache, "nil", now).as_deref(), Some("$-1\r\n"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn evicts_least_recently_used() {
        let now = Instant::now();
        let mut cache = Cache::new(2, HOUR);
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
        let mut cache = Cache::new(2, HOUR);
        filled(&mut cache, "a", "old", now);
        filled(&mut cache, "a", "new", now);
        assert_eq!(hit(&mut cache, "a", now).as_deref(), Some("new"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn expires_after_ttl_on_access() {
        let start = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut cache = Cache::new(10, Some(ttl));
        filled(&mut cache, "k", "v", start);
        assert!(hit(&mut cache, "k", start + ttl - Duration::from_millis(1)).is_some());
        assert_eq!(hit(&mut cache, "k", start + ttl), None);
        assert_eq!(cache.len(), 0, "an expired entry is removed when found");
    }

    #[test]
    fn no_ttl_means_no_expiry() {
        let start = Instant::now();
        let mut cache = Cache::new(10, None);
        filled(&mut cache, "k", "v", start);
        let much_later = start + Duration::from_secs(365 * 24 * 3600);
        assert!(hit(&mut cache, "k", much_later).is_some());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let now = Instant::now();
        let mut cache = Cache::new(0, HOUR);
        assert!(!cache.is_enabled());
        assert!(!filled(&mut cache, "k", "v", now));
        assert_eq!(hit(&mut cache, "k", now), None);
    }

    #[test]
    fn clear_cancels_tickets_taken_before() {
        let now = Instant::now();
        let mut cache = Cache::new(10, HOUR);
        filled(&mut cache, "a", "A", now);
        let before = cache.fill_ticket();
        cache.clear();
        assert!(cache.is_empty());
        assert!(!cache.fill(b"b", b"B", before, now));
        assert_eq!(hit(&mut cache, "b", now), None);
        let after = cache.fill_ticket();
        assert!(cache.fill(b"b", b"B", after, now));
    }
}
