//! The client side of the protocol: protocol errors (close only the bad
//! connection), requests split anywhere, local replies, refused commands.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

struct BadInput {
    what: &'static str,
    bytes: Vec<u8>,
    reason: &'static str,
    /// Redis itself accepts this; only sidecache rejects it.
    proxy_only: bool,
}

fn bad_inputs() -> Vec<BadInput> {
    let b = |what, bytes: &[u8], reason| BadInput {
        what,
        bytes: bytes.to_vec(),
        reason,
        proxy_only: false,
    };
    vec![
        b(
            "multibulk count not a number",
            b"*abc\r\n",
            "invalid multibulk length",
        ),
        b(
            "negative bulk length",
            b"*1\r\n$-3\r\n",
            "invalid bulk length",
        ),
        b(
            "bulk length not a number",
            b"*1\r\n$abc\r\n",
            "invalid bulk length",
        ),
        b(
            "argument without $",
            b"*1\r\nx\r\n",
            "expected '$', got 'x'",
        ),
        b(
            "integer instead of bulk",
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
            "expected '$', got ':'",
        ),
        b(
            "unclosed double quote",
            b"GET \"abc\n",
            "unbalanced quotes in request",
        ),
        b(
            "unclosed single quote",
            b"GET 'abc\r\n",
            "unbalanced quotes in request",
        ),
        b(
            "closing quote not followed by space",
            b"GET \"abc\"def\n",
            "unbalanced quotes in request",
        ),
        BadInput {
            what: "inline line over 64 KB without newline",
            bytes: vec![b'a'; 70_000],
            reason: "too big inline request",
            proxy_only: false,
        },
        b(
            "bulk over 512 MB",
            b"*1\r\n$536870913\r\n",
            "invalid bulk length",
        ),
        BadInput {
            what: "multibulk count over 1048576",
            bytes: b"*1048577\r\n".to_vec(),
            reason: "invalid multibulk length",
            proxy_only: true,
        },
    ]
}

#[test]
fn protocol_errors_close_only_the_bad_connection() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("k", "still here");
    let mut good = proxy.connect();
    good.ping();
    for case in bad_inputs() {
        if case.proxy_only && direct_mode() {
            continue;
        }
        let mut bad = proxy.connect();
        bad.ping(); // a working connection first
        bad.send_lossy(&case.bytes);
        let expected = format!("-ERR Protocol error: {}\r\n", case.reason);
        let got = bad.read_until_eof();
        assert_eq!(
            got,
            expected.as_bytes(),
            "{}: expected {} then EOF, got {}",
            case.what,
            escape(expected.as_bytes()),
            escape(&got)
        );
        good.ping();
        good.roundtrip(&["GET", "k"], &bulk("still here"));
    }
    // A new connection after all that works too.
    let mut fresh = proxy.connect();
    fresh.roundtrip(&["GET", "k"], &bulk("still here"));
}

#[test]
fn replies_owed_before_a_protocol_error_are_delivered_first() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("k", "v");
    let mut c = proxy.connect();
    // A slow forwarded request, a miss, a local reply, then garbage.
    c.send(b"DEBUG SLEEP 0.2\r\nGET k\r\nECHO z\r\n*abc\r\nPING\r\n");
    let got = c.read_until_eof();
    let expected =
        b"+OK\r\n$1\r\nv\r\n$1\r\nz\r\n-ERR Protocol error: invalid multibulk length\r\n";
    assert_eq!(got, expected, "got {}", escape(&got));
}

#[test]
fn requests_split_one_byte_at_a_time() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("split", "value");
    let mut c = proxy.connect();
    let mut input = cmd(&["GET", "split"]);
    input.extend_from_slice(b"ECHO \"a b\"\r\nGET split\n");
    input.extend(cmd(&["PING"]));
    for byte in &input {
        c.send(std::slice::from_ref(byte));
        std::thread::sleep(Duration::from_millis(1));
    }
    c.expect(&bulk("value"));
    c.expect(&bulk("a b"));
    c.expect(&bulk("value"));
    c.expect(PONG);
}

#[test]
fn requests_split_at_every_offset() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("sk", "sv");
    let mut input = cmd(&["GET", "sk"]);
    input.extend_from_slice(b"ECHO hi\r\n");
    input.extend(cmd(&["ECHO", "x\r\ny"]));
    let mut expected = bulk("sv");
    expected.extend(bulk("hi"));
    expected.extend(bulk("x\r\ny"));
    let mut c = proxy.connect();
    for at in 1..input.len() {
        c.send(&input[..at]);
        std::thread::sleep(Duration::from_millis(2));
        c.send(&input[at..]);
        c.expect(&expected);
    }
}

