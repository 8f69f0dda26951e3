//! The connection to Redis: Redis down at start, Redis dying with requests
//! in flight, reconnecting, the cache cleared on reconnect, and client slots
//! reused while a departed client's reply is still owed.

#[macro_use]
mod common;

use common::*;
use std::time::{Duration, Instant};

const RECOVERY: Duration = Duration::from_secs(10);

/// Sends one request and returns the raw reply and how long it took.
fn timed(c: &mut Conn, args: &[&str]) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    c.send_cmd(args);
    let r = c.read_reply_raw();
    (r, t.elapsed())
}

#[track_caller]
fn expect_unavailable_at_once(c: &mut Conn, args: &[&str]) {
    let (r, took) = timed(c, args);
    assert_eq!(
        r,
        BACKEND_UNAVAILABLE,
        "{args:?} while Redis is down: {}",
        escape(&r)
    );
    assert!(
        took < Duration::from_secs(1),
        "{args:?} took {took:?} to fail"
    );
}

/// Polls `args` until the reply is `want`; replies in between must be one
/// of `allowed` (e.g. backend unavailable). Fails after `RECOVERY`.
#[track_caller]
fn poll_reply(c: &mut Conn, args: &[&str], want: &[u8], allowed: &[&[u8]]) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        c.send_cmd(args);
        let r = c.read_reply_raw();
        if r == want {
            return;
        }
        assert!(
            allowed.contains(&&r[..]),
            "{args:?}: unexpected {} while waiting for {}",
            escape(&r),
            escape(want)
        );
        assert!(
            Instant::now() < deadline,
            "{args:?} still answers {} after {RECOVERY:?}",
            escape(&r)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn redis_down_at_start_then_coming_up() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::not_started();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();

    c.ping();
    expect_unavailable_at_once(&mut c, &["GET", "k"]);
    expect_unavailable_at_once(&mut c, &["SET", "k", "v"]);
    expect_unavailable_at_once(&mut c, &["INCR", "n"]);
    // Local replies still work, in order with the errors.
    let mut p = cmd(&["GET", "a"]);
    p.extend(cmd(&["PING"]));
    p.extend(cmd(&["SET", "b", "1"]));
    p.extend(cmd(&["ECHO", "e"]));
    p.extend(cmd(&["CLIENT", "SETNAME", "n"]));
    c.send(&p);
    let mut want = BACKEND_UNAVAILABLE.to_vec();
    want.extend(PONG);
    want.extend(BACKEND_UNAVAILABLE);
    want.extend(bulk("e"));
    want.extend(OK);
    c.expect(&want);
    // Errors are never cached: GET k keeps failing, not a stale error.
    expect_unavailable_at_once(&mut c, &["GET", "k"]);

    redis.launch();
    redis.set("k", "v");
    poll_reply(&mut c, &["GET", "k"], &bulk("v"), &[BACKEND_UNAVAILABLE]);
    c.roundtrip(&["INCR", "n"], &int(1));
    let mut fresh = proxy.connect();
    fresh.roundtrip(&["GET", "k"], &bulk("v"));
    fresh.roundtrip(&["INCR", "n"], &int(2));
}

#[test]
fn requests_in_flight_when_redis_dies_get_errors_in_order() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "0"]);
    redis.set("a", "1");
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "a"], &bulk("1"));
    c.roundtrip(&["INCR", "n"], &int(1));

    // Freeze Redis, send requests, and wait until they sit in its socket:
    // they are in flight. Then kill it.
    redis.pause();
    let forwarded = [
        cmd(&["GET", "b"]),
        cmd(&["INCR", "n"]),
        cmd(&["GET", "c"]),
        cmd(&["SET", "d", "x"]),
    ];
    let mut p = forwarded[0].clone();
    p.extend(cmd(&["PING"]));
    p.extend(&forwarded[1]);
    p.extend(cmd(&["ECHO", "between"]));
    p.extend(&forwarded[2]);
    p.extend(&forwarded[3]);
    p.extend(cmd(&["PING", "end"]));
    c.send(&p);
    let in_flight: usize = forwarded.iter().map(|f| f.len()).sum();
    wait_unread_bytes_at(redis.port(), in_flight as u64);
    // Local replies come after the owed replies of earlier requests, so
    // nothing may have arrived yet.
    c.expect_silence(Duration::from_millis(100));
    redis.kill();

    let mut want = BACKEND_UNAVAILABLE.to_vec();
    want.extend(PONG);
    want.extend(BACKEND_UNAVAILABLE);
    want.extend(bulk("between"));
    want.extend(BACKEND_UNAVAILABLE);
    want.extend(BACKEND_UNAVAILABLE);
    want.extend(bulk("end"));
    c.expect(&want);

    // While down: errors at once, local replies fine, on new connections too.
    expect_unavailable_at_once(&mut c, &["INCR", "n"]);
    c.ping();
    let mut other = proxy.connect();
    expect_unavailable_at_once(&mut other, &["GET", "b"]);
    other.ping();

    // Back on the same port, empty: service resumes.
    redis.launch();
    poll_reply(&mut c, &["INCR", "n"], &int(1), &[BACKEND_UNAVAILABLE]);
    other.roundtrip(&["INCR", "n"], &int(2));
    other.roundtrip(&["GET", "b"], NIL);
}

