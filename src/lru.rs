//! A least-recently-used map from byte keys to byte values, laid out for
//! memory: each entry is one allocation holding its key and value side by
//! side, a 40-byte node in one vector (linked to its neighbours in
//! recency order by index, not pointer), and a 4-byte index in a hash
//! table. A lookup touches the table, the node and the entry's bytes, the
//! key and value being adjacent.
//!
//! It knows nothing of replies, tickets or limits: the cache decides what
//! goes in and what is evicted. Pure: no clock (expiries are opaque
//! numbers the caller compares), no sockets.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

/// Marks the end of the recency list.
const NONE: u32 = u32::MAX;

struct Node {
    /// The key, then the value.
    bytes: Box<[u8]>,
    key_len: u32,
    /// Neighbours in recency order: `prev` was used less recently.
    prev: u32,
    next: u32,
    /// Opaque to this module; the cache stores an expiry here.
    stamp: u64,
}

impl Node {
    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }
}

/// What `get_fresh` found.
pub enum Lookup<'a> {
    Found(Item<'a>),
    /// There, but stale: removed; its key and value lengths.
    Removed {
        key_len: usize,
        value_len: usize,
    },
    Missing,
}

/// One entry as seen from outside.
pub struct Item<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub stamp: u64,
}

pub struct Lru {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Nodes in use and free ones (`bytes` empty), by index.
    nodes: Vec<Node>,
    /// Free nodes, reused before the vector grows.
    free: Vec<u32>,
    /// Least and most recently used.
    head: u32,
    tail: u32,
    /// Nodes reserved at the start, and again after a clear.
    reserved: usize,
}

impl Lru {
    /// An empty map. `expected` entries are reserved up front in address
    /// space only: pages are touched (and count in RSS) as entries arrive.
    pub fn with_capacity(expected: usize) -> Lru {
        Lru {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            nodes: Vec::with_capacity(expected.min(u32::MAX as usize - 1)),
            free: Vec::new(),
            head: NONE,
            tail: NONE,
            reserved: expected.min(u32::MAX as usize - 1),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(self.hash(key), |&i| nodes[i as usize].key() == key)
            .copied()
    }

    /// The entry for `key`, now the most recently used.
    pub fn get(&mut self, key: &[u8]) -> Option<Item<'_>> {
        let i = self.find(key)?;
        self.unlink(i);
        self.push_back(i);
        let node = &self.nodes[i as usize];
        Some(Item {
            key: node.key(),
            value: node.value(),
            stamp: node.stamp,
        })
    }