#[test]
fn local_commands() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();
    c.roundtrip(&["PING"], PONG);
    c.roundtrip(&["ping"], PONG);
    c.roundtrip(&["PING", "msg"], b"$3\r\nmsg\r\n");
    c.send(b"PING\n");
    c.expect(PONG);
    c.send(b"PING hello\n");
    c.expect(b"$5\r\nhello\r\n");
    c.roundtrip(&["ECHO", "x"], b"$1\r\nx\r\n");
    c.roundtrip(&["ECHO", ""], b"$0\r\n\r\n");
    c.roundtrip(&["ECHO", "with\r\nnewline"], &bulk("with\r\nnewline"));
    c.roundtrip(&["SELECT", "0"], OK);
    c.roundtrip(&["select", "0"], OK);

    c.roundtrip(&["CLIENT", "GETNAME"], NIL);
    c.roundtrip(&["CLIENT", "SETNAME", "x"], OK);
    c.roundtrip(&["CLIENT", "GETNAME"], b"$1\r\nx\r\n");
    c.roundtrip(&["client", "setname", "other-name"], OK);
    c.roundtrip(&["CLIENT", "GETNAME"], &bulk("other-name"));
    // Names belong to a connection.
    let mut d = proxy.connect();
    d.roundtrip(&["CLIENT", "GETNAME"], NIL);
    c.roundtrip(&["CLIENT", "GETNAME"], &bulk("other-name"));

    c.send_cmd(&["CLIENT", "ID"]);
    let id_c = c.read_reply();
    d.send_cmd(&["CLIENT", "ID"]);
    let id_d = d.read_reply();
    assert!(matches!(id_c, Resp::Int(_)), "CLIENT ID: {id_c:?}");
    assert!(matches!(id_d, Resp::Int(_)), "CLIENT ID: {id_d:?}");
    assert_ne!(id_c, id_d, "two connections got the same CLIENT ID");

    for hello in [&["HELLO"][..], &["HELLO", "2"][..]] {
        c.send_cmd(hello);
        let reply = c.read_reply();
        let Resp::Array(Some(items)) = &reply else {
            panic!("{hello:?}: expected an array, got {reply:?}");
        };
        assert_eq!(items.len(), 14, "{hello:?}: {reply:?}");
        let keys: Vec<String> = items
            .iter()
            .step_by(2)
            .map(|k| k.bulk_str().unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            ["server", "version", "proto", "id", "mode", "role", "modules"],
            "{hello:?}: {reply:?}"
        );
        assert_eq!(items[5], Resp::Int(2), "proto: {reply:?}");
        assert!(matches!(items[7], Resp::Int(_)), "id: {reply:?}");
        assert!(
            items[1].bulk_str().is_some_and(|s| !s.is_empty()),
            "server: {reply:?}"
        );
        assert!(
            items[3].bulk_str().is_some_and(|s| !s.is_empty()),
            "version: {reply:?}"
        );
        assert!(
            matches!(items[13], Resp::Array(Some(_))),
            "modules: {reply:?}"
        );
    }
    c.ping();
}

#[test]
fn local_commands_that_differ_from_redis() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();

    c.send_cmd(&["SELECT", "1"]);
    let e = c.read_error();
    assert!(e.starts_with("ERR"), "SELECT 1: -{e}");
    c.ping();

    c.send_cmd(&["HELLO", "4"]);
    let e = c.read_error();
    assert_eq!(e, "NOPROTO unsupported protocol version", "HELLO 4");
    c.ping(); // still RESP2

    c.roundtrip(&["CLIENT", "SETINFO", "lib-name", "x"], OK);
    c.roundtrip(&["CLIENT", "SETINFO", "LIB-VER", "1.2.3"], OK);
    c.ping();
}

#[test]
fn quit_replies_ok_and_closes() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("q", "v");

    let mut c = proxy.connect();
    c.send_cmd(&["QUIT"]);
    c.expect(OK);
    c.expect_eof();

    // Inline, after a forwarded request that is still owed; nothing after
    // QUIT is executed.
    let mut c = proxy.connect();
    c.send(b"GET q\r\nquit\r\nSET q after-quit\r\nPING\r\n");
    c.expect(&bulk("v"));
    c.expect(OK);
    c.expect_eof();
    assert_eq!(
        redis.get("q").as_deref(),
        Some(&b"v"[..]),
        "a command after QUIT ran"
    );

    let mut c = proxy.connect();
    c.ping();
}

