//! Pub/sub through sidecache, checked against Redis itself.
//!
//! sidecache holds one connection to Redis for every subscription (one
//! SUBSCRIBE per channel, pattern or shard channel however many of its
//! clients listen) and fans the messages out; the acknowledgements it makes
//! must be Redis's own bytes, with the client's own counts, in the client's
//! protocol.
//!
//! - A differential script of (P|S)(UN)SUBSCRIBE, PING, forbidden and
//!   ordinary commands in subscribed mode and published messages, run
//!   directly against Redis and through sidecache, RESP2 and RESP3.
//! - Fan-out: 200 subscribers of one channel are one subscription in Redis
//!   and all get every message, in order.
//! - PUBLISH across the proxy boundary both ways, and its receiver count.
//! - Subscribers leaving release their subscriptions in Redis.
//! - Losing the pub/sub connection to Redis closes the subscribed clients.
//!
//! `SIDECACHE_TEST_DIRECT=1` runs these against Redis itself (the ignored
//! ones with `-- --include-ignored`), which checks the expectations.

#[macro_use]
mod common;

use common::*;
use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// How long sidecache may take to let go of a subscription in Redis.
const RELEASE: Duration = Duration::from_secs(5);

/// The RESP2 or RESP3 header of an out-of-band message of `n` items.
fn push_header(resp3: bool, n: usize) -> String {
    format!("{}{n}\r\n", if resp3 { '>' } else { '*' })
}

