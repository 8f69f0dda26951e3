//! The GET cache: TTL expiry, LRU eviction, capacity 0, what is (not) cached.
//!
//! Staleness is the observable: values are changed directly in Redis
//! (underneath the proxy), and a cached GET keeps returning the old value.
//! That is only true without client tracking, so every sidecache here runs
//! with `--tracking off`, and tests start once it says the cache serves.

#[macro_use]
mod common;

use common::*;
use std::time::{Duration, Instant};

/// A sidecache that caches by TTL only, once its cache is serving.
fn start_ttl_only(redis_port: u16, extra: &[&str]) -> Sidecache {
    let mut args = vec!["--tracking", "off"];
    args.extend_from_slice(extra);
    let proxy = Sidecache::start(redis_port, &args);
    if !args.windows(2).any(|w| w == ["--capacity", "0"]) {
        wait_for_log(&proxy, "serving GETs from the cache");
    }
    proxy
}

/// Waits until sidecache's log has a line containing `text`.
#[track_caller]
fn wait_for_log(proxy: &Sidecache, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "sidecache never logged {text:?}; stderr:\n{}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// GETs `key` through `c` until the reply is `want`; returns when it was
/// seen. Every reply in between must be `old`. Fails after `timeout`.
#[track_caller]
fn poll_get_until(c: &mut Conn, key: &str, old: &[u8], want: &[u8], timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        c.send_cmd(&["GET", key]);
        let r = c.read_reply_raw();
        if r == want {
            return Instant::now();
        }
        assert_eq!(
            r,
            old,
            "GET {key}: neither the cached nor the new value: {}",
            escape(&r)
        );
        assert!(
            Instant::now() < deadline,
            "GET {key} still returns the old value after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cached_value_is_served_until_the_ttl_expires() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "500ms"]);
    redis.set("t", "v1");
    let mut c = proxy.connect();

    let t0 = Instant::now();
    c.roundtrip(&["GET", "t"], &bulk("v1"));
    redis.set("t", "v2");
    c.roundtrip(&["GET", "t"], &bulk("v1")); // stale: served from the cache
                                             // Hits while polling must not extend the entry's life.
    let seen = poll_get_until(
        &mut c,
        "t",
        &bulk("v1"),
        &bulk("v2"),
        Duration::from_secs(5),
    );
    let lived = seen - t0;
    assert!(
        lived >= Duration::from_millis(495),
        "entry expired after {lived:?}, before its 500ms TTL"
    );
    // Once refreshed, the new value is cached in turn.
    redis.set("t", "v3");
    c.roundtrip(&["GET", "t"], &bulk("v2"));
}

#[test]
fn ttl_in_whole_seconds_and_eq_form() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    // `--ttl 1` is one second (not one millisecond); `--ttl=300ms` works too.
    let secs = start_ttl_only(redis.port(), &["--ttl", "1"]);
    let millis = start_ttl_only(redis.port(), &["--ttl=300ms"]);
    redis.set("u", "old");
    let mut s = secs.connect();
    let mut m = millis.connect();
    let t0 = Instant::now();
    s.roundtrip(&["GET", "u"], &bulk("old"));
    m.roundtrip(&["GET", "u"], &bulk("old"));
    redis.set("u", "new");

    let seen_m = poll_get_until(
        &mut m,
        "u",
        &bulk("old"),
        &bulk("new"),
        Duration::from_secs(5),
    );
    assert!(
        seen_m - t0 >= Duration::from_millis(295),
        "300ms TTL expired after {:?}",
        seen_m - t0
    );
    let seen_s = poll_get_until(
        &mut s,
        "u",
        &bulk("old"),
        &bulk("new"),
        Duration::from_secs(6),
    );
    assert!(
        seen_s - t0 >= Duration::from_millis(995),
        "1s TTL expired after {:?}",
        seen_s - t0
    );
}

#[test]
fn ttl_zero_and_default_ttl_do_not_expire_quickly() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let never = start_ttl_only(redis.port(), &["--ttl", "0"]);
    let default = start_ttl_only(redis.port(), &[]);
    redis.set("z", "old");
    let mut n = never.connect();
    let mut d = default.connect();
    n.roundtrip(&["GET", "z"], &bulk("old"));
    d.roundtrip(&["GET", "z"], &bulk("old"));
    redis.set("z", "new");
    // Sleeping past some time is the behaviour under test: nothing expires.
    std::thread::sleep(Duration::from_millis(1200));
    n.roundtrip(&["GET", "z"], &bulk("old"));
    d.roundtrip(&["GET", "z"], &bulk("old"));
    // The proxies still forward other keys.
    n.roundtrip(&["GET", "other"], NIL);
}

#[test]
fn lru_eviction_order_at_capacity_two() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--capacity", "2", "--ttl", "0"]);
    for k in ["a", "b", "c"] {
        redis.set(k, format!("{k}1"));
    }
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "a"], &bulk("a1"));
    c.roundtrip(&["GET", "b"], &bulk("b1"));
    c.roundtrip(&["GET", "a"], &bulk("a1")); // hit: a is now the most recent
    c.roundtrip(&["GET", "c"], &bulk("c1")); // evicts b (least recent)
    for k in ["a", "b", "c"] {
        redis.set(k, format!("{k}2"));
    }
    c.roundtrip(&["GET", "a"], &bulk("a1")); // still cached; order c, a
    c.roundtrip(&["GET", "c"], &bulk("c1")); // still cached; order a, c
    c.roundtrip(&["GET", "b"], &bulk("b2")); // was evicted; now cached, evicts a
    c.roundtrip(&["GET", "c"], &bulk("c1")); // still cached; order b, c
    c.roundtrip(&["GET", "a"], &bulk("a2")); // was evicted; evicts b
    for k in ["a", "b", "c"] {
        redis.set(k, format!("{k}3"));
    }
    c.roundtrip(&["GET", "b"], &bulk("b3")); // evicted; evicts c
    c.roundtrip(&["GET", "a"], &bulk("a2")); // cached
    c.roundtrip(&["GET", "c"], &bulk("c3")); // evicted
}