/// Commands sidecache refuses, and the name its error must start with.
fn refused() -> Vec<(Vec<&'static str>, &'static str)> {
    let v = |args: &[&'static str], name: &'static str| (args.to_vec(), name);
    vec![
        v(&["MONITOR"], "monitor"),
        v(&["WAIT", "1", "0"], "wait"),
        v(&["WAITAOF", "1", "0", "0"], "waitaof"),
        v(&["SYNC"], "sync"),
        v(&["PSYNC", "?", "-1"], "psync"),
        v(&["REPLCONF", "listening-port", "1"], "replconf"),
        v(&["CLIENT", "KILL", "127.0.0.1:1"], "client"),
        v(&["client", "kill", "ID", "1"], "client"),
        v(&["CLIENT", "PAUSE", "100"], "client"),
        v(&["CLIENT", "TRACKING", "ON"], "client"),
        v(&["CLIENT", "CACHING", "YES"], "client"),
        v(&["wait", "0", "0"], "wait"),
    ]
}

#[track_caller]
fn assert_refused(reply: &str, args: &[&str], name: &str) {
    let lower = reply.to_lowercase();
    assert!(
        lower.starts_with(&format!("-err '{name}")),
        "{args:?}: expected `-ERR '{name}...`, got {reply:?}"
    );
    assert!(
        lower.contains("is not supported by sidecache"),
        "{args:?}: expected `is not supported by sidecache`, got {reply:?}"
    );
    assert!(reply.ends_with("\r\n") && reply.matches("\r\n").count() == 1);
}

#[test]
fn refused_commands_keep_the_connection_open() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();
    for (args, name) in refused() {
        c.send_cmd(&args);
        let raw = c.read_reply_raw();
        assert_refused(&String::from_utf8_lossy(&raw), &args, name);
        c.ping();
    }
    // Inline form.
    c.send(b"wait 0 0\n");
    let raw = c.read_reply_raw();
    assert_refused(&String::from_utf8_lossy(&raw), &["wait"], "wait");
    c.ping();
}

#[test]
fn refused_commands_never_reach_redis() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();
    // A transaction runs on a connection of its own: while it is open,
    // another client's SET is not queued in it.
    let mut other = proxy.connect();
    c.roundtrip(&["MULTI"], OK);
    c.roundtrip(&["SET", "in-multi", "1"], b"+QUEUED\r\n");
    other.roundtrip(&["SET", "outside", "1"], OK);
    assert_eq!(redis.get("outside").as_deref(), Some(&b"1"[..]));
    c.send_cmd(&["EXEC"]);
    assert_eq!(c.read_reply_raw(), b"*1\r\n+OK\r\n");
    // Were SUBSCRIBE forwarded on the shared connection, it would be in
    // pub/sub mode and GET would fail, for everyone.
    c.send_cmd(&["SUBSCRIBE", "news"]);
    c.read_reply();
    redis.set("after-subscribe", "ok");
    other.roundtrip(&["GET", "after-subscribe"], &bulk("ok"));
    c.roundtrip(
        &["UNSUBSCRIBE"],
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n",
    );
    // Were BLPOP forwarded on the shared connection it would block it.
    c.send_cmd(&["BLPOP", "nothing", "0"]);
    other.roundtrip(&["INCR", "after-blpop"], &int(1));
    redis.raw(&["RPUSH", "nothing", "x"]);
    assert!(matches!(c.read_reply(), Resp::Array(Some(_))));
    // Were CLIENT KILL forwarded with a filter matching everything, the
    // backend connection would die.
    c.send_cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    c.read_error();
    other.roundtrip(&["INCR", "after-blpop"], &int(2));
    // Plain XREAD is forwarded.
    redis.raw(&["XADD", "s", "1-1", "f", "v"]);
    c.send_cmd(&["XREAD", "COUNT", "1", "STREAMS", "s", "0"]);
    assert!(matches!(c.read_reply(), Resp::Array(Some(_))));
}

#[test]
fn half_sent_requests_and_hangups_do_not_disturb_others() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("k", "v");
    let mut good = proxy.connect();

    // One client stays connected with half a request.
    let mut idle = proxy.connect();
    idle.send(b"*2\r\n$3\r\nGET\r\n$10\r\nabc");
    good.roundtrip(&["GET", "k"], &bulk("v"));

    // One hangs up in the middle of a request.
    let mut gone = proxy.connect();
    gone.send(b"*2\r\n$3\r\nGET\r\n$10\r\nabc");
    drop(gone);
    good.roundtrip(&["GET", "k"], &bulk("v"));

    // Some send many requests and hang up without reading the replies.
    for _ in 0..5 {
        let mut rude = proxy.connect();
        let mut pipeline = Vec::new();
        for i in 0..2000 {
            pipeline.extend(cmd(&["GET", if i % 2 == 0 { "k" } else { "missing" }]));
            pipeline.extend(cmd(&["ECHO", "some payload to fill buffers"]));
        }
        rude.send(&pipeline);
        drop(rude);
        good.ping();
    }
    good.roundtrip(&["GET", "k"], &bulk("v"));

    // The idle one finishes its request and gets its reply.
    idle.send(b"defghij\r\n");
    idle.expect(NIL);
    idle.ping();
}
