//! Pipelining: a client's replies come back in request order, whatever mix
//! of cache hits, misses, local replies and slow requests it sends.

#[macro_use]
mod common;

use common::*;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn a_cache_hit_waits_for_an_earlier_slow_request() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "0"]);
    redis.set("hot", "cached value");
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "hot"], &bulk("cached value")); // now cached

    let mut pipeline = Vec::new();
    pipeline.extend(cmd(&["DEBUG", "SLEEP", "0.3"]));
    pipeline.extend(cmd(&["GET", "hot"]));
    pipeline.extend(cmd(&["PING"]));
    pipeline.extend(cmd(&["ECHO", "x"]));
    pipeline.extend(cmd(&["GET", "cold"]));
    pipeline.extend(cmd(&["GET", "hot"]));
    pipeline.extend(cmd(&["PING", "last"]));
    let mut expected = OK.to_vec();
    expected.extend(bulk("cached value"));
    expected.extend(PONG);
    expected.extend(bulk("x"));
    expected.extend(NIL);
    expected.extend(bulk("cached value"));
    expected.extend(bulk("last"));

    let sent = Instant::now();
    c.send(&pipeline);
    c.expect(&expected[..OK.len()]);
    let first = sent.elapsed();
    assert!(
        first >= Duration::from_millis(280),
        "DEBUG SLEEP 0.3 answered after {first:?}"
    );
    c.expect(&expected[OK.len()..]);
    c.ping();
}

#[test]
fn other_clients_are_served_while_redis_is_slow() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "0"]);
    redis.set("hot", "cached");
    let mut b = proxy.connect();
    b.roundtrip(&["GET", "hot"], &bulk("cached"));

    let mut a = proxy.connect();
    a.send(&cmd(&["DEBUG", "SLEEP", "1"]));
    wait_until_redis_is_busy(&redis);
    // Redis is asleep; local replies and cache hits do not need it.
    let t = Instant::now();
    b.roundtrip(&["PING"], PONG);
    b.roundtrip(&["GET", "hot"], &bulk("cached"));
    b.roundtrip(&["ECHO", "e"], &bulk("e"));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "local replies and hits waited {took:?} on a busy Redis"
    );
    a.expect(OK);
}

/// Waits until Redis is (most likely) executing a slow command: a fresh
/// direct connection's PING does not come back within 50 ms.
fn wait_until_redis_is_busy(redis: &RedisServer) {
    let busy = poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
        let mut c = Conn::connect(redis.port());
        c.send(b"PING\r\n");
        let mut s = c.stream().try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 7];
        (std::io::Read::read(&mut s, &mut buf).is_err()).then_some(())
    });
    assert!(busy.is_some(), "Redis never became busy");
}

/// One client's script of requests: the bytes to send and the bytes expected.
fn random_script(client: u64, ops: usize, keys: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = Rng::new(client * 7 + 3);
    let mut counter = 0;
    let mut out = Vec::with_capacity(ops);
    for n in 0..ops {
        let item = match rng.below(10) {
            0..=3 => {
                let k = format!("key:{}", rng.below(keys));
                (cmd(&["GET", &k]), bulk(format!("value-of-{k}")))
            }
            4 => {
                let k = format!("absent:{}", rng.below(keys));
                (cmd(&["GET", &k]), NIL.to_vec())
            }
            5 => {
                // Re-SET a shared key to the value it always has.
                let k = format!("key:{}", rng.below(keys));
                (cmd(&["SET", &k, &format!("value-of-{k}")]), OK.to_vec())
            }
            6 => {
                counter += 1;
                (cmd(&["INCR", &format!("counter:{client}")]), int(counter))
            }
            7 => (b"PING\r\n".to_vec(), PONG.to_vec()),
            8 => {
                let m = format!("client-{client}-op-{n}");
                (format!("ECHO {m}\n").into_bytes(), bulk(&m))
            }
            _ => {
                let k = format!("key:{}", rng.below(keys));
                (
                    format!("GET {k}\r\n").into_bytes(),
                    bulk(format!("value-of-{k}")),
                )
            }
        };
        out.push(item);
    }
    out
}

