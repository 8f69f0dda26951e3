//! INFO in Redis's format, and Prometheus's redis_exporter reading
//! sidecache's cache statistics from it. Needs `prometheus-redis-exporter`
//! (Debian's package; `scripts/test` installs it): without it the exporter
//! test fails, saying how to install it.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn info(c: &mut Conn, section: &str) -> String {
    if section.is_empty() {
        c.send_cmd(&["INFO"]);
    } else {
        c.send_cmd(&["INFO", section]);
    }
    c.read_reply().bulk_str().expect("INFO is a bulk string")
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO:\n{info}"))
        .trim_end()
        .to_string()
}

fn start_serving(redis: &RedisServer, extra: &[&str]) -> Sidecache {
    let proxy = Sidecache::start(redis.port(), extra);
    proxy.wait_serving();
    proxy
}

#[test]
fn info_counts_what_the_cache_does() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_serving(&redis, &["--capacity", "2"]);
    let mut c = proxy.connect();
    let before = info(&mut c, "");
    for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Backend"] {
        assert!(before.contains(&format!("{section}\r\n")), "{before}");
    }
    // Redis's own version, as tools that read INFO expect.
    let direct = String::from_utf8_lossy(&redis.raw(&["INFO", "server"])).into_owned();
    assert_eq!(
        field(&before, "redis_version"),
        field(&direct, "redis_version")
    );
    assert_eq!(field(&before, "backend_state"), "up");
    assert_eq!(field(&before, "backend_tracking"), "on");
    assert_eq!(field(&before, "keyspace_hits"), "0");

    redis.set("a", "1");
    redis.set("b", "2");
    redis.set("c", "3");
    c.roundtrip(&["GET", "a"], &bulk("1")); // miss
    c.roundtrip(&["GET", "a"], &bulk("1")); // hit
    c.roundtrip(&["GET", "a"], &bulk("1")); // hit
    c.roundtrip(&["GET", "b"], &bulk("2")); // miss
    c.roundtrip(&["GET", "c"], &bulk("3")); // miss, evicts a (capacity 2)
    redis.set("b", "changed"); // an invalidation from Redis
    let invalidated = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        let stats = info(&mut c, "stats");
        (field(&stats, "invalidations_received") != "0").then_some(stats)
    })
    .expect("the invalidation is counted");
    assert_eq!(field(&invalidated, "keyspace_hits"), "2");
    assert_eq!(field(&invalidated, "keyspace_misses"), "3");
    assert_eq!(field(&invalidated, "evicted_keys"), "1");
    assert_eq!(field(&invalidated, "cache_hit_ratio"), "0.4000");
    assert!(!invalidated.contains("# Server"), "one section only");

    let mut other = proxy.connect();
    other.ping();
    let clients = info(&mut c, "clients");
    assert_eq!(field(&clients, "connected_clients"), "2");
    let memory = info(&mut c, "memory");
    assert_eq!(field(&memory, "cache_entries"), "1");
    assert!(field(&memory, "used_memory_rss").parse::<u64>().unwrap() > 0);
    // Refused commands and protocol errors.
    c.send_cmd(&["WAIT", "0", "0"]);
    c.read_error();
    let mut bad = proxy.connect();
    bad.send(b"*1\r\n$x\r\n");
    bad.read_until_eof();
    let stats = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        let stats = info(&mut c, "stats");
        (field(&stats, "protocol_errors") == "1").then_some(stats)
    })
    .expect("the protocol error is counted");
    assert_eq!(field(&stats, "refused_commands"), "1");
    // An unknown section is empty, as in Redis.
    assert_eq!(info(&mut c, "keyspace"), "");
}

/// The exporter's binary, or a failure that says how to install it.
fn exporter_bin() -> String {
    which("prometheus-redis-exporter")
        .or_else(|| which("redis_exporter"))
        .unwrap_or_else(|| {
            panic!(
                "prometheus-redis-exporter not found: install it with \
                 `apt-get install prometheus-redis-exporter` (scripts/test does)"
            )
        })
        .to_string_lossy()
        .into_owned()
}

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn redis_exporter_reports_the_hit_rate() {
    skip_in_direct_mode!();
    let exporter = exporter_bin();
    let redis = RedisServer::start();
    let proxy = start_serving(&redis, &[]);
    redis.set("k", "v");
    let mut c = proxy.connect();
    for _ in 0..4 {
        c.roundtrip(&["GET", "k"], &bulk("v")); // 1 miss, 3 hits
    }
    let web = free_port();
    let _exporter = Exporter(
        Command::new(&exporter)
            .arg("-redis.addr")
            .arg(format!("redis://127.0.0.1:{}", proxy.port()))
            .arg("-web.listen-address")
            .arg(format!("127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the exporter"),
    );
    let metrics = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        scrape(web).filter(|m| m.contains("redis_up"))
    })
    .expect("the exporter serves /metrics");
    assert_eq!(metric(&metrics, "redis_up"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "redis_keyspace_hits_total"), Some(3.0));
    assert_eq!(metric(&metrics, "redis_keyspace_misses_total"), Some(1.0));
    assert!(metric(&metrics, "redis_connected_clients").unwrap_or(0.0) >= 1.0);
    assert!(metric(&metrics, "redis_memory_used_bytes").unwrap_or(0.0) > 0.0);
}
