//! Blocking commands through sidecache, checked against Redis itself.
//!
//! A client's blocking call (BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP,
//! BZPOPMIN, BZPOPMAX, BZMPOP, XREAD / XREADGROUP with BLOCK) gets a
//! connection to Redis pinned to it until the reply; the other clients go on
//! meanwhile. These tests check:
//!
//! - each command woken by a direct write, and timing out, gives Redis's
//!   bytes, RESP2 and RESP3;
//! - a client that hangs up while blocked does not swallow a later push;
//! - other clients are not slowed by a blocked one;
//! - requests pipelined behind a blocking call are answered after it, in
//!   order, and run after it (read-your-writes included);
//! - `--max-pinned` refuses past the limit with an error, not a hang;
//! - WAIT and WAITAOF stay refused.
//!
//! `SIDECACHE_TEST_DIRECT=1` runs these against Redis itself (the ignored
//! ones with `-- --include-ignored`), which checks the expectations.

#[macro_use]
mod common;

use common::*;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `args` directly on Redis; the raw reply.
fn direct(redis_port: u16, args: &[&str]) -> Vec<u8> {
    let mut c = Conn::connect(redis_port);
    c.send_cmd(args);
    c.read_reply_raw()
}

/// Asserts no reply has arrived on `c` yet (waiting `d` for one).
#[track_caller]
fn assert_no_reply_yet(c: &mut Conn, d: Duration, what: &str) {
    match c.poll_reply(d) {
        Polled::Nothing => {}
        other => panic!("{what}: expected no reply yet, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// (a) Each blocking command, woken and timing out, against Redis's bytes
// ---------------------------------------------------------------------------

/// One blocking command's scenario, run on a flushed Redis.
struct Scenario {
    /// Direct commands that prepare the keys.
    setup: &'static [&'static [&'static str]],
    /// The blocking call (blocks forever until woken).
    block: &'static [&'static str],
    /// Direct commands that wake it.
    wake: &'static [&'static [&'static str]],
    /// Direct commands whose replies show what the call did to the data.
    after: &'static [&'static [&'static str]],
    /// The same command on empty keys with a 0.1 s timeout.
    timeout: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        setup: &[],
        block: &["BLPOP", "bk:a", "bk:b", "0"],
        wake: &[&["RPUSH", "bk:b", "x", "y"]],
        after: &[&["LRANGE", "bk:b", "0", "-1"]],
        timeout: &["BLPOP", "bk:e1", "bk:e2", "0.1"],
    },
    Scenario {
        setup: &[],
        block: &["BRPOP", "bk:a", "0"],
        wake: &[&["RPUSH", "bk:a", "x", "y"]],
        after: &[&["LRANGE", "bk:a", "0", "-1"]],
        timeout: &["BRPOP", "bk:e1", "0.1"],
    },
    Scenario {
        setup: &[&["RPUSH", "bk:dst", "old"]],
        block: &["BRPOPLPUSH", "bk:src", "bk:dst", "0"],
        wake: &[&["RPUSH", "bk:src", "x", "y"]],
        after: &[
            &["LRANGE", "bk:src", "0", "-1"],
            &["LRANGE", "bk:dst", "0", "-1"],
        ],
        timeout: &["BRPOPLPUSH", "bk:e1", "bk:e2", "0.1"],
    },
    Scenario {
        setup: &[&["RPUSH", "bk:dst", "old"]],
        block: &["BLMOVE", "bk:src", "bk:dst", "LEFT", "RIGHT", "0"],
        wake: &[&["RPUSH", "bk:src", "x", "y"]],
        after: &[
            &["LRANGE", "bk:src", "0", "-1"],
            &["LRANGE", "bk:dst", "0", "-1"],
        ],
        timeout: &["BLMOVE", "bk:e1", "bk:e2", "RIGHT", "LEFT", "0.1"],
    },
    Scenario {
        setup: &[],
        block: &["BLMPOP", "0", "2", "bk:a", "bk:b", "RIGHT", "COUNT", "2"],
        wake: &[&["RPUSH", "bk:b", "x", "y", "z"]],
        after: &[&["LRANGE", "bk:b", "0", "-1"]],
        timeout: &["BLMPOP", "0.1", "2", "bk:e1", "bk:e2", "LEFT"],
    },
    Scenario {
        setup: &[],
        block: &["BZPOPMIN", "bk:z", "bk:y", "0"],
        wake: &[&["ZADD", "bk:y", "1.5", "a", "2", "b"]],
        after: &[&["ZRANGE", "bk:y", "0", "-1", "WITHSCORES"]],
        timeout: &["BZPOPMIN", "bk:e1", "0.1"],
    },
    Scenario {
        setup: &[],
        block: &["BZPOPMAX", "bk:z", "0"],
        wake: &[&["ZADD", "bk:z", "1", "a", "2.5", "b"]],
        after: &[&["ZRANGE", "bk:z", "0", "-1", "WITHSCORES"]],
        timeout: &["BZPOPMAX", "bk:e1", "bk:e2", "0.1"],
    },
    Scenario {
        setup: &[],
        block: &["BZMPOP", "0", "2", "bk:z", "bk:y", "MIN", "COUNT", "2"],
        wake: &[&["ZADD", "bk:y", "1", "a", "2", "b", "3.25", "c"]],
        after: &[&["ZRANGE", "bk:y", "0", "-1", "WITHSCORES"]],
        timeout: &["BZMPOP", "0.1", "1", "bk:e1", "MAX"],
    },
    Scenario {
        setup: &[&["XADD", "bk:st", "1-1", "f", "old"]],
        block: &["XREAD", "BLOCK", "0", "STREAMS", "bk:st", "$"],
        wake: &[&["XADD", "bk:st", "2-1", "f", "v", "g", "w"]],
        after: &[&["XLEN", "bk:st"]],
        timeout: &["XREAD", "BLOCK", "100", "STREAMS", "bk:st", "$"],
    },
    Scenario {
        setup: &[],
        block: &[
            "XREAD", "COUNT", "5", "BLOCK", "0", "STREAMS", "bk:s1", "bk:s2", "0-0", "0-0",
        ],
        wake: &[&["XADD", "bk:s2", "7-1", "f", "v"]],
        after: &[],
        timeout: &[
            "XREAD", "BLOCK", "100", "STREAMS", "bk:e1", "bk:e2", "0-0", "0-0",
        ],
    },
    Scenario {
        setup: &[&["XGROUP", "CREATE", "bk:st", "g", "$", "MKSTREAM"]],
        block: &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c1",
            "BLOCK",
            "0",
            "STREAMS",
            "bk:st",
            ">",
        ],
        wake: &[&["XADD", "bk:st", "3-1", "f", "v"]],
        after: &[&["XPENDING", "bk:st", "g"]],
        timeout: &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c2",
            "BLOCK",
            "100",
            "STREAMS",
            "bk:st",
            ">",
        ],
    },
];

/// Runs `s` with the blocking client connected to `port` and every other
/// command sent to Redis directly; the labelled replies.
fn run_scenario(port: u16, redis_port: u16, resp3: bool, s: &Scenario) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    assert_eq!(direct(redis_port, &["FLUSHALL"]), OK);
    for args in s.setup {
        out.push((format!("setup {args:?}"), direct(redis_port, args)));
    }
    let mut c = connect(port, resp3);
    c.send_cmd(s.block);
    wait_blocked(redis_port, 1);
    assert_no_reply_yet(&mut c, Duration::from_millis(20), "blocked call");
    for args in s.wake {
        out.push((format!("wake {args:?}"), direct(redis_port, args)));
    }
    out.push((format!("woken {:?}", s.block), c.read_reply3_raw()));
    for args in s.after {
        out.push((format!("after {args:?}"), direct(redis_port, args)));
    }
    // The connection goes on: a timeout, then an ordinary command.
    let t0 = Instant::now();
    c.send_cmd(s.timeout);
    let timed_out = c.read_reply3_raw();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(90),
        "{:?} answered after {waited:?}, before its timeout",
        s.timeout
    );
    out.push((format!("timeout {:?}", s.timeout), timed_out));
    c.send_cmd(&["LLEN", "bk:a"]);
    out.push(("LLEN after".into(), c.read_reply3_raw()));
    assert_eq!(blocked_clients(redis_port), 0);
    out
}

