//! Pinned connections (transactions, blocking calls, SCRIPT KILL) and the
//! per-client connection state sidecache keeps or forwards: what the other
//! suites do not cover yet.
//!
//! - No state leaks between clients through pinned connections, pooled and
//!   reused: a WATCH or an open MULTI dies with its client; 10 clients run
//!   mixed transactions at once and each EXEC reply is exactly its own.
//! - Redis down: MULTI, WATCH and BLPOP fail at once, and work again once
//!   Redis is back; Redis killed under an open MULTI, a WATCH, an in-flight
//!   request and a blocked BLPOP.
//! - `CLIENT REPLY OFF|SKIP|ON` and `RESET`, differential against Redis (the
//!   same commands sent to Redis and to sidecache, the bytes compared),
//!   pub/sub included; `CLIENT UNBLOCK` with sidecache's client ids.
//! - `SCRIPT KILL` and `FUNCTION KILL` reach Redis while a busy script stalls
//!   the shared connection.
//! - `--max-pinned`: a MULTI past the limit is refused and its transaction
//!   aborted, and works once a pinned connection is free.
//!
//! `SIDECACHE_TEST_DIRECT=1` runs the tests that make sense against Redis
//! itself (the differential ones then compare Redis with Redis, which checks
//! the scripts and their read counts).

#[macro_use]
mod common;

use common::*;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const QUEUED: &[u8] = b"+QUEUED\r\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
const EXEC_WITHOUT_MULTI: &[u8] = b"-ERR EXEC without MULTI\r\n";
const DISCARD_WITHOUT_MULTI: &[u8] = b"-ERR DISCARD without MULTI\r\n";
/// A nil `EXEC` or `BLPOP` in RESP2.
const NIL_ARRAY: &[u8] = b"*-1\r\n";
/// What sidecache answers to a MULTI it cannot give a connection of its own
/// because Redis is down.
const MULTI_REFUSED_DOWN: &[u8] =
    b"-ERR backend unavailable; the commands up to EXEC or DISCARD will not run\r\n";

/// How long an error that must come "at once" may take.
const AT_ONCE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `args` directly on Redis; the raw reply.
fn direct(redis_port: u16, args: &[&str]) -> Vec<u8> {
    let mut c = Conn::connect(redis_port);
    c.send_cmd(args);
    c.read_reply_raw()
}

/// The process that accepts the test's client connections: sidecache, or
/// Redis in direct mode (for [`Conn::hang_up`]).
fn server_pid(redis: &RedisServer, sc: &Sidecache) -> u32 {
    if direct_mode() {
        redis.pid()
    } else {
        sc.pid()
    }
}

/// Redis's clients (as `CLIENT LIST` shows them) inside a MULTI: `multi`
/// other than -1. Returns (id, name, multi) of each.
fn clients_in_multi(redis_port: u16) -> Vec<(String, String, String)> {
    client_list(redis_port)
        .iter()
        .filter(|c| c.get("multi").is_some_and(|m| m != "-1"))
        .map(|c| {
            let f = |k: &str| c.get(k).cloned().unwrap_or_default();
            (f("id"), f("name"), f("multi"))
        })
        .collect()
}

/// `PUBSUB NUMSUB channel`, asked directly.
fn numsub(redis_port: u16, channel: &str) -> i64 {
    let raw = direct(redis_port, &["PUBSUB", "NUMSUB", channel]);
    match parse_reply(&raw) {
        Ok(Some((Resp::Array(Some(items)), _))) => match items.as_slice() {
            [_, Resp::Int(n)] => *n,
            _ => panic!("PUBSUB NUMSUB {channel}: {}", escape(&raw)),
        },
        _ => panic!("PUBSUB NUMSUB {channel}: {}", escape(&raw)),
    }
}

/// `PUBSUB NUMPAT`, asked directly.
fn numpat(redis_port: u16) -> i64 {
    let raw = direct(redis_port, &["PUBSUB", "NUMPAT"]);
    match parse_reply(&raw) {
        Ok(Some((Resp::Int(n), _))) => n,
        _ => panic!("PUBSUB NUMPAT: {}", escape(&raw)),
    }
}

/// Waits (up to 8 s) until a MULTI / SET `key` v / EXEC through `sc`
/// answers as Redis does: Redis is back and pinned connections work.
#[track_caller]
fn wait_transactions_work(sc: &Sidecache, key: &str) {
    let back = poll_until(Duration::from_secs(8), Duration::from_millis(50), || {
        let mut t = sc.connect();
        t.send(&[cmd(&["MULTI"]), cmd(&["SET", key, "v"]), cmd(&["EXEC"])].concat());
        let got = [t.read_reply_raw(), t.read_reply_raw(), t.read_reply_raw()].concat();
        (got == b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").then_some(())
    });
    assert!(
        back.is_some(),
        "transactions did not work again after Redis restarted"
    );
}

/// Sends `args` and reads one reply, which must come within [`AT_ONCE`];
/// returns it.
#[track_caller]
fn at_once(c: &mut Conn, args: &[&str]) -> Vec<u8> {
    let started = Instant::now();
    c.send_cmd(args);
    let reply = match c.poll_reply(AT_ONCE) {
        Polled::Reply(r) => r,
        other => panic!("{args:?}: no reply within {AT_ONCE:?}: {other:?}"),
    };
    assert!(
        started.elapsed() < AT_ONCE,
        "{args:?} took {:?}",
        started.elapsed()
    );
    reply
}

/// MULTI / SET key value / EXEC, one at a time, with Redis's replies.
#[track_caller]
fn transaction(c: &mut Conn, key: &str, value: &str) {
    c.roundtrip(&["MULTI"], OK);
    c.roundtrip(&["SET", key, value], QUEUED);
    c.roundtrip(&["EXEC"], b"*1\r\n+OK\r\n");
}

// ---------------------------------------------------------------------------
// 1. No state leaks between clients through pinned connections
// ---------------------------------------------------------------------------

/// A client that WATCHes a key and leaves takes its WATCH with it: the next
/// client (a new connection, most likely in the same slot, and given the
/// pooled or a new pinned connection) never watched, so its EXEC runs after
/// the key changed.
#[test]
fn a_watch_does_not_outlive_its_client() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let pid = server_pid(&redis, &sc);
    // A finished transaction leaves a clean pinned connection in the pool.
    let mut warm = sc.connect();
    transaction(&mut warm, "leak:warm", "1");
    warm.hang_up(pid);

    for round in 0..6 {
        let k = format!("leak:w:{round}");
        let other = format!("leak:w:{round}:other");
        let mut a = sc.connect();
        match round % 3 {
            // Watching, everything answered.
            0 => a.roundtrip(&["WATCH", &k], OK),
            // Watching two keys, and a GET read on the pinned connection.
            1 => {
                a.roundtrip(&["WATCH", &k, &other], OK);
                a.roundtrip(&["GET", &k], NIL);
            }
            // Gone before the WATCH is even answered.
            _ => {
                a.send(&[cmd(&["WATCH", &k]), cmd(&["GET", &k])].concat());
                a.accepted_by(pid);
            }
        }
        a.hang_up(pid);
        assert_eq!(direct(redis.port(), &["SET", &k, "changed"]), OK);

        let mut b = sc.connect();
        if round % 2 == 1 {
            // B watches another key of its own: only that one counts.
            b.roundtrip(&["WATCH", &other], OK);
        }
        b.roundtrip(&["MULTI"], OK);
        b.roundtrip(&["SET", &k, "mine"], QUEUED);
        b.send_cmd(&["EXEC"]);
        let exec = b.read_reply_raw();
        assert_eq!(
            exec,
            b"*1\r\n+OK\r\n",
            "round {round}: B never watched {k}, yet its EXEC answered {} \
             (A's WATCH leaked to B)",
            escape(&exec)
        );
        assert_eq!(redis.get(&k).as_deref(), Some(&b"mine"[..]));
        b.roundtrip(&["GET", &k], &bulk("mine"));
        b.hang_up(pid);
    }
}

