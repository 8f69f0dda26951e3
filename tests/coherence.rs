//! Coherence: a cache that does not lie.
//!
//! - A write relayed by sidecache is seen at once by every client's next
//!   GET, in `--tracking off` mode too (which proves the path that learns
//!   the keys a command writes from Redis's COMMAND reply).
//! - A write by someone else (a direct client, an expiry) reaches the cache
//!   through Redis's client tracking within 100 ms.
//! - A GET reply Redis produced before a write is never stored.
//! - Losing a tracking connection clears the cache, nothing is served from
//!   it until tracking is back, and tracking comes back by itself.
//! - A cached value never outlives its key's own expiry in Redis.
//! - `--tracking auto|on|off`.
//!
//! That a GET was served from the cache is observed on Redis: its GET count
//! (`INFO commandstats`) does not move. sidecache's own PTTLs are not GETs.

#[macro_use]
mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a write by someone else may take to reach the cache.
const PROPAGATION: Duration = Duration::from_millis(100);
/// How long sidecache may take to (re-)establish tracking.
const SETTLE: Duration = Duration::from_secs(5);

const DATA_NAME: &str = "sidecache-data";
const INVALIDATION_NAME: &str = "sidecache-invalidation";
/// The data connection for RESP3 clients, opened when the first one comes.
const DATA_RESP3_NAME: &str = "sidecache-data-resp3";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// GET `key` through `c`; the raw reply (RESP2 or RESP3).
#[track_caller]
fn get(c: &mut Conn, key: &str) -> Vec<u8> {
    c.send_cmd(&["GET", key]);
    c.read_reply3_raw()
}

/// Arguments as owned byte strings.
fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn encode(a: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&[u8]> = a.iter().map(|x| &x[..]).collect();
    cmd_bytes(&refs)
}