/// A bulk string as a `String` (ASCII test data only).
fn bulk_s(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

/// A subscribe-style acknowledgement: `[what, name, count]`.
fn ack(resp3: bool, what: &str, name: &str, count: i64) -> Vec<u8> {
    format!(
        "{}{}{}:{count}\r\n",
        push_header(resp3, 3),
        bulk_s(what),
        bulk_s(name)
    )
    .into_bytes()
}

/// A `message` as Redis delivers it.
fn message(resp3: bool, channel: &str, payload: &str) -> Vec<u8> {
    format!(
        "{}{}{}{}",
        push_header(resp3, 3),
        bulk_s("message"),
        bulk_s(channel),
        bulk_s(payload)
    )
    .into_bytes()
}

/// An integer out of a `PUBLISH`-style reply, panicking on anything else.
#[track_caller]
fn int_of(raw: &[u8]) -> i64 {
    match parse_reply(raw) {
        Ok(Some((Resp::Int(n), _))) => n,
        _ => panic!("expected an integer reply, got {}", escape(raw)),
    }
}

/// `PUBLISH channel payload` (or SPUBLISH) on `c`; Redis's receiver count.
#[track_caller]
fn publish(c: &mut Conn, command: &str, channel: &str, payload: &str) -> i64 {
    c.send_cmd(&[command, channel, payload]);
    int_of(&c.read_reply_raw())
}

/// Redis's `PUBSUB NUMSUB channel` (asked directly).
fn numsub(redis_port: u16, channel: &str) -> i64 {
    subscriber_count(redis_port, "NUMSUB", channel)
}

/// Redis's `PUBSUB <subcommand> channel` count, for NUMSUB or SHARDNUMSUB.
fn subscriber_count(redis_port: u16, subcommand: &str, channel: &str) -> i64 {
    let mut c = Conn::connect(redis_port);
    c.send_cmd(&["PUBSUB", subcommand, channel]);
    match c.read_reply() {
        Resp::Array(Some(items)) if items.len() == 2 => match &items[1] {
            Resp::Int(n) => *n,
            other => panic!("PUBSUB {subcommand}: count is {other:?}"),
        },
        other => panic!("PUBSUB {subcommand}: {other:?}"),
    }
}

/// An integer reply of a direct command to Redis (`PUBSUB NUMPAT`, ...).
fn direct_int(redis_port: u16, args: &[&str]) -> i64 {
    let mut c = Conn::connect(redis_port);
    c.send_cmd(args);
    int_of(&c.read_reply_raw())
}

/// `PUBSUB SHARDNUMSUB channel` (asked directly).
fn shardnumsub(redis_port: u16, channel: &str) -> i64 {
    subscriber_count(redis_port, "SHARDNUMSUB", channel)
}

/// Waits until `f()` equals `want`, failing after `RELEASE`.
#[track_caller]
fn wait_for(what: &str, want: i64, mut f: impl FnMut() -> i64) {
    let mut last = 0;
    let got = poll_until(RELEASE, Duration::from_millis(10), || {
        last = f();
        (last == want).then_some(())
    });
    assert!(
        got.is_some(),
        "{what}: still {last} after {RELEASE:?}, expected {want}"
    );
}

/// Redis's clients with a subscription (`sub=`, `psub=` or `ssub=` not 0),
/// except sidecache's invalidation connection (subscribed to
/// `__redis__:invalidate` for client tracking).
fn subscribed_clients(redis_port: u16) -> Vec<HashMap<String, String>> {
    let n = |c: &HashMap<String, String>, f: &str| -> u64 {
        c.get(f).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    client_list(redis_port)
        .into_iter()
        .filter(|c| c.get("name").map(String::as_str) != Some("sidecache-invalidation"))
        .filter(|c| n(c, "sub") + n(c, "psub") + n(c, "ssub") > 0)
        .collect()
}

// ---------------------------------------------------------------------------
// (a) Differential: the same script directly and through sidecache
// ---------------------------------------------------------------------------

/// One step of a pub/sub script.
#[derive(Clone, Copy)]
enum Step {
    /// The subscriber sends this command (split on spaces) and reads this
    /// many replies.
    Cmd(&'static str, usize),
    /// A separate direct connection runs `PUBLISH`/`SPUBLISH channel
    /// payload`; the subscriber then reads this many messages. With `true`,
    /// the receiver count is part of the transcript (only where it cannot
    /// race an unsubscription sidecache has acknowledged but Redis not yet
    /// carried out).
    Pub(&'static str, &'static str, &'static str, usize, bool),
    /// The subscriber's connection must be closed, with nothing more to read.
    Eof,
}

use Step::{Cmd, Eof, Pub};

/// Every kind of subscription, several names per command, repeats,
/// unsubscribing names not subscribed, unsubscribe-all with one name left
/// (Redis's order for several is its hash table's), PING, a command that is
/// forbidden in RESP2 subscribed mode (and allowed in RESP3), and messages
/// of each kind, including one channel matched by a channel and a pattern.
const SCRIPT: &[Step] = &[
    Cmd("UNSUBSCRIBE", 1),
    Cmd("PUNSUBSCRIBE", 1),
    Cmd("SUNSUBSCRIBE", 1),
    Cmd("PING", 1),
    Cmd("SUBSCRIBE ps:a ps:b ps:a", 3),
    Cmd("PSUBSCRIBE ps:p* ps:a", 2),
    Cmd("SSUBSCRIBE ps:s1 ps:s2", 2),
    Cmd("SUBSCRIBE ps:b", 1),
    Cmd("PING", 1),
    Cmd("PING hello", 1),
    Cmd("GET ps:x", 1),
    Pub("PUBLISH", "ps:a", "m1", 2, true),
    Pub("PUBLISH", "ps:b", "m2", 1, true),
    Pub("PUBLISH", "ps:pq", "m3", 1, true),
    Pub("SPUBLISH", "ps:s1", "m4", 1, true),
    Pub("PUBLISH", "ps:nobody", "m5", 0, true),
    Pub("PUBLISH", "ps:a", "", 2, true),
    Cmd("UNSUBSCRIBE ps:zz ps:a", 2),
    Cmd("PUNSUBSCRIBE ps:nope", 1),
    Pub("PUBLISH", "ps:a", "m6", 1, false),
    Cmd("SUNSUBSCRIBE ps:s1 ps:zz", 2),
    Pub("SPUBLISH", "ps:s1", "m7", 0, false),
    Pub("SPUBLISH", "ps:s2", "m8", 1, true),
    Cmd("SUNSUBSCRIBE", 1),
    Cmd("SUNSUBSCRIBE", 1),
    Cmd("PUNSUBSCRIBE ps:p*", 1),
    Cmd("PUNSUBSCRIBE", 1),
    Cmd("GET ps:x", 1),
    Pub("PUBLISH", "ps:b", "m9", 1, true),
    Cmd("UNSUBSCRIBE", 1),
    Cmd("UNSUBSCRIBE", 1),
    Cmd("PUNSUBSCRIBE", 1),
    Pub("PUBLISH", "ps:b", "m10", 0, false),
    Cmd("PING", 1),
    Cmd("GET ps:x", 1),
    Cmd("PSUBSCRIBE ps:*", 1),
    Cmd("SUBSCRIBE ps:c", 1),
    Cmd("ECHO hi", 1),
    Pub("PUBLISH", "ps:c", "m11", 2, true),
    Cmd("QUIT", 1),
    Eof,
];

/// Runs `script` with a subscriber connected to `port` (RESP3 after `HELLO
/// 3` when `resp3`) and a publisher connected to Redis directly; returns
/// every reply and message the subscriber got (and the counts asked for),
/// labelled with the step that produced them.
fn run_script(port: u16, redis_port: u16, resp3: bool, script: &[Step]) -> Vec<(String, Vec<u8>)> {
    let mut sub = connect(port, resp3);
    let mut publisher = Conn::connect(redis_port);
    publisher.roundtrip(&["SET", "ps:x", "xval"], OK);
    let mut out = Vec::new();
    for (i, step) in script.iter().enumerate() {
        match *step {
            Cmd(line, frames) => {
                let args: Vec<&str> = line.split(' ').collect();
                sub.send_cmd(&args);
                for f in 0..frames {
                    out.push((
                        format!("step {i} `{line}` reply {f}"),
                        sub.read_reply3_raw(),
                    ));
                }
            }
            Pub(command, channel, payload, frames, count) => {
                let receivers = publish(&mut publisher, command, channel, payload);
                if count {
                    out.push((
                        format!("step {i} `{command} {channel} {payload}` receivers"),
                        receivers.to_string().into_bytes(),
                    ));
                }
                for f in 0..frames {
                    out.push((
                        format!("step {i} `{command} {channel} {payload}` message {f}"),
                        sub.read_reply3_raw(),
                    ));
                }
            }
            Eof => {
                let rest = sub.read_until_eof();
                out.push((format!("step {i} EOF"), rest));
            }
        }
    }
    out
}

/// Asserts two transcripts are the same, naming the first difference.
#[track_caller]
fn assert_same(direct: &[(String, Vec<u8>)], proxied: &[(String, Vec<u8>)]) {
    for (d, p) in direct.iter().zip(proxied) {
        assert_eq!(d.0, p.0, "transcripts out of step");
        assert!(
            d.1 == p.1,
            "{}:\n  redis:     {}\n  sidecache: {}",
            d.0,
            escape(&d.1),
            escape(&p.1)
        );
    }
    assert_eq!(direct.len(), proxied.len(), "transcript lengths differ");
}

fn differential(resp3: bool) {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let direct = run_script(redis.port(), redis.port(), resp3, SCRIPT);
    // Nothing is left subscribed between the runs.
    wait_for("PUBSUB NUMPAT between runs", 0, || {
        direct_int(redis.port(), &["PUBSUB", "NUMPAT"])
    });
    let proxied = run_script(sc.port(), redis.port(), resp3, SCRIPT);
    assert_same(&direct, &proxied);

    // Redis's bytes that matter, spelled out (they held directly too).
    let at = |label_start: &str| -> &[u8] {
        &direct
            .iter()
            .find(|(l, _)| l.starts_with(label_start))
            .unwrap_or_else(|| panic!("no step {label_start}"))
            .1
    };
    let nil = if resp3 { "_\r\n" } else { "$-1\r\n" };
    assert_eq!(
        at("step 0 "),
        format!(
            "{}{}{nil}:0\r\n",
            push_header(resp3, 3),
            bulk_s("unsubscribe")
        )
        .as_bytes()
    );
    assert_eq!(
        at("step 4 `SUBSCRIBE ps:a ps:b ps:a` reply 2"),
        ack(resp3, "subscribe", "ps:a", 2)
    );
    assert_eq!(
        at("step 5 `PSUBSCRIBE ps:p* ps:a` reply 1"),
        ack(resp3, "psubscribe", "ps:a", 4)
    );
    // Shard channels are counted on their own.
    assert_eq!(
        at("step 6 `SSUBSCRIBE ps:s1 ps:s2` reply 1"),
        ack(resp3, "ssubscribe", "ps:s2", 2)
    );
    // A name not subscribed is acknowledged with the unchanged count.
    assert_eq!(
        at("step 17 `UNSUBSCRIBE ps:zz ps:a` reply 0"),
        ack(resp3, "unsubscribe", "ps:zz", 4)
    );
    // One connection subscribed to ps:a as a channel and as a pattern counts twice.
    assert_eq!(at("step 11 `PUBLISH ps:a m1` receivers"), b"2");
    assert_eq!(
        at("step 11 `PUBLISH ps:a m1` message 0"),
        message(resp3, "ps:a", "m1")
    );
    if resp3 {
        assert_eq!(at("step 8 "), PONG);
        assert_eq!(at("step 10 "), bulk("xval"));
    } else {
        assert_eq!(at("step 8 "), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(at("step 9 "), b"*2\r\n$4\r\npong\r\n$5\r\nhello\r\n");
        assert_eq!(
            at("step 10 "),
            &b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"[..]
        );
    }
    wait_for("PUBSUB NUMPAT after both runs", 0, || {
        direct_int(redis.port(), &["PUBSUB", "NUMPAT"])
    });
}

#[test]
fn differential_resp2() {
    differential(false);
}

#[test]
fn differential_resp3() {
    differential(true);
}

/// RESP2 and RESP3 subscribers of the same channel each get Redis's bytes
/// in their own protocol, also for patterns and shard channels.
#[test]
fn both_protocols_share_a_channel() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut publisher = Conn::connect(redis.port());
    let mut subs: Vec<(bool, Conn)> = [false, true, false, true]
        .into_iter()
        .map(|resp3| (resp3, connect(sc.port(), resp3)))
        .collect();
    for (resp3, c) in &mut subs {
        c.send_cmd(&["SUBSCRIBE", "bp:ch"]);
        c.expect(&ack(*resp3, "subscribe", "bp:ch", 1));
        c.send_cmd(&["PSUBSCRIBE", "bp:*"]);
        c.expect(&ack(*resp3, "psubscribe", "bp:*", 2));
        c.send_cmd(&["SSUBSCRIBE", "bp:sh"]);
        c.expect(&ack(*resp3, "ssubscribe", "bp:sh", 1));
    }
    publish(&mut publisher, "PUBLISH", "bp:ch", "one");
    publish(&mut publisher, "SPUBLISH", "bp:sh", "two");
    for (resp3, c) in &mut subs {
        let h = push_header(*resp3, 3);
        let h4 = push_header(*resp3, 4);
        c.expect(&message(*resp3, "bp:ch", "one"));
        c.expect(
            format!(
                "{h4}{}{}{}{}",
                bulk_s("pmessage"),
                bulk_s("bp:*"),
                bulk_s("bp:ch"),
                bulk_s("one")
            )
            .as_bytes(),
        );
        c.expect(
            format!(
                "{h}{}{}{}",
                bulk_s("smessage"),
                bulk_s("bp:sh"),
                bulk_s("two")
            )
            .as_bytes(),
        );
        c.expect_silence(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// (b) Fan-out
// ---------------------------------------------------------------------------

/// 200 sidecache clients on one channel are one subscription in Redis, and
/// every one of them gets all 100 messages, in order, in its protocol.
#[test]
fn fan_out_one_subscription_many_clients() {
    const CLIENTS: usize = 200;
    const MESSAGES: usize = 100;
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut subs: Vec<(bool, Conn)> = (0..CLIENTS)
        .map(|i| {
            let resp3 = i % 2 == 1;
            let mut c = connect(sc.port(), resp3);
            c.send_cmd(&["SUBSCRIBE", "fan:ch"]);
            (resp3, c)
        })
        .collect();
    for (resp3, c) in &mut subs {
        c.expect(&ack(*resp3, "subscribe", "fan:ch", 1));
    }

    let expected_numsub = if direct_mode() { CLIENTS as i64 } else { 1 };
    assert_eq!(numsub(redis.port(), "fan:ch"), expected_numsub);
    if !direct_mode() {
        let subscribed = subscribed_clients(redis.port());
        assert_eq!(
            subscribed.len(),
            1,
            "Redis should see exactly one subscribed connection besides the invalidation one: {subscribed:?}"
        );
        let s = &subscribed[0];
        assert_eq!(s.get("sub").map(String::as_str), Some("1"), "{s:?}");
        assert_eq!(s.get("psub").map(String::as_str), Some("0"), "{s:?}");
        assert_eq!(s.get("cmd").map(String::as_str), Some("subscribe"), "{s:?}");
        // Every other connection sidecache holds is not subscribed.
        for c in client_list(redis.port()) {
            let name = c.get("name").cloned().unwrap_or_default();
            if name.starts_with("sidecache")
                && name != "sidecache-invalidation"
                && c.get("id") != s.get("id")
            {
                assert_eq!(c.get("sub").map(String::as_str), Some("0"), "{c:?}");
            }
        }
    }

    let mut publisher = Conn::connect(redis.port());
    for m in 0..MESSAGES {
        let n = publish(&mut publisher, "PUBLISH", "fan:ch", &format!("msg-{m}"));
        assert_eq!(n, expected_numsub, "PUBLISH receivers");
    }
    for (i, (resp3, c)) in subs.iter_mut().enumerate() {
        for m in 0..MESSAGES {
            let got = c.read_reply3_raw();
            let want = message(*resp3, "fan:ch", &format!("msg-{m}"));
            assert!(
                got == want,
                "client {i}, message {m}: expected {}, got {}",
                escape(&want),
                escape(&got)
            );
        }
    }
    for (_, c) in &mut subs {
        c.expect_silence(Duration::from_millis(20));
    }
}

/// A SUBSCRIBE acknowledgement means Redis has the subscription: a PUBLISH
/// made right after the ack always reaches the client, for a fresh channel
/// (sidecache must subscribe in Redis first) and for one sidecache already
/// holds.
#[test]
fn publish_right_after_the_ack_is_delivered() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut publisher = Conn::connect(redis.port());
    let mut holder = Conn::connect(sc.port());
    holder.send_cmd(&["SUBSCRIBE", "ack:held"]);
    holder.expect(&ack(false, "subscribe", "ack:held", 1));
    for i in 0..50 {
        let resp3 = i % 2 == 0;
        let fresh = format!("ack:fresh:{i}");
        let mut c = connect(sc.port(), resp3);
        c.send_cmd(&["SUBSCRIBE", &fresh, "ack:held"]);
        c.expect(&ack(resp3, "subscribe", &fresh, 1));
        c.expect(&ack(resp3, "subscribe", "ack:held", 2));
        assert!(publish(&mut publisher, "PUBLISH", &fresh, "f") >= 1);
        publish(&mut publisher, "PUBLISH", "ack:held", "h");
        c.expect(&message(resp3, &fresh, "f"));
        c.expect(&message(resp3, "ack:held", "h"));
        holder.expect(&message(false, "ack:held", "h"));
        let mut p = connect(sc.port(), resp3);
        let pattern = format!("ack:pat:{i}:*");
        p.send_cmd(&["PSUBSCRIBE", &pattern]);
        p.expect(&ack(resp3, "psubscribe", &pattern, 1));
        let channel = format!("ack:pat:{i}:x");
        assert_eq!(publish(&mut publisher, "PUBLISH", &channel, "p"), 1);
        p.expect(
            format!(
                "{}{}{}{}{}",
                push_header(resp3, 4),
                bulk_s("pmessage"),
                bulk_s(&pattern),
                bulk_s(&channel),
                bulk_s("p")
            )
            .as_bytes(),
        );
    }
}

// ---------------------------------------------------------------------------
// (c) PUBLISH across the proxy
// ---------------------------------------------------------------------------

/// PUBLISH through sidecache reaches a subscriber of Redis itself, and a
/// PUBLISH made directly reaches sidecache's subscribers. Through sidecache,
/// PUBLISH's reply counts receivers as Redis would had sidecache's
/// subscribers been its own; made directly, Redis counts sidecache's one
/// connection, however many subscribers it serves.
#[test]
fn publish_crosses_the_proxy_both_ways() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut direct_sub = Conn::connect(redis.port());
    direct_sub.send_cmd(&["SUBSCRIBE", "x:ch"]);
    direct_sub.expect(&ack(false, "subscribe", "x:ch", 1));
    let mut proxied_subs: Vec<Conn> = (0..3)
        .map(|_| {
            let mut c = Conn::connect(sc.port());
            c.send_cmd(&["SUBSCRIBE", "x:ch"]);
            c.expect(&ack(false, "subscribe", "x:ch", 1));
            c
        })
        .collect();
    let seen_by_redis = if direct_mode() { 3 } else { 1 };

    // Through sidecache, to everyone.
    let mut p = Conn::connect(sc.port());
    p.roundtrip(&["PUBLISH", "x:ch", "from-sidecache"], &int(1 + 3));
    direct_sub.expect(&message(false, "x:ch", "from-sidecache"));
    for c in &mut proxied_subs {
        c.expect(&message(false, "x:ch", "from-sidecache"));
    }

    // Directly, to everyone.
    let mut d = Conn::connect(redis.port());
    d.roundtrip(&["PUBLISH", "x:ch", "from-redis"], &int(1 + seen_by_redis));
    direct_sub.expect(&message(false, "x:ch", "from-redis"));
    for c in &mut proxied_subs {
        c.expect(&message(false, "x:ch", "from-redis"));
    }

    // Only the direct subscriber left on another channel: a RESP3 client of
    // sidecache publishes, and gets Redis's count.
    direct_sub.send_cmd(&["SUBSCRIBE", "x:only-direct"]);
    direct_sub.expect(&ack(false, "subscribe", "x:only-direct", 2));
    let mut p3 = connect(sc.port(), true);
    p3.roundtrip(&["PUBLISH", "x:only-direct", "m"], &int(1));
    direct_sub.expect(&message(false, "x:only-direct", "m"));
    p3.roundtrip(&["PUBLISH", "x:nobody", "m"], &int(0));
    // SPUBLISH through sidecache too.
    direct_sub.send_cmd(&["SSUBSCRIBE", "x:shard"]);
    direct_sub.expect(&ack(false, "ssubscribe", "x:shard", 1));
    p.roundtrip(&["SPUBLISH", "x:shard", "s"], &int(1));
    direct_sub.expect(
        format!(
            "*3\r\n{}{}{}",
            bulk_s("smessage"),
            bulk_s("x:shard"),
            bulk_s("s")
        )
        .as_bytes(),
    );
    for c in &mut proxied_subs {
        c.expect_silence(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// (d) Leaving releases the subscription in Redis
// ---------------------------------------------------------------------------

/// Once the last sidecache subscriber of a channel, pattern or shard channel
/// is gone (hung up or unsubscribed), Redis no longer counts it; while one
/// is left, it still does.
#[test]
fn leaving_subscribers_release_the_subscription() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let rp = redis.port();
    let subscribe_all = |resp3: bool| {
        let mut c = connect(sc.port(), resp3);
        c.send_cmd(&["SUBSCRIBE", "rel:ch"]);
        c.expect(&ack(resp3, "subscribe", "rel:ch", 1));
        c.send_cmd(&["PSUBSCRIBE", "rel:*"]);
        c.expect(&ack(resp3, "psubscribe", "rel:*", 2));
        c.send_cmd(&["SSUBSCRIBE", "rel:sh"]);
        c.expect(&ack(resp3, "ssubscribe", "rel:sh", 1));
        c
    };
    let a = subscribe_all(false);
    let mut b = subscribe_all(true);
    let c = subscribe_all(false);
    let per_client = if direct_mode() { 1 } else { 0 };
    assert_eq!(numsub(rp, "rel:ch"), 1 + 2 * per_client);
    // NUMPAT counts distinct patterns, not subscribers.
    assert_eq!(direct_int(rp, &["PUBSUB", "NUMPAT"]), 1);
    assert_eq!(shardnumsub(rp, "rel:sh"), 1 + 2 * per_client);

    // One hangs up, one unsubscribes from everything: one is left.
    drop(a);
    b.send_cmd(&["UNSUBSCRIBE"]);
    b.expect(&ack(true, "unsubscribe", "rel:ch", 1));
    b.send_cmd(&["PUNSUBSCRIBE"]);
    b.expect(&ack(true, "punsubscribe", "rel:*", 0));
    b.send_cmd(&["SUNSUBSCRIBE"]);
    b.expect(&ack(true, "sunsubscribe", "rel:sh", 0));
    wait_for("PUBSUB NUMSUB rel:ch with one subscriber left", 1, || {
        numsub(rp, "rel:ch")
    });
    assert_eq!(direct_int(rp, &["PUBSUB", "NUMPAT"]), 1);
    assert_eq!(shardnumsub(rp, "rel:sh"), 1);
    // The one left still gets messages; the one that unsubscribed does not.
    let mut publisher = Conn::connect(rp);
    publish(&mut publisher, "PUBLISH", "rel:ch", "still");
    let mut c = c;
    c.expect(&message(false, "rel:ch", "still"));
    b.expect_silence(Duration::from_millis(50));

    // The last one hangs up: nothing is left in Redis.
    drop(c);
    wait_for("PUBSUB NUMSUB rel:ch", 0, || numsub(rp, "rel:ch"));
    wait_for("PUBSUB NUMPAT", 0, || direct_int(rp, &["PUBSUB", "NUMPAT"]));
    wait_for("PUBSUB SHARDNUMSUB rel:sh", 0, || shardnumsub(rp, "rel:sh"));
    assert_eq!(publish(&mut publisher, "PUBLISH", "rel:ch", "gone"), 0);

    // And subscribing again works.
    let mut again = subscribe_all(false);
    assert_eq!(publish(&mut publisher, "PUBLISH", "rel:ch", "back"), 2);
    again.expect(&message(false, "rel:ch", "back"));
}

/// Many clients subscribing and hanging up over and over leave nothing
/// behind in Redis.
#[test]
fn churn_leaves_no_subscription_behind() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    for round in 0..20 {
        let mut conns = Vec::new();
        for i in 0..10 {
            let mut c = Conn::connect(sc.port());
            let ch = format!("churn:{}", (round + i) % 4);
            c.send_cmd(&["SUBSCRIBE", &ch]);
            // Half hang up before reading the ack.
            if i % 2 == 0 {
                c.expect(&ack(false, "subscribe", &ch, 1));
            }
            conns.push(c);
        }
    }
    for i in 0..4 {
        let ch = format!("churn:{i}");
        wait_for(&format!("PUBSUB NUMSUB {ch}"), 0, || {
            numsub(redis.port(), &ch)
        });
    }
}

// ---------------------------------------------------------------------------
// (e) Losing the pub/sub connection
// ---------------------------------------------------------------------------

/// `CLIENT KILL TYPE pubsub` on Redis kills sidecache's pub/sub connection
/// (and its invalidation connection): sidecache closes its subscribed
/// clients, as Redis would on a restart, keeps its other clients, and
/// subscriptions work again afterwards.
#[test]
fn losing_the_pubsub_connection_closes_subscribers() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut subs: Vec<Conn> = (0..4)
        .map(|i| {
            let resp3 = i % 2 == 1;
            let mut c = connect(sc.port(), resp3);
            c.send_cmd(&["SUBSCRIBE", "kill:ch"]);
            c.expect(&ack(resp3, "subscribe", "kill:ch", 1));
            c
        })
        .collect();
    let mut plain = Conn::connect(sc.port());
    plain.ping();
    let mut killer = Conn::connect(redis.port());
    killer.send_cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let killed = int_of(&killer.read_reply_raw());
    assert!(killed >= 1, "CLIENT KILL TYPE pubsub killed {killed}");
    for c in &mut subs {
        c.expect_eof();
    }
    plain.ping();
    plain.roundtrip(&["SET", "kill:k", "v"], OK);
    plain.roundtrip(&["GET", "kill:k"], &bulk("v"));

    // Subscribing works again once sidecache has reconnected.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        let mut c = Conn::connect(sc.port());
        c.send_cmd(&["SUBSCRIBE", "kill:ch"]);
        match c.poll_reply(Duration::from_secs(3)) {
            Polled::Reply(r) if r == ack(false, "subscribe", "kill:ch", 1) => break c,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "SUBSCRIBE after the pub/sub connection was killed: {other:?}"
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let mut publisher = Conn::connect(redis.port());
    assert_eq!(publish(&mut publisher, "PUBLISH", "kill:ch", "again"), 1);
    c.expect(&message(false, "kill:ch", "again"));
    assert_eq!(numsub(redis.port(), "kill:ch"), 1);
}

// ---------------------------------------------------------------------------
// What works today
// ---------------------------------------------------------------------------

/// PUBLISH is an ordinary command and goes through sidecache already.
#[test]
fn publish_through_sidecache_reaches_a_direct_subscriber() {
    let redis = RedisServer::start();
    let sc = Sidecache::start(redis.port(), &[]);
    let mut direct_sub = Conn::connect(redis.port());
    direct_sub.send_cmd(&["SUBSCRIBE", "today:ch"]);
    direct_sub.expect(&ack(false, "subscribe", "today:ch", 1));
    for resp3 in [false, true] {
        let mut p = connect(sc.port(), resp3);
        p.roundtrip(&["PUBLISH", "today:ch", "hi"], &int(1));
        direct_sub.expect(&message(false, "today:ch", "hi"));
        p.roundtrip(&["PUBLISH", "today:nobody", "hi"], &int(0));
    }
}