/// A client that leaves inside a MULTI leaves no MULTI behind in Redis, and
/// its queued commands never run.
#[test]
fn an_abandoned_multi_never_runs() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let pid = server_pid(&redis, &sc);
    let mut keys = Vec::new();
    for round in 0..6 {
        let x = format!("leak:x:{round}");
        let mut a = sc.connect();
        match round % 3 {
            0 => {
                a.roundtrip(&["MULTI"], OK);
                a.roundtrip(&["SET", &x, "1"], QUEUED);
            }
            1 => {
                // After a WATCH, with a GET queued too.
                a.roundtrip(&["WATCH", &x], OK);
                a.roundtrip(&["MULTI"], OK);
                a.roundtrip(&["SET", &x, "1"], QUEUED);
                a.roundtrip(&["GET", &x], QUEUED);
            }
            _ => {
                // Pipelined and gone before any reply is read.
                a.send(&[cmd(&["MULTI"]), cmd(&["SET", &x, "1"]), cmd(&["INCR", &x])].concat());
                a.accepted_by(pid);
            }
        }
        a.hang_up(pid);
        let mut left = Vec::new();
        let gone = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
            left = clients_in_multi(redis.port());
            left.is_empty().then_some(())
        });
        assert!(
            gone.is_some(),
            "round {round}: Redis still has a client inside a MULTI after the client \
             that opened it left: {left:?}"
        );
        assert_eq!(direct(redis.port(), &["GET", &x]), NIL, "round {round}");

        // The next client is in no MULTI, and does not see the queued SET.
        let mut b = sc.connect();
        b.roundtrip(&["EXEC"], EXEC_WITHOUT_MULTI);
        b.roundtrip(&["DISCARD"], DISCARD_WITHOUT_MULTI);
        b.roundtrip(&["GET", &x], NIL);
        transaction(&mut b, &format!("{x}:b"), "b");
        b.hang_up(pid);
        keys.push(x);
    }
    thread::sleep(Duration::from_millis(100));
    for x in &keys {
        assert_eq!(direct(redis.port(), &["GET", x]), NIL, "{x} was set");
    }
    assert_eq!(clients_in_multi(redis.port()), vec![]);
}

/// WATCH then UNWATCH leaves nothing behind, for the client itself and for
/// the next one, whether the first stays connected or leaves.
#[test]
fn unwatch_leaves_nothing_for_the_next_client() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let pid = server_pid(&redis, &sc);
    for round in 0..4 {
        let k = format!("leak:u:{round}");
        let mut a = sc.connect();
        a.roundtrip(&["WATCH", &k], OK);
        a.roundtrip(&["UNWATCH"], OK);
        a.roundtrip(&["EXEC"], EXEC_WITHOUT_MULTI);
        let stays = round % 2 == 0;
        let mut a = match stays {
            true => Some(a),
            false => {
                a.hang_up(pid);
                None
            }
        };
        let mut b = sc.connect();
        b.roundtrip(&["EXEC"], EXEC_WITHOUT_MULTI);
        b.roundtrip(&["DISCARD"], DISCARD_WITHOUT_MULTI);
        assert_eq!(direct(redis.port(), &["SET", &k, "changed"]), OK);
        transaction(&mut b, &k, "b");
        if let Some(a) = a.as_mut() {
            // A unwatched: its own transaction runs too.
            assert_eq!(direct(redis.port(), &["SET", &k, "changed again"]), OK);
            transaction(a, &k, "a");
            a.roundtrip(&["GET", &k], &bulk("a"));
        }
    }
}