#[test]
fn cache_is_cleared_on_reconnect() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    // No expiry: only clearing the cache can make a cached value go away.
    let proxy = Sidecache::start(redis.port(), &["--ttl", "0"]);
    redis.set("warm", "before restart");
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "warm"], &bulk("before restart"));
    c.roundtrip(&["GET", "warm"], &bulk("before restart"));

    redis.restart(); // empty now
    let old = bulk("before restart");
    let deadline = Instant::now() + RECOVERY;
    loop {
        // A forwarded request, so that the proxy has reason to notice.
        c.send_cmd(&["EXISTS", "warm"]);
        let e = c.read_reply_raw();
        assert!(
            e == int(0) || e == BACKEND_UNAVAILABLE,
            "EXISTS: {}",
            escape(&e)
        );
        c.send_cmd(&["GET", "warm"]);
        let r = c.read_reply_raw();
        if r == NIL {
            break;
        }
        // While disconnected, a hit may still be served.
        assert!(
            r == old || r == BACKEND_UNAVAILABLE,
            "GET warm: {}",
            escape(&r)
        );
        assert!(
            Instant::now() < deadline,
            "GET warm still answers {} after Redis restarted empty",
            escape(&r)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    // The nil is cached like any reply; the new value shows once stored.
    redis.set("warm2", "after restart");
    c.roundtrip(&["GET", "warm2"], &bulk("after restart"));
}

#[test]
fn a_stalled_redis_delays_but_does_not_fail_requests() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("s", "value");
    let mut c = proxy.connect();
    c.ping();
    redis.pause();
    c.send(&cmd(&["GET", "s"]));
    c.send(&cmd(&["PING"]));
    wait_unread_bytes_at(redis.port(), cmd(&["GET", "s"]).len() as u64);
    std::thread::sleep(Duration::from_millis(200));
    redis.resume();
    c.expect(&bulk("value"));
    c.expect(PONG);
}

/// A client that leaves with a reply still owed must not pass it on to
/// whoever gets its slot next: neither after a clean close (FIN) nor after
/// a reset (RST, where the proxy may drop the client at once).
#[test]
fn a_new_client_never_gets_a_departed_clients_reply() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let server_pid = if direct_mode() {
        redis.pid()
    } else {
        proxy.pid()
    };
    redis.set("secret", "for-the-departed-only");
    for i in 0..8 {
        let mine = format!("mine-{i}");
        redis.set(&mine, format!("value-of-{mine}"));

        let mut a = proxy.connect();
        let mut p = cmd(&["CLIENT", "SETNAME", "departed"]);
        p.extend(cmd(&["DEBUG", "SLEEP", "0.2"]));
        p.extend(cmd(&["GET", "secret"]));
        p.extend(cmd(&["INCR", "departed-counter"]));
        a.send(&p);
        // Once SETNAME is answered, the pipeline has been read. Leave, and
        // wait until sidecache has let go of the socket: the next client
        // then most likely gets the same slot.
        if i % 2 == 0 {
            a.abort(server_pid); // the +OK stays unread: a reset
        } else {
            a.expect(OK);
            a.hang_up(server_pid);
        }

        let mut b = proxy.connect();
        b.send(&cmd(&["PING"]));
        b.send(&cmd(&["GET", &mine]));
        b.send(&cmd(&["CLIENT", "GETNAME"]));
        b.expect(PONG);
        b.expect(&bulk(format!("value-of-{mine}")));
        b.expect(NIL);
        // Redis has now answered the departed client's requests too (they
        // were ahead of ours); nothing of theirs may follow.
        b.ping();
        b.roundtrip(&["ECHO", "done"], &bulk("done"));
    }
}

#[test]
fn slots_are_reused_after_clients_leave_with_many_replies_owed() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--capacity", "0"]);
    let server_pid = if direct_mode() {
        redis.pid()
    } else {
        proxy.pid()
    };
    let big = "x".repeat(10_000);
    redis.set("big", &big);
    for i in 0..5 {
        let mut leavers = Vec::new();
        for _ in 0..3 {
            let mut a = proxy.connect();
            let mut p = cmd(&["PING", "first"]);
            for _ in 0..300 {
                p.extend(cmd(&["GET", "big"]));
            }
            a.send(&p);
            a.expect(&bulk("first"));
            leavers.push(a);
        }
        for a in leavers {
            a.abort(server_pid);
        }
        let mut b = proxy.connect();
        let mine = format!("round-{i}");
        b.roundtrip(&["ECHO", &mine], &bulk(&mine));
        b.roundtrip(&["GET", "nothing"], NIL);
        b.roundtrip(&["GET", "big"], &bulk(&big));
        b.ping();
    }
}