fn show(a: &[Vec<u8>]) -> String {
    a.iter()
        .map(|x| {
            if x.len() > 40 || x.iter().any(|b| !(0x20..0x7f).contains(b)) {
                format!("<{} bytes>", x.len())
            } else {
                String::from_utf8_lossy(x).into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `commands` directly in Redis, in order, on one connection; every
/// reply must be a non-error.
#[track_caller]
fn direct_all(redis: &RedisServer, commands: &[Vec<Vec<u8>>]) {
    if commands.is_empty() {
        return;
    }
    let mut d = Conn::connect(redis.port());
    for c in commands {
        d.send(&encode(c));
        let r = d.read_reply_raw();
        assert!(
            !r.starts_with(b"-"),
            "direct `{}` failed: {}",
            show(c),
            escape(&r)
        );
    }
}

/// GETs each key through `c` (filling the cache), then proves each is now
/// served from the cache: a second round of GETs leaves Redis's GET count
/// unchanged. Returns the replies.
fn try_prime(redis_port: u16, c: &mut Conn, keys: &[String]) -> Result<Vec<Vec<u8>>, String> {
    let first: Vec<Vec<u8>> = keys.iter().map(|k| get(c, k)).collect();
    let before = redis_get_calls(redis_port);
    for (k, want) in keys.iter().zip(&first) {
        let again = get(c, k);
        if again != *want {
            return Err(format!(
                "GET {k} changed between two reads with nothing written: {} then {}",
                escape(want),
                escape(&again)
            ));
        }
    }
    let reached = redis_get_calls(redis_port) - before;
    if reached != 0 {
        return Err(format!(
            "priming {keys:?}: {reached} of {} repeated GETs reached Redis instead of being served from the cache",
            keys.len()
        ));
    }
    Ok(first)
}

#[track_caller]
fn prime(redis_port: u16, c: &mut Conn, keys: &[String]) -> Vec<Vec<u8>> {
    try_prime(redis_port, c, keys).unwrap_or_else(|e| panic!("{e}"))
}

/// GETs `key` through `c` until the reply is `want`; every reply before
/// must be `old`. A GET that starts after `deadline` must return `want`.
/// Returns how long after `since` the GET that saw `want` started.
#[track_caller]
fn expect_seen_by(
    c: &mut Conn,
    key: &str,
    old: &[u8],
    want: &[u8],
    since: Instant,
    deadline: Instant,
    what: &str,
) -> Duration {
    loop {
        let started = Instant::now();
        let r = get(c, key);
        if r == want {
            return started.saturating_duration_since(since);
        }
        assert_eq!(
            r,
            old,
            "{what}: GET {key} returned neither the old value {} nor the new one {}: {}",
            escape(old),
            escape(want),
            escape(&r)
        );
        assert!(
            started < deadline,
            "{what}: GET {key} started {:?} after the write was acknowledged still returned the old value {} (wanted {} within {:?})",
            started - since,
            escape(old),
            escape(want),
            deadline - since
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Polls Redis's CLIENT LIST until it shows exactly one `sidecache-data`
/// client tracking with its invalidations redirected to exactly one
/// `sidecache-invalidation` client subscribed to one channel (and any
/// `sidecache-data-resp3` client redirected there too). Returns the ids
/// (data, invalidation).
#[track_caller]
fn tracking_connections(redis: &RedisServer) -> (u64, u64) {
    let mut last = Vec::new();
    let found = poll_until(SETTLE, Duration::from_millis(10), || {
        let list = client_list(redis.port());
        let named = |n: &str| {
            list.iter()
                .filter(|c| c.get("name").map(String::as_str) == Some(n))
                .cloned()
                .collect::<Vec<_>>()
        };
        let (data, inv) = (named(DATA_NAME), named(INVALIDATION_NAME));
        last = list.clone();
        let ([data], [inv]) = (&data[..], &inv[..]) else {
            return None;
        };
        let field = |c: &HashMap<String, String>, f: &str| c.get(f).cloned().unwrap_or_default();
        let tracked = |c: &HashMap<String, String>| {
            field(c, "flags").contains('t') && field(c, "redir") == field(inv, "id")
        };
        let subscribed = field(inv, "sub") == "1";
        // A RESP3 data connection, if any, is redirected there too.
        let resp3_ok = named(DATA_RESP3_NAME).iter().all(tracked);
        (tracked(data) && resp3_ok && subscribed).then(|| {
            (
                field(data, "id").parse().unwrap(),
                field(inv, "id").parse().unwrap(),
            )
        })
    });
    found.unwrap_or_else(|| {
        let lines: Vec<String> = last
            .iter()
            .map(|c| {
                let mut f: Vec<String> = ["id", "name", "flags", "redir", "sub", "cmd"]
                    .iter()
                    .map(|k| format!("{k}={}", c.get(*k).map(String::as_str).unwrap_or("?")))
                    .collect();
                f.sort();
                f.join(" ")
            })
            .collect();
        panic!(
            "within {SETTLE:?}, Redis never showed one client named {DATA_NAME} (flag t, redir=<id of {INVALIDATION_NAME}>) and one named {INVALIDATION_NAME} (sub=1); CLIENT LIST:\n{}",
            lines.join("\n")
        )
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------
// Writes by others
// ---------------------------------------------------------------------------

struct DirectCase {
    name: &'static str,
    setup: Vec<Vec<Vec<u8>>>,
    keys: Vec<String>,
    write: Vec<Vec<u8>>,
    /// What GET of each key must return afterwards.
    want: Vec<Vec<u8>>,
    within: Duration,
}

#[test]
fn writes_by_other_clients_reach_the_cache_within_100ms() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "60s"]);
    let mut c = proxy.connect();
    wait_caching(&redis, &mut c);

    let p = unique("direct");
    let k = |s: &str| format!("{p}:{s}");
    let set = |key: &str, v: &str| args(&["SET", key, v]);
    let cases = vec![
        DirectCase {
            name: "SET",
            setup: vec![set(&k("set"), "old")],
            keys: vec![k("set")],
            write: args(&["SET", &k("set"), "new"]),
            want: vec![bulk("new")],
            within: PROPAGATION,
        },
        DirectCase {
            name: "DEL",
            setup: vec![set(&k("del"), "old")],
            keys: vec![k("del")],
            write: args(&["DEL", &k("del")]),
            want: vec![NIL.to_vec()],
            within: PROPAGATION,
        },
        DirectCase {
            name: "EXPIRE 0",
            setup: vec![set(&k("expire"), "old")],
            keys: vec![k("expire")],
            write: args(&["EXPIRE", &k("expire"), "0"]),
            want: vec![NIL.to_vec()],
            within: PROPAGATION,
        },
        DirectCase {
            name: "PEXPIRE 200, then the expiry",
            setup: vec![set(&k("expiry"), "old")],
            keys: vec![k("expiry")],
            write: args(&["PEXPIRE", &k("expiry"), "200"]),
            want: vec![NIL.to_vec()],
            within: Duration::from_millis(200) + PROPAGATION,
        },
        DirectCase {
            name: "RENAME",
            setup: vec![set(&k("from"), "from-old"), set(&k("to"), "to-old")],
            keys: vec![k("from"), k("to")],
            write: args(&["RENAME", &k("from"), &k("to")]),
            want: vec![NIL.to_vec(), bulk("from-old")],
            within: PROPAGATION,
        },
        DirectCase {
            name: "MSET",
            setup: vec![set(&k("m1"), "old1"), set(&k("m2"), "old2")],
            keys: vec![k("m1"), k("m2")],
            write: args(&["MSET", &k("m1"), "new1", &k("m2"), "new2"]),
            want: vec![bulk("new1"), bulk("new2")],
            within: PROPAGATION,
        },
        DirectCase {
            name: "EVAL",
            setup: vec![set(&k("eval"), "old")],
            keys: vec![k("eval")],
            write: args(&[
                "EVAL",
                "return redis.call('SET', KEYS[1], ARGV[1])",
                "1",
                &k("eval"),
                "new",
            ]),
            want: vec![bulk("new")],
            within: PROPAGATION,
        },
        // Last: it empties Redis.
        DirectCase {
            name: "FLUSHALL",
            setup: vec![set(&k("f1"), "old1"), set(&k("f2"), "old2")],
            keys: vec![k("f1"), k("f2")],
            write: args(&["FLUSHALL"]),
            want: vec![NIL.to_vec(), NIL.to_vec()],
            within: PROPAGATION,
        },
    ];

    let mut direct = Conn::connect(redis.port());
    for case in cases {
        direct_all(&redis, &case.setup);
        let old = prime(redis.port(), &mut c, &case.keys);
        direct.send(&encode(&case.write));
        let r = direct.read_reply_raw();
        let acked = Instant::now();
        assert!(!r.starts_with(b"-"), "direct {}: {}", case.name, escape(&r));
        for ((key, old), want) in case.keys.iter().zip(&old).zip(&case.want) {
            let took = expect_seen_by(
                &mut c,
                key,
                old,
                want,
                acked,
                acked + case.within,
                &format!("direct {}", case.name),
            );
            eprintln!(
                "direct {}: GET {key} saw it {took:?} after the ack",
                case.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Writes through sidecache
// ---------------------------------------------------------------------------

struct RwCase {
    name: &'static str,
    /// Run directly in Redis first, in order.
    setup: Vec<Vec<Vec<u8>>>,
    /// Read through sidecache (and proven cached) before the write.
    keys: Vec<String>,
    /// Of `keys`, those the write leaves as they were.
    unchanged: Vec<String>,
    /// Sent through sidecache.
    write: Vec<Vec<u8>>,
    /// The reply the write must get, when fixed.
    reply: Option<Vec<u8>>,
}

const SET_SCRIPT: &str = "return redis.call('SET', KEYS[1], ARGV[1])";
const SET_LIBRARY: &str = "#!lua name=coherencelib\nredis.register_function('setit', function(keys, args) return redis.call('SET', keys[1], args[1]) end)";

/// One case per write family, on keys under the prefix `p`. Cases that
/// empty or swap databases come last.
fn rw_cases(redis: &RedisServer, p: &str) -> Vec<RwCase> {
    let k = |s: &str| format!("{p}:{s}");
    let set = |key: &str, v: &str| args(&["SET", key, v]);
    let case = |name: &'static str,
                setup: Vec<Vec<Vec<u8>>>,
                keys: Vec<String>,
                write: Vec<Vec<u8>>,
                reply: Option<Vec<u8>>| RwCase {
        name,
        setup,
        keys,
        unchanged: vec![],
        write,
        reply,
    };
    // Things that need Redis's help to spell.
    let dump = {
        let src = k("dumpsrc");
        redis.set(&src, "restored");
        match parse_reply(&redis.raw(&["DUMP", &src])) {
            Ok(Some((Resp::Bulk(Some(b)), _))) => b,
            other => panic!("DUMP: {other:?}"),
        }
    };
    let sha = match parse_reply(&redis.raw(&["SCRIPT", "LOAD", SET_SCRIPT])) {
        Ok(Some((Resp::Bulk(Some(b)), _))) => String::from_utf8(b).unwrap(),
        other => panic!("SCRIPT LOAD: {other:?}"),
    };
    let loaded = redis.raw(&["FUNCTION", "LOAD", "REPLACE", SET_LIBRARY]);
    assert!(
        !loaded.starts_with(b"-"),
        "FUNCTION LOAD: {}",
        escape(&loaded)
    );

    let one = Some(int(1));
    let ok = Some(OK.to_vec());
    let mut cases = vec![
        case(
            "SET",
            vec![set(&k("set"), "old")],
            vec![k("set")],
            args(&["SET", &k("set"), "new"]),
            ok.clone(),
        ),
        case(
            "SETEX",
            vec![set(&k("setex"), "old")],
            vec![k("setex")],
            args(&["SETEX", &k("setex"), "100", "new"]),
            ok.clone(),
        ),
        case(
            "PSETEX",
            vec![set(&k("psetex"), "old")],
            vec![k("psetex")],
            args(&["PSETEX", &k("psetex"), "100000", "new"]),
            ok.clone(),
        ),
        // The cached value is a nil.
        case(
            "SETNX",
            vec![],
            vec![k("setnx")],
            args(&["SETNX", &k("setnx"), "new"]),
            one.clone(),
        ),
        case(
            "SET NX",
            vec![],
            vec![k("setnx2")],
            args(&["SET", &k("setnx2"), "new", "NX"]),
            ok.clone(),
        ),
        case(
            "SET GET",
            vec![set(&k("setget"), "old")],
            vec![k("setget")],
            args(&["SET", &k("setget"), "new", "GET"]),
            Some(bulk("old")),
        ),
        case(
            "GETSET",
            vec![set(&k("getset"), "old")],
            vec![k("getset")],
            args(&["GETSET", &k("getset"), "new"]),
            Some(bulk("old")),
        ),
        case(
            "DEL",
            vec![set(&k("del"), "old")],
            vec![k("del")],
            args(&["DEL", &k("del")]),
            one.clone(),
        ),
        case(
            "UNLINK",
            vec![set(&k("unlink"), "old")],
            vec![k("unlink")],
            args(&["UNLINK", &k("unlink")]),
            one.clone(),
        ),
        case(
            "GETDEL",
            vec![set(&k("getdel"), "old")],
            vec![k("getdel")],
            args(&["GETDEL", &k("getdel")]),
            Some(bulk("old")),
        ),
        case(
            "EXPIRE 0",
            vec![set(&k("expire"), "old")],
            vec![k("expire")],
            args(&["EXPIRE", &k("expire"), "0"]),
            one.clone(),
        ),
        case(
            "PEXPIRE 0",
            vec![set(&k("pexpire"), "old")],
            vec![k("pexpire")],
            args(&["PEXPIRE", &k("pexpire"), "0"]),
            one.clone(),
        ),
        case(
            "EXPIREAT past",
            vec![set(&k("expireat"), "old")],
            vec![k("expireat")],
            args(&["EXPIREAT", &k("expireat"), "1"]),
            one.clone(),
        ),
        case(
            "PEXPIREAT past",
            vec![set(&k("pexpireat"), "old")],
            vec![k("pexpireat")],
            args(&["PEXPIREAT", &k("pexpireat"), "1"]),
            one.clone(),
        ),
        RwCase {
            unchanged: vec![k("persist")],
            ..case(
                "PERSIST",
                vec![args(&["SET", &k("persist"), "old", "EX", "100"])],
                vec![k("persist")],
                args(&["PERSIST", &k("persist")]),
                one.clone(),
            )
        },
        RwCase {
            unchanged: vec![k("getex")],
            ..case(
                "GETEX EX",
                vec![set(&k("getex"), "old")],
                vec![k("getex")],
                args(&["GETEX", &k("getex"), "EX", "100"]),
                Some(bulk("old")),
            )
        },
        case(
            "RENAME onto a cached key",
            vec![set(&k("rsrc"), "src"), set(&k("rdst"), "old")],
            vec![k("rsrc"), k("rdst")],
            args(&["RENAME", &k("rsrc"), &k("rdst")]),
            ok.clone(),
        ),
        case(
            "RENAMENX onto a cached nil",
            vec![set(&k("nxsrc"), "src")],
            vec![k("nxsrc"), k("nxdst")],
            args(&["RENAMENX", &k("nxsrc"), &k("nxdst")]),
            one.clone(),
        ),
        case(
            "MSET",
            vec![set(&k("m1"), "old1"), set(&k("m2"), "old2")],
            vec![k("m1"), k("m2")],
            args(&["MSET", &k("m1"), "new1", &k("m2"), "new2"]),
            ok.clone(),
        ),
        case(
            "MSETNX",
            vec![],
            vec![k("mnx1"), k("mnx2")],
            args(&["MSETNX", &k("mnx1"), "new1", &k("mnx2"), "new2"]),
            one.clone(),
        ),
        RwCase {
            unchanged: vec![k("csrc")],
            ..case(
                "COPY REPLACE",
                vec![set(&k("csrc"), "src"), set(&k("cdst"), "old")],
                vec![k("csrc"), k("cdst")],
                args(&["COPY", &k("csrc"), &k("cdst"), "REPLACE"]),
                one.clone(),
            )
        },
        case(
            "MOVE",
            vec![set(&k("move"), "old")],
            vec![k("move")],
            args(&["MOVE", &k("move"), "1"]),
            one.clone(),
        ),
        case(
            "INCR",
            vec![set(&k("incr"), "10")],
            vec![k("incr")],
            args(&["INCR", &k("incr")]),
            Some(int(11)),
        ),
        case(
            "DECR",
            vec![set(&k("decr"), "10")],
            vec![k("decr")],
            args(&["DECR", &k("decr")]),
            Some(int(9)),
        ),
        case(
            "INCRBY",
            vec![set(&k("incrby"), "10")],
            vec![k("incrby")],
            args(&["INCRBY", &k("incrby"), "5"]),
            Some(int(15)),
        ),
        case(
            "DECRBY",
            vec![set(&k("decrby"), "10")],
            vec![k("decrby")],
            args(&["DECRBY", &k("decrby"), "5"]),
            Some(int(5)),
        ),
        case(
            "INCRBYFLOAT",
            vec![set(&k("incrbyfloat"), "10")],
            vec![k("incrbyfloat")],
            args(&["INCRBYFLOAT", &k("incrbyfloat"), "1.5"]),
            Some(bulk("11.5")),
        ),
        case(
            "APPEND",
            vec![set(&k("append"), "old")],
            vec![k("append")],
            args(&["APPEND", &k("append"), "x"]),
            Some(int(4)),
        ),
        case(
            "SETRANGE",
            vec![set(&k("setrange"), "old")],
            vec![k("setrange")],
            args(&["SETRANGE", &k("setrange"), "0", "N"]),
            Some(int(3)),
        ),
        // The destination holds a cached nil; afterwards a list (WRONGTYPE).
        case(
            "LMOVE",
            vec![args(&["RPUSH", &k("lsrc"), "a"])],
            vec![k("ldst")],
            args(&["LMOVE", &k("lsrc"), &k("ldst"), "LEFT", "LEFT"]),
            Some(bulk("a")),
        ),
        // A cached string becomes a list, a set, a sorted set.
        case(
            "SORT STORE",
            vec![
                args(&["RPUSH", &k("sortsrc"), "3", "1", "2"]),
                set(&k("sortdst"), "old"),
            ],
            vec![k("sortdst")],
            args(&["SORT", &k("sortsrc"), "STORE", &k("sortdst")]),
            Some(int(3)),
        ),
        case(
            "SINTERSTORE",
            vec![
                args(&["SADD", &k("s1"), "a", "b"]),
                args(&["SADD", &k("s2"), "b"]),
                set(&k("sdst"), "old"),
            ],
            vec![k("sdst")],
            args(&["SINTERSTORE", &k("sdst"), &k("s1"), &k("s2")]),
            one.clone(),
        ),
        case(
            "ZUNIONSTORE",
            vec![args(&["ZADD", &k("z"), "1", "a"]), set(&k("zdst"), "old")],
            vec![k("zdst")],
            args(&["ZUNIONSTORE", &k("zdst"), "1", &k("z")]),
            one.clone(),
        ),
        case(
            "RESTORE REPLACE",
            vec![set(&k("restore"), "old")],
            vec![k("restore")],
            vec![
                b"RESTORE".to_vec(),
                k("restore").into_bytes(),
                b"0".to_vec(),
                dump,
                b"REPLACE".to_vec(),
            ],
            ok.clone(),
        ),
        case(
            "EVAL",
            vec![set(&k("eval"), "old")],
            vec![k("eval")],
            args(&["EVAL", SET_SCRIPT, "1", &k("eval"), "new"]),
            ok.clone(),
        ),
        case(
            "EVALSHA",
            vec![set(&k("evalsha"), "old")],
            vec![k("evalsha")],
            args(&["EVALSHA", &sha, "1", &k("evalsha"), "new"]),
            ok.clone(),
        ),
        case(
            "FCALL",
            vec![set(&k("fcall"), "old")],
            vec![k("fcall")],
            args(&["FCALL", "setit", "1", &k("fcall"), "new"]),
            ok.clone(),
        ),
    ];
    // More ways to write a string, or to turn a cached key into something
    // else, with keys found in different ways (variadic, numkeys, STORE).
    cases.extend([
        case(
            "DEL of two keys",
            vec![set(&k("d1"), "old1"), set(&k("d2"), "old2")],
            vec![k("d1"), k("d2")],
            args(&["DEL", &k("d1"), &k("d2")]),
            Some(int(2)),
        ),
        case(
            "SET XX",
            vec![set(&k("setxx"), "old")],
            vec![k("setxx")],
            args(&["SET", &k("setxx"), "new", "XX"]),
            ok.clone(),
        ),
        case(
            "BITOP",
            vec![set(&k("bsrc"), "ab"), set(&k("bdst"), "old")],
            vec![k("bdst")],
            args(&["BITOP", "NOT", &k("bdst"), &k("bsrc")]),
            Some(int(2)),
        ),
        case(
            "SETBIT",
            vec![set(&k("setbit"), "old")],
            vec![k("setbit")],
            args(&["SETBIT", &k("setbit"), "0", "1"]),
            Some(int(0)),
        ),
        case(
            "BITFIELD SET",
            vec![set(&k("bitfield"), "old")],
            vec![k("bitfield")],
            args(&["BITFIELD", &k("bitfield"), "SET", "u8", "0", "65"]),
            Some(b"*1\r\n:111\r\n".to_vec()),
        ),
        case(
            "PFADD onto a cached nil",
            vec![],
            vec![k("pf")],
            args(&["PFADD", &k("pf"), "a"]),
            one.clone(),
        ),
        case(
            "LPUSH onto a cached nil",
            vec![],
            vec![k("lpush")],
            args(&["LPUSH", &k("lpush"), "a"]),
            one.clone(),
        ),
        case(
            "HSET onto a cached nil",
            vec![],
            vec![k("hset")],
            args(&["HSET", &k("hset"), "f", "v"]),
            one.clone(),
        ),
        case(
            "XADD onto a cached nil",
            vec![],
            vec![k("xadd")],
            args(&["XADD", &k("xadd"), "1-1", "f", "v"]),
            Some(bulk("1-1")),
        ),
        case(
            "GEORADIUS STORE",
            vec![
                args(&["GEOADD", &k("geo"), "13.361389", "38.115556", "Palermo"]),
                set(&k("geodst"), "old"),
            ],
            vec![k("geodst")],
            args(&[
                "GEORADIUS",
                &k("geo"),
                "15",
                "37",
                "200",
                "km",
                "STORE",
                &k("geodst"),
            ]),
            one.clone(),
        ),
        case(
            "ZRANGESTORE",
            vec![args(&["ZADD", &k("zr"), "1", "a"]), set(&k("zrdst"), "old")],
            vec![k("zrdst")],
            args(&["ZRANGESTORE", &k("zrdst"), &k("zr"), "0", "-1"]),
            one.clone(),
        ),
        case(
            "SMOVE onto a cached nil",
            vec![args(&["SADD", &k("smsrc"), "a"])],
            vec![k("smdst")],
            args(&["SMOVE", &k("smsrc"), &k("smdst"), "a"]),
            one.clone(),
        ),
    ]);
    cases.extend([
        case(
            "SWAPDB 0 1",
            vec![
                set(&k("swap"), "old"),
                args(&["SELECT", "1"]),
                set(&k("swap"), "from-db1"),
                args(&["SELECT", "0"]),
            ],
            vec![k("swap")],
            args(&["SWAPDB", "0", "1"]),
            ok.clone(),
        ),
        case(
            "FLUSHDB",
            vec![set(&k("fdb1"), "old1"), set(&k("fdb2"), "old2")],
            vec![k("fdb1"), k("fdb2")],
            args(&["FLUSHDB"]),
            ok.clone(),
        ),
        case(
            "FLUSHALL",
            vec![set(&k("fall1"), "old1"), set(&k("fall2"), "old2")],
            vec![k("fall1"), k("fall2")],
            args(&["FLUSHALL"]),
            ok,
        ),
    ]);
    cases
}

/// For every write family: prime the cache, write through sidecache, and
/// check that the writer's next GETs (sent after the reply, or pipelined
/// right behind the write) and a second client's GETs return what Redis
/// now holds. Collects every failure before failing.
fn read_your_writes(mode: &str, extra: &[&str]) {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), extra);
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    wait_caching(&redis, &mut a);

    let mut failures = Vec::new();
    let mut checked = 0;
    for pipelined in [false, true] {
        let how = if pipelined {
            "pipelined"
        } else {
            "after the reply"
        };
        let p = unique(if pipelined { "rw-pipe" } else { "rw" });
        for case in rw_cases(&redis, &p) {
            let what = format!("{mode}, {} ({how})", case.name);
            direct_all(&redis, &case.setup);
            let old = match try_prime(redis.port(), &mut a, &case.keys) {
                Ok(old) => old,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let mut bytes = encode(&case.write);
            if pipelined {
                for key in &case.keys {
                    bytes.extend(cmd(&["GET", key]));
                }
            }
            a.send(&bytes);
            let reply = a.read_reply_raw();
            let from_a: Vec<Vec<u8>> = if pipelined {
                case.keys.iter().map(|_| a.read_reply_raw()).collect()
            } else {
                case.keys.iter().map(|key| get(&mut a, key)).collect()
            };
            let from_b: Vec<Vec<u8>> = case.keys.iter().map(|key| get(&mut b, key)).collect();
            let truth: Vec<Vec<u8>> = case
                .keys
                .iter()
                .map(|key| redis.raw(&["GET", key]))
                .collect();
            match &case.reply {
                Some(want) => assert_eq!(
                    reply,
                    *want,
                    "{what}: reply to `{}`: {}",
                    show(&case.write),
                    escape(&reply)
                ),
                None => assert!(!reply.starts_with(b"-"), "{what}: {}", escape(&reply)),
            }
            for (i, key) in case.keys.iter().enumerate() {
                checked += 1;
                // The test's own premise: the write changed the key or not.
                if case.unchanged.contains(key) {
                    assert_eq!(
                        truth[i], old[i],
                        "{what}: test premise: {key} should not change"
                    );
                } else {
                    assert_ne!(
                        truth[i], old[i],
                        "{what}: test premise: {key} should change"
                    );
                }
                for (who, got) in [
                    ("the writing client", &from_a[i]),
                    ("a second client", &from_b[i]),
                ] {
                    if *got != truth[i] {
                        failures.push(format!(
                            "{what}: GET {key} by {who} returned {} (cached before the write: {}); Redis holds {}",
                            escape(got),
                            escape(&old[i]),
                            escape(&truth[i])
                        ));
                    }
                }
            }
        }
    }

    // The classic: read, write, read, in one write by one client.
    let key = unique("rw-classic");
    redis.set(&key, "v1");
    prime(redis.port(), &mut a, std::slice::from_ref(&key));
    let mut p = cmd(&["GET", &key]);
    p.extend(cmd(&["SET", &key, "v2"]));
    p.extend(cmd(&["GET", &key]));
    a.send(&p);
    let got: Vec<Vec<u8>> = (0..3).map(|_| a.read_reply_raw()).collect();
    let want = vec![bulk("v1"), OK.to_vec(), bulk("v2")];
    if got != want {
        failures.push(format!(
            "{mode}: pipeline GET, SET v2, GET replied {:?}, wanted {:?}",
            got.iter().map(|r| escape(r)).collect::<Vec<_>>(),
            want.iter().map(|r| escape(r)).collect::<Vec<_>>()
        ));
    }
    let from_b = get(&mut b, &key);
    if from_b != bulk("v2") {
        failures.push(format!(
            "{mode}: after the pipeline, a second client's GET returned {}",
            escape(&from_b)
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {checked} reads after a write through sidecache were wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn read_your_writes_with_tracking_off() {
    skip_in_direct_mode!();
    // Only what sidecache learned from COMMAND can invalidate here.
    read_your_writes("--tracking off", &["--tracking", "off", "--ttl", "60s"]);
}

#[test]
fn read_your_writes_with_tracking() {
    skip_in_direct_mode!();
    read_your_writes("default tracking", &["--ttl", "60s"]);
}

#[test]
fn resp2_and_resp3_clients_see_each_others_writes() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "60s"]);
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    hello3(&mut b);
    wait_caching(&redis, &mut a);
    wait_caching(&redis, &mut b);

    let key = unique("proto");
    redis.set(&key, "old");
    prime(redis.port(), &mut a, std::slice::from_ref(&key));
    assert_eq!(get(&mut b, &key), bulk("old"));
    // A write by either is seen at once by both.
    b.send_cmd(&["SET", &key, "from-resp3"]);
    assert_eq!(b.read_reply3_raw(), OK, "SET over RESP3");
    assert_eq!(
        get(&mut a, &key),
        bulk("from-resp3"),
        "RESP2 after a RESP3 write"
    );
    assert_eq!(
        get(&mut b, &key),
        bulk("from-resp3"),
        "RESP3 after its own write"
    );
    prime(redis.port(), &mut b, std::slice::from_ref(&key));
    a.roundtrip(&["SET", &key, "from-resp2"], OK);
    assert_eq!(
        get(&mut b, &key),
        bulk("from-resp2"),
        "RESP3 after a RESP2 write"
    );
    assert_eq!(
        get(&mut a, &key),
        bulk("from-resp2"),
        "RESP2 after its own write"
    );
    // A pipeline over RESP3: read, write, read.
    prime(redis.port(), &mut b, std::slice::from_ref(&key));
    let mut p = cmd(&["GET", &key]);
    p.extend(cmd(&["SET", &key, "piped"]));
    p.extend(cmd(&["GET", &key]));
    b.send(&p);
    let got: Vec<Vec<u8>> = (0..3).map(|_| b.read_reply3_raw()).collect();
    assert_eq!(
        got,
        vec![bulk("from-resp2"), OK.to_vec(), bulk("piped")],
        "RESP3 pipeline GET, SET, GET"
    );
    assert_eq!(get(&mut a, &key), bulk("piped"));
    // A delete: each protocol's own nil.
    prime(redis.port(), &mut b, std::slice::from_ref(&key));
    a.roundtrip(&["DEL", &key], &int(1));
    assert_eq!(get(&mut b, &key), b"_\r\n", "RESP3 nil after a RESP2 DEL");
    assert_eq!(get(&mut a, &key), NIL, "RESP2 nil");
    // A direct write reaches what RESP3 clients are served within 100 ms.
    redis.set(&key, "old");
    prime(redis.port(), &mut b, std::slice::from_ref(&key));
    let mut d = Conn::connect(redis.port());
    d.roundtrip(&["SET", &key, "direct"], OK);
    let acked = Instant::now();
    expect_seen_by(
        &mut b,
        &key,
        &bulk("old"),
        &bulk("direct"),
        acked,
        acked + PROPAGATION,
        "direct SET, read over RESP3",
    );
    assert_eq!(get(&mut a, &key), bulk("direct"));
}

/// Redis's `blocked_clients` (clients held up by CLIENT PAUSE count).
fn redis_blocked_clients(port: u16) -> u64 {
    let mut c = Conn::connect(port);
    c.send_cmd(&["INFO", "clients"]);
    let info = c.read_reply().bulk_str().expect("INFO clients");
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in INFO clients:\n{info}"))
}

/// RESP2 and RESP3 requests travel on different connections to Redis, so a
/// GET sent after a write can run before it. Hold a write up in Redis
/// (`CLIENT PAUSE WRITE`), read the key over the other protocol meanwhile
/// (the old value, legitimately: the write is not acknowledged), let the
/// write run: once its reply is relayed, both protocols must read the new
/// value. With `--tracking off` nothing else can save the cache.
#[test]
fn a_read_overtaking_a_write_on_the_other_data_connection_is_not_kept() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    for (mode, extra) in [
        ("--tracking off", &["--tracking", "off", "--ttl", "60s"][..]),
        ("default tracking", &["--ttl", "60s"][..]),
    ] {
        let proxy = Sidecache::start(redis.port(), extra);
        let mut resp2 = proxy.connect();
        let mut resp3 = proxy.connect();
        hello3(&mut resp3);
        wait_caching(&redis, &mut resp2);
        wait_caching(&redis, &mut resp3);
        for writer_is_resp3 in [true, false] {
            let what = format!(
                "{mode}, write over {}",
                if writer_is_resp3 { "RESP3" } else { "RESP2" }
            );
            let key = unique("overtake");
            redis.set(&key, "old");
            let (writer, reader) = if writer_is_resp3 {
                (&mut resp3, &mut resp2)
            } else {
                (&mut resp2, &mut resp3)
            };
            prime(redis.port(), reader, std::slice::from_ref(&key));
            let mut d = Conn::connect(redis.port());
            d.roundtrip(&["CLIENT", "PAUSE", "10000", "WRITE"], OK);
            writer.send_cmd(&["SET", &key, "new"]);
            let held = poll_until(SETTLE, Duration::from_millis(2), || {
                (redis_blocked_clients(redis.port()) >= 1).then_some(())
            });
            assert!(held.is_some(), "{what}: the SET never got held up in Redis");
            // The GET misses (the write dropped the key) and runs first.
            assert_eq!(
                get(reader, &key),
                bulk("old"),
                "{what}: GET during the pause"
            );
            d.roundtrip(&["CLIENT", "UNPAUSE"], OK);
            assert_eq!(writer.read_reply3_raw(), OK, "{what}: SET");
            assert_eq!(
                get(reader, &key),
                bulk("new"),
                "{what}: GET over the other protocol after the SET was acknowledged"
            );
            assert_eq!(get(writer, &key), bulk("new"), "{what}: the writer's GET");
        }
    }
}

// ---------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------

#[test]
fn a_cached_value_never_outlives_the_keys_expiry() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    // No tracking and a long TTL: only the key's own PTTL can save it.
    let proxy = Sidecache::start(redis.port(), &["--tracking", "off", "--ttl", "60s"]);
    let mut c = proxy.connect();
    wait_caching(&redis, &mut c);

    let key = unique("pttl");
    let mut d = Conn::connect(redis.port());
    d.roundtrip(&["SET", &key, "v", "PX", "300"], OK);
    let acked = Instant::now();
    prime(redis.port(), &mut c, std::slice::from_ref(&key));
    // Half way through its life the key is still served. (Sleeping is the
    // behaviour under test: time passing.)
    thread::sleep((acked + Duration::from_millis(150)).saturating_duration_since(Instant::now()));
    let at = acked.elapsed();
    let r = get(&mut c, &key);
    // (On a machine so loaded that the GET came late, the key may be gone.)
    if at < Duration::from_millis(250) {
        assert_eq!(r, bulk("v"), "GET {key} {at:?} into its 300 ms");
    } else {
        eprintln!("GET at {at:?}, too late to check that the key is still served");
    }
    let took = expect_seen_by(
        &mut c,
        &key,
        &bulk("v"),
        NIL,
        acked,
        acked + Duration::from_millis(300) + PROPAGATION,
        "SET PX 300",
    );
    eprintln!("SET PX 300: nil seen {took:?} after the SET");
}

#[test]
fn ttl_changes_through_sidecache_cap_the_cached_value() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--tracking", "off", "--ttl", "60s"]);
    let mut c = proxy.connect();
    wait_caching(&redis, &mut c);

    let p = unique("ttlw");
    let k = |s: &str| format!("{p}:{s}");
    let mut d = Conn::connect(redis.port());
    for s in ["pexpire", "pexpireat", "getex", "set", "psetex"] {
        d.roundtrip(&["SET", &k(s), "old"], OK);
    }
    // What each write gives its key to live (long enough to survive a
    // loaded machine's slowness between the writes and the checks).
    const LIFE: Duration = Duration::from_millis(400);
    let life = LIFE.as_millis().to_string();
    d.roundtrip(&["SET", &k("persist"), "old", "PX", "600"], OK);
    let persist_set = Instant::now();
    let keys: Vec<String> = ["pexpire", "pexpireat", "getex", "set", "psetex", "persist"]
        .iter()
        .map(|s| k(s))
        .collect();
    prime(redis.port(), &mut c, &keys);

    // Each write gives its key LIFE to live (PERSIST takes the expiry
    // away), then a GET refills the cache.
    let at = (unix_ms() + LIFE.as_millis() as u64).to_string();
    let writes = vec![
        (
            k("pexpire"),
            vec!["PEXPIRE", "", &life],
            int(1),
            bulk("old"),
        ),
        (
            k("pexpireat"),
            vec!["PEXPIREAT", "", &at],
            int(1),
            bulk("old"),
        ),
        (
            k("getex"),
            vec!["GETEX", "", "PX", &life],
            bulk("old"),
            bulk("old"),
        ),
        (
            k("set"),
            vec!["SET", "", "new", "PX", &life],
            OK.to_vec(),
            bulk("new"),
        ),
        (
            k("psetex"),
            vec!["PSETEX", "", &life, "new"],
            OK.to_vec(),
            bulk("new"),
        ),
        (k("persist"), vec!["PERSIST", ""], int(1), bulk("old")),
    ];
    let mut deadlines = Vec::new();
    for (key, w, reply, value) in writes {
        let name = w[0];
        let full: Vec<&str> = w
            .iter()
            .map(|a| if a.is_empty() { key.as_str() } else { a })
            .collect();
        c.roundtrip(&full, &reply);
        let acked = Instant::now();
        assert_eq!(get(&mut c, &key), value, "GET {key} right after {name}");
        deadlines.push((key, name, value, acked));
    }
    // The refilled entries are served from the cache...
    prime(redis.port(), &mut c, &keys);
    // ...yet gone when their keys are: each within LIFE + slack of its write.
    for (key, name, value, acked) in &deadlines {
        if *name == "PERSIST" {
            continue;
        }
        let took = expect_seen_by(
            &mut c,
            key,
            value,
            NIL,
            *acked,
            *acked + LIFE + PROPAGATION,
            &format!("{name} through sidecache"),
        );
        eprintln!("{name}: nil seen {took:?} after the write");
    }
    // PERSIST: the value outlives the expiry it had when it was cached.
    thread::sleep(
        (persist_set + Duration::from_millis(700)).saturating_duration_since(Instant::now()),
    );
    let key = k("persist");
    assert_eq!(
        get(&mut c, &key),
        bulk("old"),
        "GET {key} after PERSIST, past its former expiry"
    );
    assert_eq!(redis.raw(&["PTTL", &key]), int(-1), "test premise: PERSIST");
}

// ---------------------------------------------------------------------------
// Stress
// ---------------------------------------------------------------------------

/// What every thread knows about the writes: a logical clock, and per key
/// the writes acknowledged so far.
///
/// A write takes `seq` from the clock before it is sent, and its value
/// carries it; once acknowledged, it takes `ack` from the clock. A GET
/// notes `floor`, the largest `seq` of the writes that bind it, before it
/// is sent: every write through sidecache acknowledged by then, and every
/// direct write acknowledged at least [`PROPAGATION`] before (others'
/// writes may take that long to reach the cache). It is stale when it
/// returns the value of a write with `ack < floor`: that write was
/// acknowledged before the `floor` write was even sent, so Redis applied it
/// earlier, and the `floor` write binds the GET. (Comparing `seq`s alone
/// would flag legitimate reads when two writers race on one key.)
struct History {
    clock: AtomicU64,
    keys: Vec<Mutex<KeyHistory>>,
}

#[derive(Default)]
struct KeyHistory {
    /// seq → (ack, writer, when acknowledged).
    acked: HashMap<u64, (u64, String, Instant)>,
    floor: u64,
    /// Direct writes acknowledged less than PROPAGATION ago, oldest first.
    recent_direct: std::collections::VecDeque<(u64, Instant)>,
}

/// What a GET noted before it was sent.
#[derive(Clone, Copy)]
struct Floor {
    /// Writes that bind the GET.
    binding: u64,
    /// Also counting direct writes still within their propagation time.
    any: u64,
    at: Instant,
}

impl History {
    fn new(keys: usize) -> History {
        History {
            clock: AtomicU64::new(1),
            keys: (0..keys).map(|_| Mutex::default()).collect(),
        }
    }

    fn begin_write(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn acked(&self, key: usize, seq: u64, writer: &str, direct: bool) {
        let t = self.clock.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let mut h = self.keys[key].lock().unwrap();
        h.acked.insert(seq, (t, writer.to_string(), now));
        if direct {
            h.recent_direct.push_back((seq, now));
        } else {
            h.floor = h.floor.max(seq);
        }
    }

    fn floor(&self, key: usize) -> Floor {
        let now = Instant::now();
        let mut h = self.keys[key].lock().unwrap();
        while let Some(&(seq, at)) = h.recent_direct.front() {
            if at + PROPAGATION > now {
                break;
            }
            h.floor = h.floor.max(seq);
            h.recent_direct.pop_front();
        }
        let any = h
            .recent_direct
            .iter()
            .map(|&(s, _)| s)
            .fold(h.floor, u64::max);
        Floor {
            binding: h.floor,
            any,
            at: now,
        }
    }

    /// Whether returning the value of write `seq` to a GET with `floor` is
    /// stale: `Err` describes it. `Ok(true)` when it is older than a direct
    /// write still within its propagation time (allowed).
    fn check(&self, key: usize, floor: Floor, seq: u64) -> Result<bool, String> {
        let h = self.keys[key].lock().unwrap();
        let Some((ack, writer, _)) = h.acked.get(&seq) else {
            return Ok(false); // not acknowledged yet: as new as can be
        };
        if *ack < floor.binding {
            let (_, floor_writer, floor_at) = &h.acked[&floor.binding];
            return Err(format!(
                "returned write #{seq} by {writer} (acknowledged at clock {ack}), yet write #{} by {floor_writer}, sent after that, was acknowledged {:?} before the GET started",
                floor.binding,
                floor.at.saturating_duration_since(*floor_at)
            ));
        }
        Ok(*ack < floor.any)
    }
}

fn value_of(seq: u64, key: usize, writer: &str) -> String {
    format!("{seq}:{key}:{writer}")
}

/// The (seq, key) a value carries.
fn parse_value(r: &Resp) -> Option<(u64, usize)> {
    let s = r.bulk_str()?;
    let mut it = s.split(':');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[derive(Default)]
struct Tally {
    gets: u64,
    sets: u64,
    stale: u64,
    /// GETs older than a direct write still within its propagation time.
    in_window: u64,
    examples: Vec<String>,
}

enum Op {
    Get { key: usize, floor: Floor },
    Set { key: usize, seq: u64 },
}

/// Keys of the stress run written by the direct writer only.
const DIRECT_ONLY: usize = 2;

/// One stress client.
struct Worker {
    /// Redis's port when `direct`, else sidecache's.
    port: u16,
    id: String,
    seed: u64,
    direct: bool,
    resp3: bool,
}

/// Sends random batches of 1 to 4 GETs and SETs until `stop` (SETs only,
/// one at a time, when `direct`: then `port` is Redis's), checking every
/// GET against `hist`; speaks RESP3 when `resp3`.
fn hammer(w: &Worker, keys: &[String], hist: &History, stop: &AtomicBool) -> Tally {
    let Worker {
        port,
        ref id,
        seed,
        direct,
        resp3,
    } = *w;
    let mut c = Conn::connect(port);
    if resp3 {
        hello3(&mut c);
    }
    let mut rng = Rng::new(seed);
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let mut ops = Vec::new();
        let mut bytes = Vec::new();
        let batch = if direct { 1 } else { 1 + rng.below(4) };
        for _ in 0..batch {
            let key = rng.below(keys.len() as u64) as usize;
            // Only the direct writer writes the first DIRECT_ONLY keys, so
            // nothing but invalidations from Redis can refresh them.
            if direct || (key >= DIRECT_ONLY && rng.below(10) < 3) {
                let seq = hist.begin_write();
                bytes.extend(cmd(&["SET", &keys[key], &value_of(seq, key, id)]));
                ops.push(Op::Set { key, seq });
            } else {
                let floor = hist.floor(key);
                bytes.extend(cmd(&["GET", &keys[key]]));
                ops.push(Op::Get { key, floor });
            }
        }
        c.send(&bytes);
        for op in ops {
            let r = c.read_reply();
            match op {
                Op::Set { key, seq } => {
                    assert_eq!(r, Resp::Simple("OK".into()), "{id}: SET {}", keys[key]);
                    hist.acked(key, seq, id, direct);
                    t.sets += 1;
                }
                Op::Get { key, floor } => {
                    t.gets += 1;
                    let Some((seq, of)) = parse_value(&r) else {
                        panic!("{id}: GET {} returned {r:?}", keys[key]);
                    };
                    assert_eq!(
                        of, key,
                        "{id}: GET {} returned a value of another key: {r:?}",
                        keys[key]
                    );
                    match hist.check(key, floor, seq) {
                        Ok(false) => {}
                        Ok(true) => t.in_window += 1,
                        Err(e) => {
                            t.stale += 1;
                            if t.examples.len() < 5 {
                                t.examples.push(format!("{id}: GET {}: {e}", keys[key]));
                            }
                        }
                    }
                }
            }
        }
        if direct {
            // Leave the two cores to sidecache's clients too.
            thread::sleep(Duration::from_micros(50));
        }
    }
    t
}

/// Eight clients of sidecache (half of them RESP3) send random batches of
/// GETs and SETs on eight keys, with values that carry a global sequence
/// number, while a ninth client writes straight to Redis; see [`History`]
/// for what counts as stale. Then, once quiet, sidecache agrees with Redis.
#[test]
fn stress_concurrent_gets_and_sets_never_read_stale() {
    skip_in_direct_mode!();
    const THREADS: usize = 8;
    const KEYS: usize = 8;
    const RUN: Duration = Duration::from_secs(3);
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "60s"]);
    {
        let mut c = proxy.connect();
        wait_caching(&redis, &mut c);
    }
    let p = unique("stress");
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("{p}:{i}")).collect());
    let hist = Arc::new(History::new(KEYS));
    // Every key holds a value from the start, written the same way.
    let mut d = Conn::connect(redis.port());
    for (i, key) in keys.iter().enumerate() {
        let seq = hist.begin_write();
        d.roundtrip(&["SET", key, &value_of(seq, i, "init")], OK);
        hist.acked(i, seq, "init", false);
    }
    let gets_before = redis_get_calls(redis.port());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..=THREADS {
        let (keys, hist, stop) = (keys.clone(), hist.clone(), stop.clone());
        // Worker THREADS writes directly to Redis; the rest go through sidecache.
        let (port, direct) = if w == THREADS {
            (redis.port(), true)
        } else {
            (proxy.port(), false)
        };
        // Every other client of sidecache speaks RESP3 (its requests go
        // through another data connection).
        let resp3 = !direct && w % 2 == 1;
        let id = match (direct, resp3) {
            (true, _) => "direct".to_string(),
            (false, false) => format!("w{w}"),
            (false, true) => format!("w{w}-resp3"),
        };
        let worker = Worker {
            port,
            id,
            seed: w as u64 + 1,
            direct,
            resp3,
        };
        workers.push(thread::spawn(move || hammer(&worker, &keys, &hist, &stop)));
    }
    // The run's length is the behaviour under test.
    thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    let mut direct_sets = 0;
    for (w, h) in workers.into_iter().enumerate() {
        let t = h.join().expect("worker panicked");
        if w == THREADS {
            direct_sets = t.sets;
        } else {
            total.sets += t.sets;
        }
        total.gets += t.gets;
        total.stale += t.stale;
        total.in_window += t.in_window;
        total.examples.extend(t.examples);
    }
    let reached = redis_get_calls(redis.port()) - gets_before;
    let hits = total.gets.saturating_sub(reached);
    eprintln!(
        "stale reads: {} of {} GETs ({} SETs through sidecache, {} direct SETs; {} GETs served from the cache; {} GETs older than a direct write acknowledged less than {PROPAGATION:?} before, which is allowed)",
        total.stale, total.gets, total.sets, direct_sets, hits, total.in_window
    );
    assert!(
        total.stale == 0,
        "stale reads: {} of {} GETs, e.g.:\n{}",
        total.stale,
        total.gets,
        total.examples.join("\n")
    );
    assert!(
        total.gets > 1000 && total.sets > 100 && direct_sets > 100,
        "the stress run hardly ran: {} GETs, {} SETs, {} direct SETs",
        total.gets,
        total.sets,
        direct_sets
    );
    assert!(
        hits > 0,
        "no GET of {} was served from the cache: the run tested nothing",
        total.gets
    );

    // Once quiet, the cache agrees with Redis on every key.
    let mut c = proxy.connect();
    let mut last = Vec::new();
    let agreed = poll_until(Duration::from_secs(1), Duration::from_millis(10), || {
        last.clear();
        for key in keys.iter() {
            let (through, truth) = (get(&mut c, key), redis.raw(&["GET", key]));
            if through != truth {
                last.push(format!("{key}: {} vs {}", escape(&through), escape(&truth)));
            }
        }
        last.is_empty().then_some(())
    });
    assert!(
        agreed.is_some(),
        "1 s after the run, sidecache and Redis still disagree (sidecache vs Redis):\n{}",
        last.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Losing a tracking connection
// ---------------------------------------------------------------------------

/// GETs `key` through `c` after a direct write of `v` acknowledged at
/// `acked` (the key held `prev` before): the reply must be `v` (or
/// `allowed`), at once when `immediate`, else within [`PROPAGATION`] and
/// `prev` until then.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn expect_direct_write_seen(
    c: &mut Conn,
    key: &str,
    prev: &[u8],
    v: &[u8],
    allowed: &[u8],
    immediate: bool,
    acked: Instant,
    what: &str,
) {
    let deadline = if immediate {
        acked
    } else {
        acked + PROPAGATION
    };
    loop {
        let started = Instant::now();
        let r = get(c, key);
        if r == v || r == allowed {
            return;
        }
        assert!(
            r == prev && started < deadline,
            "{what}: GET {key} {:?} after a direct SET {} was acknowledged returned {} ({})",
            started - acked,
            escape(v),
            escape(&r),
            if immediate {
                "wanted at once"
            } else {
                "wanted within 100 ms"
            }
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Kills sidecache's connection named `victim` from outside and checks the
/// cache neither lies meanwhile nor stays off. With `resp3`, a RESP3 client
/// runs too, so the RESP3 data connection is up (the cache may serve on
/// through it while the RESP2 one is down) and Redis pushes to it.
fn recovers_after_killing(victim: &str, resp3: bool) {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "60s"]);
    let mut c = proxy.connect();
    let mut c3 = resp3.then(|| {
        let mut c3 = proxy.connect();
        hello3(&mut c3);
        wait_caching(&redis, &mut c3);
        c3
    });
    wait_caching(&redis, &mut c);
    let (data_id, inv_id) = tracking_connections(&redis);
    let victim_id = if victim == DATA_NAME { data_id } else { inv_id };
    // A reply sidecache may give while the data connection is down.
    let allowed: &[u8] = if victim == DATA_NAME {
        BACKEND_UNAVAILABLE
    } else {
        b""
    };

    let key = unique("kill");
    redis.set(&key, "old");
    prime(redis.port(), &mut c, std::slice::from_ref(&key));
    // Keep sidecache from reconnecting for a while: Redis takes no more
    // clients. `d`, connected before, carries the test's own requests.
    let mut d = Conn::connect(redis.port());
    d.send_cmd(&["CONFIG", "GET", "maxclients"]);
    let maxclients = match d.read_reply() {
        Resp::Array(Some(v)) if v.len() == 2 => v[1].bulk_str().unwrap(),
        other => panic!("CONFIG GET maxclients: {other:?}"),
    };
    d.roundtrip(&["CONFIG", "SET", "maxclients", "1"], OK);
    d.roundtrip(&["CLIENT", "KILL", "ID", &victim_id.to_string()], &int(1));
    d.roundtrip(&["SET", &key, "new"], OK);
    let r = get(&mut c, &key);
    assert!(
        r == bulk("new") || r == allowed,
        "GET {key} right after killing {victim} and a direct SET: {} (the cache was not cleared on the loss)",
        escape(&r)
    );
    if let Some(c3) = c3.as_mut() {
        let r = get(c3, &key);
        assert_eq!(
            r,
            bulk("new"),
            "RESP3 GET {key} right after killing {victim} and a direct SET: {} (the cache was not cleared on the loss)",
            escape(&r)
        );
    }
    // While it cannot come back: with the invalidation connection lost,
    // nothing is served from the cache, so a GET after a direct write
    // returns what was written at once. With the RESP2 data connection
    // lost, the cache may serve on through the RESP3 one, whose tracking
    // brings direct writes within PROPAGATION.
    let immediate = victim == INVALIDATION_NAME;
    let mut prev = bulk("new");
    let mut write_and_check = |d: &mut Conn, v: &str, what: &str| {
        d.roundtrip(&["SET", &key, v], OK);
        let acked = Instant::now();
        let v = bulk(v);
        expect_direct_write_seen(&mut c, &key, &prev, &v, allowed, immediate, acked, what);
        if let Some(c3) = c3.as_mut() {
            expect_direct_write_seen(c3, &key, &prev, &v, b"", immediate, acked, what);
        }
        prev = v;
    };
    let outage = Instant::now() + Duration::from_millis(300);
    let mut writes = 0;
    while Instant::now() < outage {
        writes += 1;
        write_and_check(
            &mut d,
            &format!("outage{writes}"),
            &format!("{victim} lost (and kept out)"),
        );
        thread::sleep(Duration::from_millis(10));
    }
    d.send_cmd(&["CLIENT", "LIST"]);
    let listed = d.read_reply().bulk_str().unwrap();
    assert!(
        !listed.contains(&format!("name={victim} ")),
        "test premise: {victim} should not have come back while Redis took no clients:\n{listed}"
    );
    d.roundtrip(&["CONFIG", "SET", "maxclients", &maxclients], OK);

    // The same until a new connection shows up. (Checked before each
    // write: a connection Redis does not list cannot have been set up.)
    let deadline = Instant::now() + SETTLE;
    let mut writes = 0;
    loop {
        let ids = client_ids_named(redis.port(), victim);
        if ids.iter().any(|&id| id != victim_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new {victim} connection within {SETTLE:?} of killing the old one"
        );
        writes += 1;
        write_and_check(&mut d, &format!("v{writes}"), &format!("{victim} lost"));
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{victim}: {writes} direct writes checked before it came back");

    // Tracking is back: both connections, the data one redirected to the
    // (possibly new) invalidation one; caching works; direct writes reach
    // the cache again.
    let (new_data, new_inv) = tracking_connections(&redis);
    let new_victim = if victim == DATA_NAME {
        new_data
    } else {
        new_inv
    };
    assert_ne!(new_victim, victim_id, "the killed {victim} is still listed");
    wait_caching(&redis, &mut c);
    let key = unique("kill-after");
    redis.set(&key, "old");
    prime(redis.port(), &mut c, std::slice::from_ref(&key));
    let mut d = Conn::connect(redis.port());
    d.roundtrip(&["SET", &key, "new"], OK);
    let acked = Instant::now();
    expect_seen_by(
        &mut c,
        &key,
        &bulk("old"),
        &bulk("new"),
        acked,
        acked + PROPAGATION,
        &format!("direct SET after {victim} came back"),
    );
    if let Some(c3) = c3.as_mut() {
        wait_caching(&redis, c3);
        let key = unique("kill-after3");
        redis.set(&key, "old");
        prime(redis.port(), c3, std::slice::from_ref(&key));
        d.roundtrip(&["SET", &key, "new"], OK);
        let acked = Instant::now();
        expect_seen_by(
            c3,
            &key,
            &bulk("old"),
            &bulk("new"),
            acked,
            acked + PROPAGATION,
            &format!("RESP3: direct SET after {victim} came back"),
        );
    }
}

#[test]
fn killing_the_invalidation_connection_clears_and_recovers() {
    skip_in_direct_mode!();
    recovers_after_killing(INVALIDATION_NAME, false);
}

#[test]
fn killing_the_data_connection_clears_and_recovers() {
    skip_in_direct_mode!();
    recovers_after_killing(DATA_NAME, false);
}

/// Redis pushes `tracking-redir-broken` to the RESP3 data connection for
/// every write to a key it read while the invalidation connection is gone.
#[test]
fn killing_the_invalidation_connection_with_a_resp3_client_recovers() {
    skip_in_direct_mode!();
    recovers_after_killing(INVALIDATION_NAME, true);
}

#[test]
fn killing_the_resp2_data_connection_while_resp3_serves_clears_and_recovers() {
    skip_in_direct_mode!();
    recovers_after_killing(DATA_NAME, true);
}

// ---------------------------------------------------------------------------
// --tracking
// ---------------------------------------------------------------------------

/// A Redis whose CLIENT command is renamed away: it cannot track.
fn redis_without_client_command() -> RedisServer {
    let redis = RedisServer::start_with_args(&["--rename-command", "CLIENT", ""]);
    let r = redis.raw(&["CLIENT", "ID"]);
    assert!(
        r.starts_with(b"-ERR unknown command"),
        "test premise: CLIENT should be gone: {}",
        escape(&r)
    );
    redis
}

/// Prime `key` (holding "old"), change it directly, and check the cache
/// keeps serving "old": caching by TTL only.
#[track_caller]
fn expect_ttl_only(redis: &RedisServer, c: &mut Conn) {
    let key = unique("ttl-only");
    redis.set(&key, "old");
    prime(redis.port(), c, std::slice::from_ref(&key));
    redis.set(&key, "new");
    assert_eq!(
        get(c, &key),
        bulk("old"),
        "without tracking, a direct write should go unnoticed until the TTL"
    );
    // A write through sidecache is seen at once all the same.
    c.roundtrip(&["SET", &key, "mine"], OK);
    assert_eq!(
        get(c, &key),
        bulk("mine"),
        "GET {key} after SET through sidecache"
    );
}

#[test]
fn tracking_off_caches_by_ttl_and_never_subscribes() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--tracking", "off", "--ttl", "60s"]);
    let mut c = proxy.connect();
    wait_caching(&redis, &mut c);
    expect_ttl_only(&redis, &mut c);
    let list = client_list(redis.port());
    let data = list
        .iter()
        .filter(|cl| cl.get("name").map(String::as_str) == Some(DATA_NAME))
        .count();
    assert_eq!(data, 1, "one client named {DATA_NAME}: {list:?}");
    for cl in &list {
        assert_ne!(
            cl.get("name").map(String::as_str),
            Some(INVALIDATION_NAME),
            "--tracking off opened an invalidation connection: {cl:?}"
        );
        assert_eq!(
            cl.get("sub").map(String::as_str),
            Some("0"),
            "a subscriber: {cl:?}"
        );
        assert!(
            !cl.get("flags").is_some_and(|f| f.contains('t')),
            "a client with tracking on: {cl:?}"
        );
    }
}

#[test]
fn tracking_auto_without_client_command_warns_and_caches_by_ttl() {
    skip_in_direct_mode!();
    let redis = redis_without_client_command();
    // auto is the default.
    for extra in [&["--ttl", "60s"][..], &["--ttl", "60s", "--tracking=auto"]] {
        let proxy = Sidecache::start(redis.port(), extra);
        let mut c = proxy.connect();
        wait_caching(&redis, &mut c);
        expect_ttl_only(&redis, &mut c);
        let warned = poll_until(SETTLE, Duration::from_millis(20), || {
            let err = proxy.stderr().to_ascii_lowercase();
            (err.contains("warn") && err.contains("track")).then_some(())
        });
        assert!(
            warned.is_some(),
            "{extra:?}: no warning about tracking on stderr:\n{}",
            proxy.stderr()
        );
    }
}

#[test]
fn tracking_on_refuses_a_redis_that_cannot_track() {
    skip_in_direct_mode!();
    let redis = redis_without_client_command();
    let listen = format!("127.0.0.1:{}", free_port());
    let backend = format!("127.0.0.1:{}", redis.port());
    let t0 = Instant::now();
    let out = run_with_timeout(
        &sidecache_bin(),
        &["--listen", &listen, "--redis", &backend, "--tracking", "on"],
        Duration::from_secs(10),
    );
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "--tracking on against a Redis without CLIENT: {:?}; stderr:\n{stderr}",
        out.status
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "exit 2 is for a bad command line: {stderr}"
    );
    assert!(
        stderr.to_ascii_lowercase().contains("track"),
        "the message should say tracking is unavailable:\n{stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?} to give up");
}

#[test]
fn tracking_on_with_a_redis_that_can_track() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--tracking", "on", "--ttl", "60s"]);
    let mut c = proxy.connect();
    wait_caching(&redis, &mut c);
    tracking_connections(&redis);
    let key = unique("on");
    redis.set(&key, "old");
    prime(redis.port(), &mut c, std::slice::from_ref(&key));
    let mut d = Conn::connect(redis.port());
    d.roundtrip(&["SET", &key, "new"], OK);
    let acked = Instant::now();
    expect_seen_by(
        &mut c,
        &key,
        &bulk("old"),
        &bulk("new"),
        acked,
        acked + PROPAGATION,
        "--tracking on, direct SET",
    );
}

#[test]
fn tracking_bad_mode_exits_2() {
    skip_in_direct_mode!();
    let listen = format!("127.0.0.1:{}", free_port());
    let backend = format!("127.0.0.1:{}", free_port());
    let out = run_with_timeout(
        &sidecache_bin(),
        &[
            "--listen",
            &listen,
            "--redis",
            &backend,
            "--tracking",
            "bogus",
        ],
        Duration::from_secs(5),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--tracking bogus: {:?}; {stderr}",
        out.status
    );
    assert!(
        stderr.contains("tracking") || stderr.contains("bogus"),
        "the message should name the flag or value: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// No stale fill
// ---------------------------------------------------------------------------

/// Waits until `pid` has unread bytes on at least `n` of its connections to `port`.
#[track_caller]
fn wait_pending_on_connections(pid: u32, port: u16, n: usize, what: &str) {
    let ok = poll_until(SETTLE, Duration::from_millis(2), || {
        (unread_bytes_of_pid_to(pid, port)
            .iter()
            .filter(|&&b| b > 0)
            .count()
            >= n)
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: expected unread bytes on {n} of sidecache's connections to Redis, have {:?}",
        unread_bytes_of_pid_to(pid, port)
    );
}

/// Waits until what `d` sent sits unread in the server's socket.
#[track_caller]
fn wait_unread_at_server(d: &Conn) {
    let ok = poll_until(SETTLE, Duration::from_millis(2), || {
        (d.unread_at_server() > 0).then_some(())
    });
    assert!(ok.is_some(), "the direct SET never reached Redis's socket");
}

/// Reads `n` bytes straight from `c`'s socket (none of them may be
/// buffered in `c` already) and drops them, all but the first `keep`,
/// which it returns.
#[track_caller]
fn discard(c: &Conn, mut n: usize, keep: usize, what: &str) -> Vec<u8> {
    use std::io::Read;
    let mut s = c.stream();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while n > 0 {
        let want = n.min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => panic!("{what}: EOF with {n} bytes of the reply to come"),
            Ok(got) => {
                let room = keep.saturating_sub(kept.len()).min(got);
                kept.extend_from_slice(&buf[..room]);
                n -= got;
            }
            Err(e) => panic!("{what}: {e} with {n} bytes of the reply to come"),
        }
    }
    kept
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Interleaving {
    /// Redis runs the GET and the SET in one go and writes the
    /// invalidation before the GET reply; sidecache, stopped meanwhile,
    /// finds both waiting.
    Together,
    /// The GET reply already waits in sidecache's socket when the SET runs
    /// (sidecache stopped); then the invalidation joins it.
    ReplyFirst,
    /// The GET reply queues in Redis behind a large reply to another
    /// client, so the invalidation reaches sidecache long before it.
    InvalidationFirst,
}

/// Redis's output still owed to sidecache's data connection (bytes in its
/// output buffer, or blocks in its reply list).
fn data_output_held_by_redis(redis: &RedisServer) -> bool {
    client_list(redis.port())
        .iter()
        .filter(|c| c.get("name").map(String::as_str) == Some(DATA_NAME))
        .any(|c| {
            let n = |f: &str| c.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            n("obl") > 0 || n("oll") > 0
        })
}

/// Redis runs a GET of `k` for sidecache (reply "old"), then a direct
/// `SET k new`; sidecache gets the stale GET reply and the invalidation in
/// either order, or together. Then a GET of `k` must return "new": the
/// stale reply was not stored.
#[test]
fn a_get_reply_from_before_a_write_is_never_stored() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--ttl", "60s"]);
    let mut c = proxy.connect();
    let mut c2 = proxy.connect();
    wait_caching(&redis, &mut c);
    // Far more than the socket buffers between Redis and a sidecache that
    // is not reading take (a few hundred KB to a few MB); checked below.
    const BIG: usize = 16 << 20;
    let big = unique("big");
    redis.set(&big, vec![b'x'; BIG]);
    let getrange = cmd(&["GETRANGE", &big, "0", "-1"]);
    let big_reply_len = format!("${BIG}\r\n").len() + BIG + 2;
    let orders = [
        Interleaving::Together,
        Interleaving::ReplyFirst,
        Interleaving::InvalidationFirst,
    ];

    for round in 0..20 {
        let order = orders[round % orders.len()];
        let what = format!("round {round} ({order:?})");
        let key = unique("fill");
        redis.set(&key, "old");
        // A fresh connection that has sent nothing, so that Redis cannot
        // have it lined up to read before sidecache's connection.
        let mut d = Conn::connect(redis.port());

        redis.pause();
        wait_process_stopped(redis.pid());
        let mut queued = 0;
        if order == Interleaving::InvalidationFirst {
            c2.send(&getrange);
            queued += getrange.len() as u64;
            wait_unread_bytes_at(redis.port(), queued);
        }
        let get_k = cmd(&["GET", &key]);
        c.send(&get_k);
        queued += get_k.len() as u64;
        wait_unread_bytes_at(redis.port(), queued);
        if order == Interleaving::Together {
            d.send_cmd(&["SET", &key, "new"]);
            wait_unread_at_server(&d);
        }
        proxy.signal("STOP");
        wait_process_stopped(proxy.pid());
        redis.resume();
        match order {
            Interleaving::Together => {}
            Interleaving::ReplyFirst => {
                // The GET (and PTTL) replies wait in sidecache's socket.
                let want = (bulk("old").len() + int(-1).len()) as u64;
                let arrived = poll_until(SETTLE, Duration::from_millis(2), || {
                    let q = unread_bytes_of_pid_to(proxy.pid(), redis.port());
                    q.iter().any(|&n| n >= want).then_some(())
                });
                assert!(
                    arrived.is_some(),
                    "{what}: the GET reply never reached sidecache's socket"
                );
                d.send_cmd(&["SET", &key, "new"]);
            }
            Interleaving::InvalidationFirst => {
                // Redis has run the GET once it has read it; its reply is
                // queued behind the big one, which sidecache is not reading.
                let ran = poll_until(SETTLE, Duration::from_millis(2), || {
                    (unread_bytes_at(redis.port()) == 0).then_some(())
                });
                assert!(ran.is_some(), "{what}: Redis never read the GET");
                assert!(
                    data_output_held_by_redis(&redis),
                    "{what}: test premise: Redis should still hold the end of the big reply (and the GET reply behind it)"
                );
                d.send_cmd(&["SET", &key, "new"]);
            }
        }
        d.expect(OK);
        // Sidecache's data connection holds the GET reply (or the start of
        // the big one), its invalidation connection the invalidation.
        wait_pending_on_connections(proxy.pid(), redis.port(), 2, &what);
        proxy.signal("CONT");

        if order == Interleaving::InvalidationFirst {
            let head = format!("${BIG}\r\n");
            let r = discard(&c2, big_reply_len, head.len(), &what);
            assert_eq!(r, head.as_bytes(), "{what}: GETRANGE");
        }
        let first = c.read_reply_raw();
        assert_eq!(
            first,
            bulk("old"),
            "{what}: test premise: GET ran before the SET"
        );
        let next = get(&mut c, &key);
        assert_eq!(
            next,
            bulk("new"),
            "{what}: GET {key} after the direct SET was acknowledged returned the reply from before it: a stale fill"
        );
        // The cache is serving (so a stale fill would have shown).
        prime(redis.port(), &mut c, std::slice::from_ref(&key));
    }
}