/// 10 clients run 200 rounds each of mixed transactions at once (step by
/// step, pipelined, with WATCH, discarded, abandoned and started again on a
/// new connection), each on keys and values of its own: every reply is
/// exactly that client's.
#[test]
fn concurrent_transactions_get_their_own_replies() {
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 200;
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let port = sc.port();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 1);
                let k = format!("mix:{t}:k");
                let n = format!("mix:{t}:n");
                let mut count = 0i64;
                let mut value: Option<String> = None;
                let mut c = Conn::connect(port);
                barrier.wait();
                for i in 0..ROUNDS {
                    let v = format!("{t}-{i}-{}", rng.below(1_000_000));
                    let was = |value: &Option<String>| match value {
                        Some(v) => bulk(v),
                        None => NIL.to_vec(),
                    };
                    match rng.below(6) {
                        0 => {
                            c.roundtrip(&["MULTI"], OK);
                            c.roundtrip(&["SET", &k, &v], QUEUED);
                            c.roundtrip(&["INCR", &n], QUEUED);
                            c.roundtrip(&["GET", &k], QUEUED);
                            count += 1;
                            let exec = [b"*3\r\n+OK\r\n".to_vec(), int(count), bulk(&v)].concat();
                            c.roundtrip(&["EXEC"], &exec);
                        }
                        1 => {
                            c.send(
                                &[
                                    cmd(&["MULTI"]),
                                    cmd(&["SET", &k, &v]),
                                    cmd(&["INCR", &n]),
                                    cmd(&["GET", &k]),
                                    cmd(&["EXEC"]),
                                ]
                                .concat(),
                            );
                            count += 1;
                            c.expect(
                                &[
                                    b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n"
                                        .to_vec(),
                                    int(count),
                                    bulk(&v),
                                ]
                                .concat(),
                            );
                        }
                        2 => {
                            c.roundtrip(&["WATCH", &k, &n], OK);
                            c.roundtrip(&["GET", &k], &was(&value));
                            c.roundtrip(&["MULTI"], OK);
                            c.roundtrip(&["SET", &k, &v], QUEUED);
                            c.roundtrip(&["INCR", &n], QUEUED);
                            count += 1;
                            c.roundtrip(
                                &["EXEC"],
                                &[b"*2\r\n+OK\r\n".to_vec(), int(count)].concat(),
                            );
                        }
                        3 => {
                            c.roundtrip(&["MULTI"], OK);
                            c.roundtrip(&["SET", &k, &v], QUEUED);
                            c.roundtrip(&["DISCARD"], OK);
                            c.roundtrip(&["GET", &k], &was(&value));
                            c.roundtrip(&["SET", &k, &v], OK);
                        }
                        4 => {
                            // Leave in the middle of a transaction, come back.
                            c.roundtrip(&["WATCH", &k], OK);
                            c.roundtrip(&["MULTI"], OK);
                            c.roundtrip(&["SET", &k, "never"], QUEUED);
                            // Gone without waiting for sidecache to notice.
                            c = Conn::connect(port);
                            c.roundtrip(&["GET", &k], &was(&value));
                            c.roundtrip(&["MULTI"], OK);
                            c.roundtrip(&["SET", &k, &v], QUEUED);
                            c.roundtrip(&["EXEC"], b"*1\r\n+OK\r\n");
                        }
                        _ => {
                            // WATCH and UNWATCH, then a plain write.
                            c.roundtrip(&["WATCH", &k], OK);
                            c.roundtrip(&["UNWATCH"], OK);
                            c.roundtrip(&["SET", &k, &v], OK);
                        }
                    }
                    value = Some(v);
                    c.roundtrip(&["GET", &k], &was(&value));
                    let counted = match count {
                        0 => NIL.to_vec(),
                        n => bulk(n.to_string()),
                    };
                    c.roundtrip(&["GET", &n], &counted);
                }
            })
        })
        .collect();
    let failed = join_clients(workers);
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} clients got a wrong reply:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!(
        "{CLIENTS} clients x {ROUNDS} mixed transactions: {:?}",
        started.elapsed()
    );
    assert_eq!(clients_in_multi(redis.port()), vec![]);
}

// ---------------------------------------------------------------------------
// 2. Redis down, Redis killed
// ---------------------------------------------------------------------------

/// With Redis down, MULTI, WATCH and BLPOP get an error at once; once Redis
/// is back, transactions and blocking calls work again.
#[test]
fn with_redis_down_pinned_commands_fail_at_once() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut c = sc.connect();
    // A pooled pinned connection that Redis's death must not leave usable.
    transaction(&mut c, "down:warm", "1");
    redis.stop();
    // Wait until sidecache knows.
    let noticed = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let mut g = sc.connect();
        g.send_cmd(&["GET", "down:k"]);
        (g.read_reply_raw() == BACKEND_UNAVAILABLE).then_some(())
    });
    assert!(noticed.is_some(), "GET never failed with Redis down");

    for round in 0..3 {
        // MULTI: refused, and so are the commands up to EXEC.
        let mut m = sc.connect();
        let started = Instant::now();
        m.send(
            &[
                cmd(&["MULTI"]),
                cmd(&["SET", "down:k", "v"]),
                cmd(&["EXEC"]),
            ]
            .concat(),
        );
        m.set_timeout(AT_ONCE);
        let first = m.read_reply_raw();
        if first == MULTI_REFUSED_DOWN {
            m.expect(b"-ERR 'set' did not run: sidecache refused the MULTI before it\r\n");
            m.expect(EXECABORT);
            m.ping();
        } else {
            // Also allowed by the README: a pinned connection opened while
            // sidecache was retrying, which then failed; the client is
            // disconnected.
            assert_eq!(
                first,
                BACKEND_UNAVAILABLE,
                "round {round}: MULTI with Redis down: {}",
                escape(&first)
            );
            let rest = m.read_until_eof();
            assert_eq!(
                rest,
                [BACKEND_UNAVAILABLE, BACKEND_UNAVAILABLE].concat(),
                "round {round}: {}",
                escape(&rest)
            );
            eprintln!("round {round}: MULTI met a pinned connection that failed to connect");
        }
        assert!(
            started.elapsed() < AT_ONCE,
            "MULTI took {:?}",
            started.elapsed()
        );

        let mut w = sc.connect();
        assert_eq!(at_once(&mut w, &["WATCH", "down:k"]), BACKEND_UNAVAILABLE);
        w.ping();
        assert_eq!(
            at_once(&mut w, &["BLPOP", "down:l", "0"]),
            BACKEND_UNAVAILABLE
        );
        w.ping();
        assert_eq!(
            at_once(&mut w, &["BLPOP", "down:l", "1"]),
            BACKEND_UNAVAILABLE
        );
        w.ping();
    }
    // c's connection is still there, in no transaction.
    c.ping();

    redis.restart();
    wait_transactions_work(&sc, "down:k");
    assert_eq!(redis.get("down:k").as_deref(), Some(&b"v"[..]));
    c.roundtrip(&["WATCH", "down:k"], OK);
    c.roundtrip(&["MULTI"], OK);
    c.roundtrip(&["SET", "down:k", "w"], QUEUED);
    c.roundtrip(&["EXEC"], b"*1\r\n+OK\r\n");
    c.roundtrip(&["GET", "down:k"], &bulk("w"));
    assert_eq!(direct(redis.port(), &["RPUSH", "down:l", "x"]), int(1));
    c.roundtrip(
        &["BLPOP", "down:l", "0"],
        b"*2\r\n$6\r\ndown:l\r\n$1\r\nx\r\n",
    );
}