    /// The entry for `key`, now the most recently used, unless `stale`
    /// says its stamp has run out: then it is removed. One lookup either way.
    pub fn get_fresh(&mut self, key: &[u8], stale: impl Fn(u64) -> bool) -> Lookup<'_> {
        let hash = self.hash(key);
        let nodes = &self.nodes;
        let Ok(entry) = self
            .table
            .find_entry(hash, |&i| nodes[i as usize].key() == key)
        else {
            return Lookup::Missing;
        };
        let i = *entry.get();
        if stale(self.nodes[i as usize].stamp) {
            entry.remove();
            let (key_len, value_len) = self.release(i);
            return Lookup::Removed { key_len, value_len };
        }
        self.unlink(i);
        self.push_back(i);
        let node = &self.nodes[i as usize];
        Lookup::Found(Item {
            key: node.key(),
            value: node.value(),
            stamp: node.stamp,
        })
    }

    /// Adds an entry for a key that is not in the map, as the most
    /// recently used; its value is the two parts, joined. Keys over 4 GiB
    /// are not stored (false).
    pub fn insert_new(&mut self, key: &[u8], value: [&[u8]; 2], stamp: u64) -> bool {
        debug_assert!(self.find(key).is_none(), "insert_new of a present key");
        let Ok(key_len) = u32::try_from(key.len()) else {
            return false;
        };
        if self.nodes.len() >= NONE as usize && self.free.is_empty() {
            return false;
        }
        let mut bytes = Vec::with_capacity(key.len() + value[0].len() + value[1].len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value[0]);
        bytes.extend_from_slice(value[1]);
        let node = Node {
            bytes: bytes.into_boxed_slice(),
            key_len,
            prev: NONE,
            next: NONE,
            stamp,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let hash = self.hash(key);
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(nodes[j as usize].key()));
        self.push_back(i);
        true
    }

    /// Removes `key`'s entry; returns its key and value lengths.
    pub fn remove(&mut self, key: &[u8]) -> Option<(usize, usize)> {
        let hash = self.hash(key);
        let nodes = &self.nodes;
        let entry = self
            .table
            .find_entry(hash, |&i| nodes[i as usize].key() == key)
            .ok()?;
        let (i, _) = entry.remove();
        Some(self.release(i))
    }

    /// Removes the least recently used entry; returns its key and value lengths.
    pub fn pop_lru(&mut self) -> Option<(usize, usize)> {
        if self.head == NONE {
            return None;
        }
        let i = self.head;
        let hash = self.hash(self.nodes[i as usize].key());
        let entry = self.table.find_entry(hash, |&j| j == i).ok()?;
        entry.remove();
        Some(self.release(i))
    }

    pub fn clear(&mut self) {
        // Give the memory back after a flush: new, untouched buffers.
        self.table = HashTable::new();
        self.nodes = Vec::with_capacity(self.reserved);
        self.free = Vec::new();
        self.head = NONE;
        self.tail = NONE;
    }

    /// Unlinks node `i` (already out of the table) and frees its bytes.
    fn release(&mut self, i: u32) -> (usize, usize) {
        self.unlink(i);
        let node = &mut self.nodes[i as usize];
        let sizes = (
            node.key_len as usize,
            node.bytes.len() - node.key_len as usize,
        );
        node.bytes = Box::default();
        self.free.push(i);
        sizes
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let node = &self.nodes[i as usize];
            (node.prev, node.next)
        };
        match prev {
            NONE => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NONE => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
        let node = &mut self.nodes[i as usize];
        node.prev = NONE;
        node.next = NONE;
    }

    fn push_back(&mut self, i: u32) {
        let tail = self.tail;
        {
            let node = &mut self.nodes[i as usize];
            node.prev = tail;
            node.next = NONE;
        }
        match tail {
            NONE => self.head = i,
            t => self.nodes[t as usize].next = i,
        }
        self.tail = i;
    }

    /// Keys from least to most recently used, for tests.
    #[cfg(test)]
    fn order(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NONE {
            out.push(self.nodes[i as usize].key().to_vec());
            i = self.nodes[i as usize].next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(lru: &Lru) -> Vec<String> {
        lru.order()
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn keeps_recency_order() {
        let mut lru = Lru::with_capacity(4);
        for k in ["a", "b", "c"] {
            assert!(lru.insert_new(k.as_bytes(), [k.to_uppercase().as_bytes(), b""], 7));
        }
        assert_eq!(keys(&lru), ["a", "b", "c"]);
        let item = lru.get(b"a").unwrap();
        assert_eq!(
            (item.key, item.value, item.stamp),
            (&b"a"[..], &b"A"[..], 7)
        );
        assert_eq!(keys(&lru), ["b", "c", "a"]);
        assert_eq!(lru.pop_lru(), Some((1, 1)));
        assert_eq!(keys(&lru), ["c", "a"]);
        assert!(lru.get(b"b").is_none());
        assert_eq!(lru.remove(b"a"), Some((1, 1)));
        assert_eq!(lru.remove(b"a"), None);
        assert_eq!(keys(&lru), ["c"]);
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn a_stale_entry_goes_on_lookup() {
        let mut lru = Lru::with_capacity(2);
        lru.insert_new(b"old", [b"v", b""], 5);
        lru.insert_new(b"new", [b"w", b""], 50);
        assert!(matches!(
            lru.get_fresh(b"old", |stamp| stamp <= 10),
            Lookup::Removed {
                key_len: 3,
                value_len: 1
            }
        ));
        assert!(matches!(lru.get_fresh(b"old", |_| false), Lookup::Missing));
        match lru.get_fresh(b"new", |stamp| stamp <= 10) {
            Lookup::Found(item) => assert_eq!(item.value, b"w"),
            _ => panic!("fresh entry"),
        }
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn reuses_freed_nodes_and_survives_growth() {
        let mut lru = Lru::with_capacity(0);
        for round in 0..3 {
            for i in 0..10_000u32 {
                let key = format!("key:{i}");
                assert!(lru.insert_new(key.as_bytes(), [b"", &i.to_le_bytes()], round));
            }
            for i in (0..10_000u32).step_by(3) {
                let key = format!("key:{i}");
                let item = lru.get(key.as_bytes()).expect("present");
                assert_eq!(item.value, i.to_le_bytes());
            }
            while lru.pop_lru().is_some() {}
            assert!(lru.is_empty());
        }
        assert!(lru.nodes.len() <= 10_000, "freed nodes are reused");
        lru.insert_new(b"x", [b"y", b""], 0);
        lru.clear();
        assert!(lru.is_empty() && lru.get(b"x").is_none());
        assert!(lru.pop_lru().is_none());
    }

    #[test]
    fn empty_keys_and_values() {
        let mut lru = Lru::with_capacity(1);
        assert!(lru.insert_new(b"", [b"", b""], 0));
        assert!(lru.insert_new(b"k", [b"", b""], 0));
        assert_eq!(lru.get(b"").unwrap().value, b"");
        assert_eq!(lru.remove(b"k"), Some((1, 0)));
        assert_eq!(keys(&lru), [""]);
    }
}