fn seed_keys(redis: &RedisServer, keys: u64) {
    let mut args = vec!["MSET".to_string()];
    for i in 0..keys {
        args.push(format!("key:{i}"));
        args.push(format!("value-of-key:{i}"));
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    assert_eq!(redis.raw(&refs), OK);
}

#[test]
fn random_mixes_of_hits_misses_and_writes_stay_in_order() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--capacity", "64"]);
    seed_keys(&redis, 200);
    let port = proxy.port();
    let threads: Vec<_> = (0..4u64)
        .map(|client| {
            thread::spawn(move || {
                let script = random_script(client, 3000, 200);
                let mut c = Conn::connect(port);
                let mut rng = Rng::new(client + 100);
                let mut i = 0;
                while i < script.len() {
                    let batch = 1 + rng.below(150) as usize;
                    let end = (i + batch).min(script.len());
                    let mut out = Vec::new();
                    let mut want = Vec::new();
                    for (req, rep) in &script[i..end] {
                        out.extend_from_slice(req);
                        want.extend_from_slice(rep);
                    }
                    c.send(&out);
                    c.expect(&want);
                    i = end;
                }
                c.ping();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread failed");
    }
}

#[test]
fn big_pipelines_from_several_clients_at_once() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--capacity", "500"]);
    seed_keys(&redis, 1000);
    let port = proxy.port();
    let threads: Vec<_> = (0..4u64)
        .map(|client| {
            thread::spawn(move || {
                let script = random_script(client + 10, 10_000, 1000);
                let mut c = Conn::connect(port);
                c.set_timeout(Duration::from_secs(20));
                let mut all = Vec::new();
                for (req, _) in &script {
                    all.extend_from_slice(req);
                }
                // Write everything at once from another thread, so that
                // neither side has to drain its replies first.
                let mut w = c.stream().try_clone().unwrap();
                let writer = thread::spawn(move || w.write_all(&all));
                for (n, (req, rep)) in script.iter().enumerate() {
                    if let Err(e) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.expect(rep)))
                    {
                        panic!(
                            "client {client}, request #{n} {}: {}",
                            escape(req),
                            e.downcast_ref::<String>().cloned().unwrap_or_default()
                        );
                    }
                }
                writer.join().unwrap().expect("write pipeline");
                c.ping();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread failed");
    }
    // Every INCR went through exactly once.
    for client in 0..4u64 {
        let script = random_script(client + 10, 10_000, 1000);
        let incrs = script
            .iter()
            .filter(|(r, _)| r.windows(4).any(|w| w == b"INCR"))
            .count();
        let v = redis.get(&format!("counter:{}", client + 10));
        assert_eq!(
            v.map(|b| String::from_utf8(b).unwrap()),
            Some(incrs.to_string()),
            "counter of client {}",
            client + 10
        );
    }
}

#[test]
fn redis_rs_pipeline_through_the_proxy() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    seed_keys(&redis, 100);
    let mut con = proxy.redis_conn();
    let mut pipe = redis::pipe();
    for _ in 0..5 {
        for i in 0..100 {
            pipe.cmd("GET").arg(format!("key:{i}"));
            pipe.cmd("INCR").arg("rs-counter");
            pipe.cmd("PING");
        }
    }
    let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    assert_eq!(replies.len(), 1500);
    for (n, chunk) in replies.chunks(3).enumerate() {
        let i = n % 100;
        assert_eq!(
            chunk[0],
            redis::Value::BulkString(format!("value-of-key:{i}").into_bytes()),
            "GET #{n}"
        );
        assert_eq!(chunk[1], redis::Value::Int(n as i64 + 1), "INCR #{n}");
        assert!(
            matches!(&chunk[2], redis::Value::SimpleString(s) if s == "PONG"),
            "PING #{n}: {:?}",
            chunk[2]
        );
    }
}