/// Redis killed while clients hold a MULTI, a WATCH, a MULTI with a request
/// in flight: what was in flight gets `-ERR backend unavailable`, then each
/// of them is disconnected (Redis forgot their transaction). A client with
/// nothing pinned stays.
///
/// Observed: a client whose MULTI or WATCH had nothing in flight gets no
/// bytes at all, only the EOF.
#[test]
fn redis_killed_under_a_transaction_disconnects_its_client() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut in_multi = sc.connect();
    in_multi.roundtrip(&["MULTI"], OK);
    in_multi.roundtrip(&["SET", "kill:a", "1"], QUEUED);
    let mut watching = sc.connect();
    watching.roundtrip(&["WATCH", "kill:b"], OK);
    let mut in_flight = sc.connect();
    in_flight.roundtrip(&["MULTI"], OK);
    let mut plain = sc.connect();
    plain.roundtrip(&["SET", "kill:c", "1"], OK);

    redis.pause();
    in_flight.send_cmd(&["SET", "kill:d", "1"]);
    // The SET sits unread in the frozen Redis's socket: it is in flight.
    wait_unread_bytes_at(redis.port(), cmd(&["SET", "kill:d", "1"]).len() as u64);
    redis.kill();

    for (name, c, expected) in [
        ("in MULTI", &mut in_multi, &b""[..]),
        ("watching", &mut watching, &b""[..]),
        (
            "in MULTI, SET in flight",
            &mut in_flight,
            BACKEND_UNAVAILABLE,
        ),
    ] {
        c.set_timeout(AT_ONCE);
        let got = c.read_until_eof();
        assert_eq!(
            got,
            expected,
            "client {name}: before the EOF got {} instead of {}",
            escape(&got),
            escape(expected)
        );
    }
    plain.ping();
    plain.set_timeout(AT_ONCE);
    plain.roundtrip(&["GET", "kill:c"], BACKEND_UNAVAILABLE);

    redis.restart();
    wait_transactions_work(&sc, "kill:e");
    // Nothing of the old transactions ran on the new Redis.
    for k in ["kill:a", "kill:b", "kill:d"] {
        assert_eq!(direct(redis.port(), &["GET", k]), NIL, "{k}");
    }
    plain.roundtrip(&["GET", "kill:e"], &bulk("v"));
}

/// A client blocked in BLPOP when Redis dies gets `-ERR backend unavailable`
/// and keeps its connection, which works again once Redis is back.
#[test]
fn blpop_when_redis_dies_gets_an_error_and_keeps_the_client() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut a = sc.connect();
    let mut b = sc.connect();
    a.send_cmd(&["BLPOP", "kill:l", "0"]);
    b.send_cmd(&["BLPOP", "kill:l2", "100"]);
    wait_blocked(redis.port(), 2);
    let killed = Instant::now();
    redis.kill();
    a.set_timeout(AT_ONCE);
    b.set_timeout(AT_ONCE);
    a.expect(BACKEND_UNAVAILABLE);
    b.expect(BACKEND_UNAVAILABLE);
    assert!(killed.elapsed() < AT_ONCE);
    a.ping();
    b.ping();

    redis.restart();
    let back = poll_until(Duration::from_secs(8), Duration::from_millis(50), || {
        a.send_cmd(&["GET", "kill:k"]);
        (a.read_reply_raw() == NIL).then_some(())
    });
    assert!(
        back.is_some(),
        "GET did not work again after Redis restarted"
    );
    a.ping();
    a.send_cmd(&["BLPOP", "kill:l", "0"]);
    wait_blocked(redis.port(), 1);
    assert_eq!(direct(redis.port(), &["RPUSH", "kill:l", "x"]), int(1));
    a.expect(b"*2\r\n$6\r\nkill:l\r\n$1\r\nx\r\n");
    b.roundtrip(&["SET", "kill:k", "v"], OK);
    b.roundtrip(&["GET", "kill:k"], &bulk("v"));
}