fn each_blocking_command(resp3: bool) {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let nil: &[u8] = if resp3 { b"_\r\n" } else { b"*-1\r\n" };
    for s in SCENARIOS {
        let d = run_scenario(redis.port(), redis.port(), resp3, s);
        let p = run_scenario(sc.port(), redis.port(), resp3, s);
        for (dr, pr) in d.iter().zip(&p) {
            assert_eq!(dr.0, pr.0);
            assert!(
                dr.1 == pr.1,
                "{} (resp3: {resp3}):\n  redis:     {}\n  sidecache: {}",
                dr.0,
                escape(&dr.1),
                escape(&pr.1)
            );
        }
        assert_eq!(d.len(), p.len());
        let timed_out = &d.iter().find(|(l, _)| l.starts_with("timeout")).unwrap().1;
        assert_eq!(
            timed_out,
            nil,
            "{:?} timing out (resp3: {resp3}): {}",
            s.timeout,
            escape(timed_out)
        );
    }
}

#[test]
fn each_blocking_command_resp2() {
    each_blocking_command(false);
}

#[test]
fn each_blocking_command_resp3() {
    each_blocking_command(true);
}

/// A blocking call that finds data answers at once, like Redis, in both
/// protocols (BZPOPMIN's score is a double in RESP3).
#[test]
fn blocking_call_with_data_answers_at_once() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    for resp3 in [false, true] {
        let mut c = connect(sc.port(), resp3);
        assert_eq!(direct(redis.port(), &["RPUSH", "now:l", "a", "b"]), int(2));
        c.roundtrip(
            &["BLPOP", "now:l", "0"],
            b"*2\r\n$5\r\nnow:l\r\n$1\r\na\r\n",
        );
        c.roundtrip(
            &["BRPOP", "now:l", "0"],
            b"*2\r\n$5\r\nnow:l\r\n$1\r\nb\r\n",
        );
        assert_eq!(direct(redis.port(), &["ZADD", "now:z", "1.5", "m"]), int(1));
        let score = if resp3 { ",1.5\r\n" } else { "$3\r\n1.5\r\n" };
        c.roundtrip(
            &["BZPOPMIN", "now:z", "0"],
            format!("*3\r\n$5\r\nnow:z\r\n$1\r\nm\r\n{score}").as_bytes(),
        );
        // And ordinary commands keep working on the same connection.
        c.roundtrip(&["SET", "now:k", "v"], OK);
        c.roundtrip(&["GET", "now:k"], &bulk("v"));
    }
}