#[test]
fn lru_evicts_exactly_the_least_recent_key() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--capacity", "50", "--ttl", "0"]);
    let mut c = proxy.connect();
    for i in 0..50 {
        redis.set(&format!("k{i}"), "old");
    }
    for i in 0..50 {
        c.roundtrip(&["GET", &format!("k{i}")], &bulk("old"));
    }
    for i in 0..50 {
        redis.set(&format!("k{i}"), "new");
    }
    c.roundtrip(&["GET", "extra"], NIL); // the 51st key evicts k0 only
    for i in (1..50).rev() {
        c.roundtrip(&["GET", &format!("k{i}")], &bulk("old"));
    }
    c.roundtrip(&["GET", "k0"], &bulk("new"));
}

#[test]
fn capacity_zero_never_caches() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--capacity", "0", "--ttl", "0"]);
    let mut c = proxy.connect();
    redis.set("k", "1");
    c.roundtrip(&["GET", "k"], &bulk("1"));
    redis.set("k", "2");
    c.roundtrip(&["GET", "k"], &bulk("2"));
    c.roundtrip(&["GET", "k"], &bulk("2"));
    redis.raw(&["DEL", "k"]);
    c.roundtrip(&["GET", "k"], NIL);
    redis.set("k", "3");
    c.roundtrip(&["GET", "k"], &bulk("3"));
}

#[test]
fn nil_replies_are_cached() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "0"]);
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "later"], NIL);
    redis.set("later", "exists now");
    c.roundtrip(&["GET", "later"], NIL);
}

#[test]
fn error_replies_are_never_cached() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "0"]);
    let mut c = proxy.connect();
    redis.raw(&["RPUSH", "x", "item"]);
    let wrongtype = redis.raw(&["GET", "x"]);
    assert!(wrongtype.starts_with(b"-WRONGTYPE"));
    c.roundtrip(&["GET", "x"], &wrongtype);
    c.roundtrip(&["GET", "x"], &wrongtype);
    redis.raw(&["DEL", "x"]);
    redis.set("x", "string now");
    c.roundtrip(&["GET", "x"], &bulk("string now"));
    // ...and that value is cached as usual.
    redis.set("x", "changed");
    c.roundtrip(&["GET", "x"], &bulk("string now"));
}

#[test]
fn the_cache_is_shared_between_clients() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "0"]);
    redis.set("s", "first");
    let mut a = proxy.connect();
    a.roundtrip(&["GET", "s"], &bulk("first"));
    redis.set("s", "second");
    drop(a);
    let mut b = proxy.connect();
    b.roundtrip(&["GET", "s"], &bulk("first"));
    let mut con = proxy.redis_conn();
    let v: Option<String> = redis::cmd("GET").arg("s").query(&mut con).unwrap();
    assert_eq!(v.as_deref(), Some("first"));
}

#[test]
fn get_is_cached_whatever_its_spelling() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "0"]);
    redis.set("sp", "cached");
    let mut c = proxy.connect();
    c.send(b"GET sp\n"); // inline request fills the cache
    c.expect(&bulk("cached"));
    redis.set("sp", "changed");
    c.roundtrip(&["GET", "sp"], &bulk("cached"));
    c.roundtrip(&["get", "sp"], &bulk("cached"));
    c.roundtrip(&["gEt", "sp"], &bulk("cached"));
    c.send(b"get sp\r\n");
    c.expect(&bulk("cached"));
}

#[test]
fn only_get_is_cached() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "0"]);
    redis.set("o", "one");
    redis.raw(&["HSET", "h", "f", "one"]);
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "o"], &bulk("one"));
    c.roundtrip(&["MGET", "o"], b"*1\r\n$3\r\none\r\n");
    c.roundtrip(&["STRLEN", "o"], &int(3));
    c.roundtrip(&["GETRANGE", "o", "0", "-1"], &bulk("one"));
    c.roundtrip(&["HGET", "h", "f"], &bulk("one"));
    redis.set("o", "three");
    redis.raw(&["HSET", "h", "f", "three"]);
    c.roundtrip(&["GET", "o"], &bulk("one")); // cached
    c.roundtrip(&["MGET", "o"], b"*1\r\n$5\r\nthree\r\n");
    c.roundtrip(&["STRLEN", "o"], &int(5));
    c.roundtrip(&["GETRANGE", "o", "0", "-1"], &bulk("three"));
    c.roundtrip(&["HGET", "h", "f"], &bulk("three"));
}

#[test]
fn concurrent_misses_of_one_key() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_ttl_only(redis.port(), &["--ttl", "0"]);
    redis.set("hot", "v1");
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    let mut pipeline = Vec::new();
    for _ in 0..100 {
        pipeline.extend(cmd(&["GET", "hot"]));
    }
    a.send(&pipeline);
    b.send(&pipeline);
    let expected = bulk("v1").repeat(100);
    a.expect(&expected);
    b.expect(&expected);
    redis.set("hot", "v2");
    a.roundtrip(&["GET", "hot"], &bulk("v1"));
}