// ---------------------------------------------------------------------------
// Differential scripts: the same steps against Redis and against sidecache
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum S {
    /// `HELLO 3`; its reply is read and not compared (sidecache's differs).
    Hello3,
    /// These requests, in one write, nothing read.
    Req(&'static [&'static [&'static str]]),
    /// Reads this many replies (or pushes), compared.
    Read(usize),
    /// A command straight to Redis (both runs), its reply not compared.
    Direct(&'static [&'static str]),
    /// Waits until Redis has a subscriber to the channel (or any pattern
    /// subscription), publishes straight to Redis (both runs).
    Publish(&'static str, &'static str),
    /// Publishes straight to Redis at once, whoever listens.
    PublishNow(&'static str, &'static str),
}

use S::{Direct, Hello3, Publish, PublishNow, Read, Req};

struct Script {
    name: &'static str,
    steps: &'static [S],
}

/// Runs `steps` on a new connection to `port`, then checks that nothing
/// more arrives; returns the replies read.
fn run_steps(port: u16, redis_port: u16, steps: &[S]) -> Vec<Vec<u8>> {
    let mut c = Conn::connect(port);
    c.set_timeout(AT_ONCE);
    let mut got = Vec::new();
    for step in steps {
        match *step {
            Hello3 => hello3(&mut c),
            Req(requests) => c.send(&requests.iter().flat_map(|r| cmd(r)).collect::<Vec<u8>>()),
            Read(n) => {
                for _ in 0..n {
                    got.push(c.read_reply3_raw());
                }
            }
            Direct(args) => {
                direct(redis_port, args);
            }
            Publish(channel, message) => {
                let subscribed = poll_until(AT_ONCE, Duration::from_millis(5), || {
                    (numsub(redis_port, channel) > 0 || numpat(redis_port) > 0).then_some(())
                });
                assert!(subscribed.is_some(), "nobody subscribed to {channel}");
                direct(redis_port, &["PUBLISH", channel, message]);
            }
            PublishNow(channel, message) => {
                direct(redis_port, &["PUBLISH", channel, message]);
            }
        }
    }
    c.expect_silence(Duration::from_millis(150));
    got
}

/// Runs each script against Redis and then against sidecache (the same
/// redis-server, emptied in between) and compares the bytes.
fn differential(scripts: &[Script]) {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut failures = Vec::new();
    for s in scripts {
        direct(redis.port(), &["FLUSHALL"]);
        let reference = panic::catch_unwind(AssertUnwindSafe(|| {
            run_steps(redis.port(), redis.port(), s.steps)
        }))
        .unwrap_or_else(|p| {
            panic!(
                "script {:?} against Redis itself: {}",
                s.name,
                panic_text(&*p)
            )
        });
        direct(redis.port(), &["FLUSHALL"]);
        let shown = |frames: &[Vec<u8>]| {
            frames
                .iter()
                .map(|f| escape(f))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match panic::catch_unwind(AssertUnwindSafe(|| {
            run_steps(sc.port(), redis.port(), s.steps)
        })) {
            Ok(got) if got == reference => {}
            Ok(got) => failures.push(format!(
                "{}:\n   redis: {}\n   proxy: {}",
                s.name,
                shown(&reference),
                shown(&got)
            )),
            Err(p) => failures.push(format!(
                "{}: {}\n   redis: {}",
                s.name,
                panic_text(&*p),
                shown(&reference)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scripts differ from Redis:\n{}",
        failures.len(),
        scripts.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. CLIENT REPLY, CLIENT UNBLOCK
// ---------------------------------------------------------------------------

/// Read counts are Redis 7.0's (the version this suite runs against).
const CLIENT_REPLY_SCRIPTS: &[Script] = &[
    Script {
        name: "off, then on",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "r:a", "1"],
                &["GET", "r:a"],
                &["INCR", "r:a"],
                &["GET", "r:a"],
                &["NOSUCHCOMMAND"],
                &["GET"],
                &["PING"],
                &["ECHO", "x"],
                &["CLIENT", "ID"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "r:a"],
            ]),
            Read(2),
        ],
    },
    Script {
        name: "off, one request at a time",
        steps: &[
            Req(&[&["CLIENT", "REPLY", "OFF"]]),
            Req(&[&["SET", "r:a", "1"]]),
            Req(&[&["GET", "r:a"]]),
            Req(&[&["GET", "r:a"]]),
            Req(&[&["CLIENT", "REPLY", "OFF"]]),
            Req(&[&["CLIENT", "REPLY", "ON"]]),
            Read(1),
            Req(&[&["GET", "r:a"]]),
            Read(1),
        ],
    },
    Script {
        name: "skip",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["SET", "r:a", "1"],
                &["GET", "r:a"],
            ]),
            Read(1),
            Req(&[&["CLIENT", "REPLY", "SKIP"]]),
            Req(&[&["GET", "r:a"]]),
            Req(&[&["INCR", "r:a"]]),
            Read(1),
        ],
    },
    Script {
        name: "skip, skip",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["CLIENT", "REPLY", "SKIP"],
                &["SET", "r:a", "2"],
                &["GET", "r:a"],
            ]),
            Read(1),
        ],
    },
    Script {
        name: "off, skip, on",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "OFF"],
                &["CLIENT", "REPLY", "SKIP"],
                &["SET", "r:a", "3"],
                &["GET", "r:a"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "r:a"],
            ]),
            Read(2),
        ],
    },
    Script {
        name: "skip, then on",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["CLIENT", "REPLY", "ON"],
                &["PING"],
            ]),
            Read(2),
        ],
    },
    Script {
        name: "skip a cached GET and a local answer",
        steps: &[
            Req(&[&["SET", "r:a", "4"], &["GET", "r:a"], &["GET", "r:a"]]),
            Read(3),
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["GET", "r:a"],
                &["GET", "r:a"],
                &["CLIENT", "REPLY", "SKIP"],
                &["PING"],
                &["ECHO", "e"],
            ]),
            Read(2),
        ],
    },
    Script {
        name: "bad mode",
        steps: &[Req(&[&["CLIENT", "REPLY", "maybe"], &["PING"]]), Read(2)],
    },
    Script {
        name: "a transaction unheard",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "OFF"],
                &["MULTI"],
                &["SET", "r:t", "5"],
                &["GET", "r:t"],
                &["EXEC"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "r:t"],
            ]),
            Read(2),
        ],
    },
    Script {
        name: "watch unheard, then a nil EXEC",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "OFF"],
                &["WATCH", "r:w"],
                &["CLIENT", "REPLY", "ON"],
            ]),
            Read(1),
            Direct(&["SET", "r:w", "theirs"]),
            Req(&[
                &["MULTI"],
                &["SET", "r:w", "mine"],
                &["EXEC"],
                &["GET", "r:w"],
            ]),
            Read(4),
        ],
    },
    Script {
        name: "a blocking call unheard",
        steps: &[
            Req(&[&["RPUSH", "r:l", "x", "y"]]),
            Read(1),
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["BLPOP", "r:l", "0.1"],
                &["BLPOP", "r:l", "0.1"],
                &["CLIENT", "REPLY", "OFF"],
                &["BLPOP", "r:l", "0.1"],
                &["CLIENT", "REPLY", "ON"],
                &["LLEN", "r:l"],
            ]),
            Read(3),
        ],
    },
];

#[test]
fn client_reply_same_bytes_as_redis() {
    differential(CLIENT_REPLY_SCRIPTS);
}

/// Pub/sub traffic still flows with replies off, as in Redis (7.0 sends
/// (un)subscribe acknowledgements too).
const CLIENT_REPLY_PUBSUB_SCRIPTS: &[Script] = &[
    Script {
        name: "subscribed (RESP2) with replies off",
        steps: &[
            Req(&[&["CLIENT", "REPLY", "OFF"], &["SUBSCRIBE", "r:ch"]]),
            Read(1),
            Publish("r:ch", "m1"),
            Read(1),
            Req(&[&["PING"], &["PSUBSCRIBE", "r:p*"]]),
            Read(1),
            Publish("r:pp", "m2"),
            Read(1),
            Req(&[&["UNSUBSCRIBE", "r:ch"], &["PUNSUBSCRIBE"]]),
            Read(2),
            Req(&[&["RESET"], &["GET", "r:a"]]),
            Read(2),
        ],
    },
    Script {
        name: "subscribed (RESP2) with one reply skipped",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["SUBSCRIBE", "r:ch"],
                &["PING"],
            ]),
            Read(2),
            Publish("r:ch", "m1"),
            Read(1),
            Req(&[&["UNSUBSCRIBE"], &["GET", "r:a"]]),
            Read(2),
        ],
    },
    Script {
        name: "subscribed (RESP3) with replies off",
        steps: &[
            Hello3,
            Req(&[&["CLIENT", "REPLY", "OFF"], &["SUBSCRIBE", "r:ch"]]),
            Read(1),
            Publish("r:ch", "m1"),
            Read(1),
            Req(&[&["GET", "r:a"], &["SET", "r:a", "1"], &["PING"]]),
            Publish("r:ch", "m2"),
            Read(1),
            Req(&[&["CLIENT", "REPLY", "ON"], &["GET", "r:a"], &["PING"]]),
            Read(3),
            Req(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["UNSUBSCRIBE", "r:ch"],
                &["PING"],
            ]),
            Read(2),
        ],
    },
];