/// A blocking call may wait longer than `--timeout` (which bounds how long
/// Redis takes to answer an ordinary request) without failing, and times
/// out with Redis's nil, not `backend unavailable`.
#[test]
fn blocking_longer_than_the_backend_timeout() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &["--timeout", "500ms"]);
    let mut c = Conn::connect(sc.port());
    c.set_timeout(Duration::from_secs(10));
    c.send_cmd(&["BLPOP", "long:l", "0"]);
    wait_blocked(redis.port(), 1);
    assert_no_reply_yet(&mut c, Duration::from_millis(1500), "BLPOP past --timeout");
    assert_eq!(direct(redis.port(), &["LPUSH", "long:l", "v"]), int(1));
    c.expect(b"*2\r\n$6\r\nlong:l\r\n$1\r\nv\r\n");
    let t0 = Instant::now();
    c.roundtrip(&["BLPOP", "long:l", "1.5"], b"*-1\r\n");
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    c.ping();
}

// ---------------------------------------------------------------------------
// (b) A client that hangs up while blocked
// ---------------------------------------------------------------------------

/// A client that disconnects in the middle of a BLPOP does not leave a
/// blocked connection in Redis to swallow a later push.
#[test]
fn disconnect_while_blocked_does_not_swallow_a_push() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    for round in 0..3 {
        let mut c = Conn::connect(sc.port());
        c.send_cmd(&["BLPOP", "gone:l", "0"]);
        wait_blocked(redis.port(), 1);
        drop(c);
        // Redis unblocks only once sidecache closes the pinned connection.
        wait_blocked(redis.port(), 0);
        let value = format!("v{round}");
        assert_eq!(direct(redis.port(), &["LPUSH", "gone:l", &value]), int(1));
        assert_eq!(
            direct(redis.port(), &["LRANGE", "gone:l", "0", "-1"]),
            format!("*1\r\n{}", String::from_utf8(bulk(&value)).unwrap()).into_bytes(),
            "the push was swallowed"
        );
        // A new client's blocking call finds it at once.
        let mut d = Conn::connect(sc.port());
        d.roundtrip(
            &["BLPOP", "gone:l", "0"],
            format!("*2\r\n$6\r\ngone:l\r\n${}\r\n{value}\r\n", value.len()).as_bytes(),
        );
    }
}