#[test]
fn client_reply_with_subscriptions_same_bytes_as_redis() {
    differential(CLIENT_REPLY_PUBSUB_SCRIPTS);
}

/// `CLIENT REPLY` and `CLIENT UNBLOCK` with the wrong number of arguments:
/// Redis counts arguments first.
#[test]
fn client_reply_and_unblock_arity_errors_as_redis() {
    differential(&[
        Script {
            name: "CLIENT REPLY without a mode",
            steps: &[Req(&[&["CLIENT", "REPLY"], &["PING"]]), Read(2)],
        },
        Script {
            name: "CLIENT REPLY with two modes",
            steps: &[
                Req(&[&["CLIENT", "REPLY", "ON", "OFF"], &["PING"]]),
                Read(2),
            ],
        },
        Script {
            name: "CLIENT UNBLOCK without an id",
            steps: &[Req(&[&["CLIENT", "UNBLOCK"], &["PING"]]), Read(2)],
        },
        Script {
            name: "CLIENT UNBLOCK with too many arguments",
            steps: &[
                Req(&[&["CLIENT", "UNBLOCK", "1", "ERROR", "x"], &["PING"]]),
                Read(2),
            ],
        },
    ]);
}

/// The client's id through sidecache (sidecache's own; Redis's in direct mode).
fn client_id(c: &mut Conn) -> String {
    c.send_cmd(&["CLIENT", "ID"]);
    match c.read_reply3_raw().as_slice() {
        [b':', rest @ ..] => String::from_utf8_lossy(rest).trim_end().to_string(),
        other => panic!("CLIENT ID: {}", escape(other)),
    }
}

fn client_unblock(resp3: bool) {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut a = sc.connect();
    let mut b = sc.connect();
    if resp3 {
        hello3(&mut a);
        hello3(&mut b);
    }
    let nil = if resp3 { &b"_\r\n"[..] } else { NIL_ARRAY };
    let a_id = client_id(&mut a);
    let b_id = client_id(&mut b);
    assert_ne!(a_id, b_id);

    // Not blocked (yet): nothing to unblock.
    b.roundtrip(&["CLIENT", "UNBLOCK", &a_id], &int(0));

    // TIMEOUT, implicit and explicit: a nil, as if the timeout passed.
    for reason in [None, Some("TIMEOUT"), Some("timeout")] {
        a.send_cmd(&["BLPOP", "ub:l", "0"]);
        wait_blocked(redis.port(), 1);
        let mut unblock = vec!["CLIENT", "UNBLOCK", a_id.as_str()];
        unblock.extend(reason);
        b.roundtrip(&unblock, &int(1));
        a.expect(nil);
        wait_blocked(redis.port(), 0);
        b.roundtrip(&unblock, &int(0));
    }

    // ERROR: the call fails with Redis's error.
    a.send_cmd(&["BLPOP", "ub:l", "0"]);
    wait_blocked(redis.port(), 1);
    b.roundtrip(&["CLIENT", "UNBLOCK", &a_id, "ERROR"], &int(1));
    a.expect(b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n");
    wait_blocked(redis.port(), 0);

    // Other blocking commands, and a client unblocked by a push is not
    // unblocked again.
    a.send_cmd(&["BRPOPLPUSH", "ub:src", "ub:dst", "0"]);
    wait_blocked(redis.port(), 1);
    b.roundtrip(&["CLIENT", "UNBLOCK", &a_id], &int(1));
    a.expect(nil);
    a.send_cmd(&["BLPOP", "ub:l", "0"]);
    wait_blocked(redis.port(), 1);
    b.roundtrip(&["RPUSH", "ub:l", "x"], &int(1));
    a.expect(b"*2\r\n$4\r\nub:l\r\n$1\r\nx\r\n");
    b.roundtrip(&["CLIENT", "UNBLOCK", &a_id], &int(0));

    // A client in a transaction, or unblocking itself, is not blocked.
    a.roundtrip(&["MULTI"], OK);
    b.roundtrip(&["CLIENT", "UNBLOCK", &a_id], &int(0));
    a.roundtrip(&["DISCARD"], OK);
    b.roundtrip(&["CLIENT", "UNBLOCK", &b_id], &int(0));
    // An id no client has.
    b.roundtrip(&["CLIENT", "UNBLOCK", "987654321"], &int(0));

    // Bad arguments, with Redis's errors.
    b.roundtrip(
        &["CLIENT", "UNBLOCK", "x"],
        b"-ERR value is not an integer or out of range\r\n",
    );
    b.roundtrip(
        &["CLIENT", "UNBLOCK", &a_id, "never"],
        b"-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n",
    );
    a.ping();
    b.ping();
}

#[test]
fn client_unblock_resp2() {
    client_unblock(false);
}

#[test]
fn client_unblock_resp3() {
    client_unblock(true);
}

// ---------------------------------------------------------------------------
// 4. RESET
// ---------------------------------------------------------------------------

const RESET_SCRIPTS: &[Script] = &[
    Script {
        name: "inside a MULTI",
        steps: &[
            Req(&[
                &["MULTI"],
                &["SET", "rs:k", "v"],
                &["RESET"],
                &["EXEC"],
                &["GET", "rs:k"],
            ]),
            Read(5),
        ],
    },
    Script {
        name: "after WATCH",
        steps: &[
            Req(&[&["WATCH", "rs:k"], &["RESET"]]),
            Read(2),
            Direct(&["SET", "rs:k", "theirs"]),
            Req(&[
                &["MULTI"],
                &["SET", "rs:k", "mine"],
                &["EXEC"],
                &["GET", "rs:k"],
            ]),
            Read(4),
        ],
    },
    Script {
        name: "inside a MULTI after WATCH",
        steps: &[
            Req(&[
                &["WATCH", "rs:k"],
                &["MULTI"],
                &["SET", "rs:k", "a"],
                &["RESET"],
            ]),
            Read(4),
            Direct(&["SET", "rs:k", "theirs"]),
            Req(&[
                &["MULTI"],
                &["SET", "rs:k", "mine"],
                &["EXEC"],
                &["GET", "rs:k"],
            ]),
            Read(4),
        ],
    },
    Script {
        name: "subscribed (RESP2)",
        steps: &[
            Req(&[&["SUBSCRIBE", "rs:ch", "rs:ch2"], &["PSUBSCRIBE", "rs:p*"]]),
            Read(3),
            Publish("rs:ch", "m1"),
            Read(1),
            Req(&[&["RESET"], &["GET", "rs:k"]]),
            Read(2),
            PublishNow("rs:ch", "m2"),
            PublishNow("rs:pp", "m3"),
            Req(&[&["PING"], &["SET", "rs:k", "v"], &["GET", "rs:k"]]),
            Read(3),
        ],
    },
    Script {
        name: "after HELLO 3",
        steps: &[
            Hello3,
            Req(&[&["GET", "rs:k"], &["HGETALL", "rs:h"], &["RESET"]]),
            Read(3),
            Req(&[
                &["GET", "rs:k"],
                &["HGETALL", "rs:h"],
                &["HSET", "rs:h", "f", "v"],
            ]),
            Read(3),
            Req(&[&["HGETALL", "rs:h"]]),
            Read(1),
        ],
    },
    Script {
        name: "subscribed (RESP3)",
        steps: &[
            Hello3,
            Req(&[&["SUBSCRIBE", "rs:ch"]]),
            Read(1),
            Publish("rs:ch", "m1"),
            Read(1),
            Req(&[&["GET", "rs:k"], &["RESET"], &["GET", "rs:k"]]),
            Read(3),
            PublishNow("rs:ch", "m2"),
            Req(&[&["PING"]]),
            Read(1),
        ],
    },
    Script {
        name: "in a MULTI after HELLO 3",
        steps: &[
            Hello3,
            Req(&[
                &["MULTI"],
                &["GET", "rs:k"],
                &["RESET"],
                &["GET", "rs:k"],
                &["MULTI"],
                &["GET", "rs:k"],
                &["EXEC"],
            ]),
            Read(7),
        ],
    },
    Script {
        name: "with replies off",
        steps: &[
            Req(&[
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "rs:k", "v"],
                &["RESET"],
                &["GET", "rs:k"],
            ]),
            Read(2),
        ],
    },
    Script {
        name: "after a blocking call timed out",
        steps: &[
            Req(&[&["BLPOP", "rs:l", "0.05"], &["RESET"], &["PING"]]),
            Read(3),
        ],
    },
];

#[test]
fn reset_same_bytes_as_redis() {
    differential(RESET_SCRIPTS);
}

/// Redis 7.0 leaves a skipped RESET unanswered (RESET clears OFF and a
/// pending SKIP, not the skip of the RESET itself).
#[test]
fn a_skipped_reset_is_not_answered() {
    differential(&[Script {
        name: "skip, then RESET",
        steps: &[
            Req(&[&["CLIENT", "REPLY", "SKIP"], &["RESET"], &["PING"]]),
            Read(1),
        ],
    }]);
}

/// After RESET of a subscribed client, sidecache lets go of the channel in
/// Redis too (its last listener left).
#[test]
fn reset_releases_the_subscription() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut a = sc.connect();
    a.roundtrip(
        &["SUBSCRIBE", "rs:only"],
        b"*3\r\n$9\r\nsubscribe\r\n$7\r\nrs:only\r\n:1\r\n",
    );
    assert_eq!(numsub(redis.port(), "rs:only"), 1);
    a.roundtrip(&["RESET"], b"+RESET\r\n");
    let gone = poll_until(Duration::from_secs(2), Duration::from_millis(10), || {
        (numsub(redis.port(), "rs:only") == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "Redis still counts a subscriber after RESET"
    );
    assert_eq!(direct(redis.port(), &["PUBLISH", "rs:only", "m"]), int(0));
    a.roundtrip(&["GET", "rs:k"], NIL);
    a.expect_silence(Duration::from_millis(100));
}

// ---------------------------------------------------------------------------
// 5. SCRIPT KILL and FUNCTION KILL while a script stalls the shared connection
// ---------------------------------------------------------------------------

/// Makes Redis answer -BUSY (and accept SCRIPT KILL) after 10 ms of script.
fn short_busy_threshold(redis_port: u16) {
    let set = direct(redis_port, &["CONFIG", "SET", "busy-reply-threshold", "10"]);
    if set != OK {
        // Before Redis 7.0.
        assert_eq!(
            direct(redis_port, &["CONFIG", "SET", "lua-time-limit", "10"]),
            OK
        );
    }
}

/// Waits until Redis answers -BUSY (a script is running past the threshold).
#[track_caller]
fn wait_busy(redis_port: u16) {
    let busy = poll_until(Duration::from_secs(3), Duration::from_millis(10), || {
        direct(redis_port, &["PING"])
            .starts_with(b"-BUSY")
            .then_some(())
    });
    assert!(busy.is_some(), "Redis never became busy with the script");
}

/// `busy` is sent by one client and `kill` by another, first straight to
/// Redis (for Redis's bytes), then through sidecache.
fn kill_busy_script(busy: &[&str], kill: &[&str], setup: &[&[&str]]) {
    let redis = RedisServer::start();
    short_busy_threshold(redis.port());
    for args in setup {
        let reply = direct(redis.port(), args);
        assert!(!reply.starts_with(b"-"), "{args:?}: {}", escape(&reply));
    }
    // sidecache's own backend timeout (5 s by default) would otherwise cut
    // the shared connection while the script runs: 30 s leaves the kill to
    // SCRIPT KILL / FUNCTION KILL alone.
    let sc = Sidecache::start(redis.port(), &["--timeout", "30s"]);

    let run = |port: u16| -> (Vec<u8>, Vec<u8>) {
        let mut a = Conn::connect(port);
        let mut b = Conn::connect(port);
        a.set_timeout(AT_ONCE);
        b.set_timeout(AT_ONCE);
        a.roundtrip(&["SET", "sk:k", "before"], OK);
        a.send_cmd(busy);
        wait_busy(redis.port());
        let started = Instant::now();
        b.send_cmd(kill);
        let killed = b.read_reply_raw();
        assert!(
            started.elapsed() < AT_ONCE,
            "{kill:?} took {:?}",
            started.elapsed()
        );
        let error = a.read_reply_raw();
        // Everyone is served again.
        a.roundtrip(&["GET", "sk:k"], &bulk("before"));
        a.roundtrip(&["SET", "sk:k", "after"], OK);
        b.roundtrip(&["GET", "sk:k"], &bulk("after"));
        let mut c = Conn::connect(port);
        c.roundtrip(&["SET", "sk:k", "c"], OK);
        c.roundtrip(&["GET", "sk:k"], &bulk("c"));
        a.roundtrip(&["GET", "sk:k"], &bulk("c"));
        (killed, error)
    };

    let (redis_killed, redis_error) = run(redis.port());
    assert_eq!(redis_killed, OK, "{kill:?} straight to Redis");
    assert!(
        redis_error.starts_with(b"-") && escape(&redis_error).to_lowercase().contains("kill"),
        "the killed script straight on Redis: {}",
        escape(&redis_error)
    );
    let (killed, error) = run(sc.port());
    assert_eq!(
        killed,
        OK,
        "{kill:?} through sidecache: {}",
        escape(&killed)
    );
    assert_eq!(
        error,
        redis_error,
        "the killed script through sidecache: {} (Redis: {})",
        escape(&error),
        escape(&redis_error)
    );
}

#[test]
fn script_kill_reaches_a_busy_redis() {
    kill_busy_script(
        &["EVAL", "while true do end", "0"],
        &["SCRIPT", "KILL"],
        &[],
    );
}

#[test]
fn function_kill_reaches_a_busy_redis() {
    kill_busy_script(
        &["FCALL_RO", "sk_busy", "0"],
        &["FUNCTION", "KILL"],
        &[&[
            "FUNCTION",
            "LOAD",
            "REPLACE",
            "#!lua name=sklib\n\
             redis.register_function{function_name='sk_busy', \
             callback=function() while true do end end, flags={'no-writes'}}",
        ]],
    );
}

// ---------------------------------------------------------------------------
// 6. --max-pinned
// ---------------------------------------------------------------------------

/// With `--max-pinned 3` and 3 clients watching, a 4th client's MULTI is
/// refused at once and its transaction aborted (nothing runs); once one of
/// the 3 unwatches, the 4th runs a transaction.
#[test]
fn max_pinned_refuses_a_multi_and_aborts_its_transaction() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &["--max-pinned", "3"]);
    let mut watchers: Vec<Conn> = (0..3)
        .map(|i| {
            let mut w = sc.connect();
            w.roundtrip(&["WATCH", &format!("mp:w{i}")], OK);
            w
        })
        .collect();
    let mut d = sc.connect();
    d.set_timeout(AT_ONCE);

    let refused = at_once(&mut d, &["MULTI"]);
    assert!(
        refused.starts_with(b"-ERR max pinned connections reached"),
        "MULTI past --max-pinned: {}",
        escape(&refused)
    );
    assert_eq!(
        refused,
        b"-ERR max pinned connections reached (--max-pinned 3): too many clients are in a \
          transaction or a blocking command; the commands up to EXEC or DISCARD will not run\r\n"
    );
    let set = at_once(&mut d, &["SET", "mp:d", "v"]);
    assert!(
        set.starts_with(b"-ERR"),
        "SET after a refused MULTI: {}",
        escape(&set)
    );
    d.roundtrip(&["MULTI"], b"-ERR MULTI calls can not be nested\r\n");
    d.roundtrip(
        &["INCR", "mp:n"],
        b"-ERR 'incr' did not run: sidecache refused the MULTI before it\r\n",
    );
    d.roundtrip(&["EXEC"], EXECABORT);
    assert_eq!(
        direct(redis.port(), &["GET", "mp:d"]),
        NIL,
        "the refused transaction ran"
    );
    assert_eq!(
        direct(redis.port(), &["GET", "mp:n"]),
        NIL,
        "the refused transaction ran"
    );
    // Out of the refused transaction: commands run one by one again.
    d.roundtrip(&["SET", "mp:plain", "1"], OK);
    d.roundtrip(&["GET", "mp:plain"], &bulk("1"));

    // Pipelined, and ended by DISCARD.
    d.send(
        &[
            cmd(&["MULTI"]),
            cmd(&["SET", "mp:d", "v"]),
            cmd(&["DISCARD"]),
            cmd(&["GET", "mp:d"]),
        ]
        .concat(),
    );
    assert!(d
        .read_reply_raw()
        .starts_with(b"-ERR max pinned connections reached"));
    assert!(d.read_reply_raw().starts_with(b"-ERR 'set' did not run"));
    d.expect(OK);
    d.expect(NIL);
    // WATCH and blocking calls are refused too, and leave nothing to abort.
    assert!(at_once(&mut d, &["WATCH", "mp:d"]).starts_with(b"-ERR max pinned connections reached"));
    assert!(at_once(&mut d, &["BLPOP", "mp:l", "0"])
        .starts_with(b"-ERR max pinned connections reached"));
    d.roundtrip(&["EXEC"], EXEC_WITHOUT_MULTI);

    // One watcher lets go: its connection is free for d.
    watchers[0].roundtrip(&["UNWATCH"], OK);
    d.roundtrip(&["MULTI"], OK);
    d.roundtrip(&["SET", "mp:d", "v"], QUEUED);
    d.roundtrip(&["EXEC"], b"*1\r\n+OK\r\n");
    d.roundtrip(&["GET", "mp:d"], &bulk("v"));

    // The other watchers' WATCHes held throughout.
    transaction(&mut watchers[1], "mp:w1", "mine");
    assert_eq!(direct(redis.port(), &["SET", "mp:w2", "theirs"]), OK);
    watchers[2].roundtrip(&["MULTI"], OK);
    watchers[2].roundtrip(&["SET", "mp:w2", "mine"], QUEUED);
    watchers[2].roundtrip(&["EXEC"], NIL_ARRAY);
    let pinned = client_ids_named(redis.port(), "sidecache-pinned").len();
    assert!(
        pinned <= 3,
        "{pinned} pinned connections with --max-pinned 3"
    );
}