// ---------------------------------------------------------------------------
// (c) A blocked client does not slow the others
// ---------------------------------------------------------------------------

#[test]
fn blocked_client_does_not_slow_the_others() {
    const CLIENTS: usize = 50;
    const PAIRS: usize = 100; // SET + GET: 200 round trips per client
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut blocker = Conn::connect(sc.port());
    let t0 = Instant::now();
    blocker.send_cmd(&["BLPOP", "iso:l", "5"]);
    wait_blocked(redis.port(), 1);

    let start = Arc::new(Barrier::new(CLIENTS));
    let port = sc.port();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let mut c = Conn::connect(port);
                start.wait();
                for j in 0..PAIRS {
                    let key = format!("iso:{i}:{}", j % 10);
                    let value = format!("v{i}-{j}");
                    c.roundtrip(&["SET", &key, &value], OK);
                    c.roundtrip(&["GET", &key], &bulk(&value));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a client thread failed");
    }
    let busy = t0.elapsed();
    assert!(
        busy < Duration::from_millis(4500),
        "the other clients took {busy:?}, close to the BLPOP's 5 s timeout"
    );
    assert_no_reply_yet(
        &mut blocker,
        Duration::from_millis(10),
        "BLPOP while the others ran",
    );
    assert_eq!(blocked_clients(redis.port()), 1);
    assert_eq!(direct(redis.port(), &["RPUSH", "iso:l", "woken"]), int(1));
    blocker.expect(b"*2\r\n$5\r\niso:l\r\n$5\r\nwoken\r\n");
    blocker.ping();
}

// ---------------------------------------------------------------------------
// (d) Requests pipelined behind a blocking call
// ---------------------------------------------------------------------------

/// `BLPOP l 0`, `SET x new`, `GET x` in one write: nothing is answered, and
/// SET does not run, until BLPOP is woken; then the replies come in order,
/// and the GET sees the SET (not a value cached before).
fn pipelined_behind_a_blocking_call(resp3: bool) {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    // x is cached by sidecache as "old".
    let mut other = connect(sc.port(), resp3);
    other.roundtrip(&["SET", "pl:x", "old"], OK);
    other.roundtrip(&["GET", "pl:x"], &bulk("old"));
    other.roundtrip(&["GET", "pl:x"], &bulk("old"));

    let mut c = connect(sc.port(), resp3);
    let mut batch = cmd(&["BLPOP", "pl:l", "0"]);
    batch.extend(cmd(&["SET", "pl:x", "new"]));
    batch.extend(cmd(&["GET", "pl:x"]));
    batch.extend(cmd(&["LLEN", "pl:l"]));
    c.send(&batch);
    wait_blocked(redis.port(), 1);
    assert_no_reply_yet(&mut c, Duration::from_millis(200), "pipeline behind BLPOP");
    assert_eq!(direct(redis.port(), &["GET", "pl:x"]), bulk("old"));
    other.roundtrip(&["GET", "pl:x"], &bulk("old"));

    assert_eq!(direct(redis.port(), &["LPUSH", "pl:l", "a", "b"]), int(2));
    c.expect(b"*2\r\n$4\r\npl:l\r\n$1\r\nb\r\n");
    c.expect(OK);
    c.expect(&bulk("new"));
    c.expect(&int(1));
    other.roundtrip(&["GET", "pl:x"], &bulk("new"));
    c.expect_silence(Duration::from_millis(50));
}

#[test]
fn pipelined_behind_a_blocking_call_resp2() {
    pipelined_behind_a_blocking_call(false);
}

#[test]
fn pipelined_behind_a_blocking_call_resp3() {
    pipelined_behind_a_blocking_call(true);
}

/// Two blocking calls pipelined: the second blocks after the first is woken.
#[test]
fn two_blocking_calls_pipelined() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut c = Conn::connect(sc.port());
    let mut batch = cmd(&["BLPOP", "pp:a", "0"]);
    batch.extend(cmd(&["BRPOP", "pp:b", "0"]));
    batch.extend(cmd(&["PING"]));
    c.send(&batch);
    wait_blocked(redis.port(), 1);
    assert_eq!(direct(redis.port(), &["RPUSH", "pp:a", "1"]), int(1));
    c.expect(b"*2\r\n$4\r\npp:a\r\n$1\r\n1\r\n");
    wait_blocked(redis.port(), 1);
    assert_no_reply_yet(&mut c, Duration::from_millis(100), "second BRPOP");
    assert_eq!(direct(redis.port(), &["RPUSH", "pp:b", "2"]), int(1));
    c.expect(b"*2\r\n$4\r\npp:b\r\n$1\r\n2\r\n");
    c.expect(PONG);
}

// ---------------------------------------------------------------------------
// (e) --max-pinned
// ---------------------------------------------------------------------------

/// With `--max-pinned 2`, a third client blocking at the same time gets an
/// error at once (not a hang), keeps its connection, and can block again
/// once a pinned connection is free.
#[test]
fn max_pinned_refuses_with_an_error() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &["--max-pinned", "2"]);
    let mut a = Conn::connect(sc.port());
    a.send_cmd(&["BLPOP", "mp:a", "0"]);
    wait_blocked(redis.port(), 1);
    let mut b = Conn::connect(sc.port());
    b.send_cmd(&["BLPOP", "mp:b", "0"]);
    wait_blocked(redis.port(), 2);

    let mut c = Conn::connect(sc.port());
    c.set_timeout(Duration::from_secs(2));
    c.send_cmd(&["BLPOP", "mp:c", "0"]);
    let err = c.read_error();
    assert!(
        err.starts_with("ERR max pinned connections reached"),
        "third blocking client: -{err}"
    );
    assert_eq!(blocked_clients(redis.port()), 2);
    c.roundtrip(&["GET", "mp:k"], NIL);
    c.roundtrip(&["SET", "mp:k", "v"], OK);
    c.roundtrip(&["GET", "mp:k"], &bulk("v"));

    // Wake a: its pinned connection is released on the reply.
    assert_eq!(direct(redis.port(), &["RPUSH", "mp:a", "x"]), int(1));
    a.expect(b"*2\r\n$4\r\nmp:a\r\n$1\r\nx\r\n");
    wait_blocked(redis.port(), 1);

    // Now c can block, and is woken.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        c.send_cmd(&["BLPOP", "mp:c", "0"]);
        match c.poll_reply(Duration::from_millis(200)) {
            Polled::Nothing => break,
            Polled::Reply(r) if r.starts_with(b"-ERR max pinned") && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            other => panic!("BLPOP after a pinned connection was freed: {other:?}"),
        }
    }
    wait_blocked(redis.port(), 2);
    assert_eq!(direct(redis.port(), &["RPUSH", "mp:c", "y"]), int(1));
    c.expect(b"*2\r\n$4\r\nmp:c\r\n$1\r\ny\r\n");
    assert_eq!(direct(redis.port(), &["RPUSH", "mp:b", "z"]), int(1));
    b.expect(b"*2\r\n$4\r\nmp:b\r\n$1\r\nz\r\n");
    wait_blocked(redis.port(), 0);
    a.ping();
    b.ping();
    c.ping();
}

// ---------------------------------------------------------------------------
// (f) WAIT and WAITAOF stay refused
// ---------------------------------------------------------------------------

#[test]
fn wait_and_waitaof_are_refused() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut c = Conn::connect(sc.port());
    let err = {
        c.send_cmd(&["WAIT", "0", "0"]);
        c.read_error()
    };
    assert!(
        err.starts_with("ERR 'wait' is not supported by sidecache: "),
        "WAIT: -{err}"
    );
    c.send_cmd(&["WAITAOF", "0", "0", "0"]);
    let err = c.read_error();
    assert!(
        err.starts_with("ERR 'waitaof' is not supported by sidecache: "),
        "WAITAOF: -{err}"
    );
    c.send_cmd(&["wait", "1", "100"]);
    assert!(c.read_error().starts_with("ERR 'wait' is not supported"));
    // The connection stays usable.
    c.ping();
}
