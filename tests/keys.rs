//! The write-key resolver against a real Redis: the table is built from the
//! server's own `COMMAND` reply, and for every request of a corpus the keys
//! `CommandTable::writes` reports must be exactly the keys Redis's own
//! `COMMAND GETKEYSANDFLAGS` flags `RW`, `OW` or `RM`, except where the
//! corpus documents a deliberate difference (`Everything` or a superset).

mod common;

use common::RedisServer;
use sidecache::keys::{CommandTable, Writes};
use sidecache::resp::{self, parse_value, ReplyFramer, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// A raw RESP connection to Redis that reads replies with sidecache's own framer.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    framer: ReplyFramer,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .unwrap_or_else(|e| panic!("connect to redis on {port}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            framer: ReplyFramer::default(),
        }
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut out = Vec::new();
        resp::command(&mut out, args);
        self.stream.write_all(&out).unwrap();
    }

    fn read(&mut self) -> Value {
        loop {
            if let Some(len) = self.framer.frame(&self.buf).expect("reply frames") {
                let value = parse_value(&self.buf[..len]).expect("reply decodes");
                self.buf.drain(..len);
                return value;
            }
            let mut tmp = [0u8; 64 * 1024];
            let n = self.stream.read(&mut tmp).expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Sends all requests first, then reads all replies.
    fn pipeline(&mut self, requests: &[Vec<Vec<u8>>]) -> Vec<Value> {
        for chunk in requests.chunks(256) {
            for r in chunk {
                let args: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
                self.send(&args);
            }
        }
        requests.iter().map(|_| self.read()).collect()
    }
}

fn table_from(redis: &RedisServer) -> (CommandTable, Value) {
    let mut c = Raw::connect(redis.port());
    c.send(&[b"COMMAND"]);
    let reply = c.read();
    let table = CommandTable::from_command_reply(&reply).expect("table from COMMAND");
    (table, reply)
}

/// What Redis's GETKEYSANDFLAGS said about one request.
#[derive(Debug)]
enum Redis {
    /// The keys it names, and which of them it flags RW/OW/RM.
    Keys {
        all: BTreeSet<Vec<u8>>,
        written: BTreeSet<Vec<u8>>,
    },
    /// An error: the request has no keys, or cannot be asked about.
    Error(String),
}

impl Redis {
    fn written(&self) -> BTreeSet<Vec<u8>> {
        match self {
            Redis::Keys { written, .. } => written.clone(),
            Redis::Error(_) => BTreeSet::new(),
        }
    }
}

fn getkeysandflags_request(args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut r = vec![b"COMMAND".to_vec(), b"GETKEYSANDFLAGS".to_vec()];
    r.extend(args.iter().cloned());
    r
}

fn decode_getkeys(reply: Value) -> Redis {
    match reply {
        Value::Error(e) => Redis::Error(String::from_utf8_lossy(&e).into_owned()),
        Value::Array(items) => {
            let mut all = BTreeSet::new();
            let mut written = BTreeSet::new();
            for item in items {
                let pair = item.as_array().expect("[key, flags]");
                let key = pair[0].as_bytes().expect("key").to_vec();
                let flags = pair[1].as_array().expect("flags");
                let writes = flags
                    .iter()
                    .any(|f| matches!(f.as_bytes(), Some(b"RW") | Some(b"OW") | Some(b"RM")));
                if writes {
                    written.insert(key.clone());
                }
                all.insert(key);
            }
            Redis::Keys { all, written }
        }
        other => panic!("unexpected GETKEYSANDFLAGS reply {other:?}"),
    }
}

/// Our answer: the verdict and the written keys' bytes (positions mapped back).
fn ours(table: &CommandTable, args: &[Vec<u8>]) -> (Writes, BTreeSet<Vec<u8>>) {
    let mut keys = BTreeSet::new();
    let w = table.writes(
        args.len(),
        |i| args[i].as_slice(),
        |p| {
            assert!(p >= 1 && p < args.len(), "position {p} out of range");
            keys.insert(args[p].clone());
        },
    );
    match w {
        Writes::Keys => assert!(!keys.is_empty(), "Keys without a key"),
        _ => assert!(keys.is_empty(), "on_key called for {w:?}"),
    }
    (w, keys)
}

/// What the corpus expects of each request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Exactly Redis's RW/OW/RM keys: `Keys` if there are any, else `Nothing`.
    Match,
    /// `Everything`, the documented safe choice: the request writes keys no
    /// spec names (or the specs cannot resolve them).
    Everything,
    /// `Keys`, a strict superset of Redis's written keys (documented over-report).
    Superset,
}

use Expect::*;

/// The corpus. Arguments are separated by single spaces; each request names
/// its keys distinctly so reported positions map back unambiguously.
const CORPUS: &[(&str, Expect)] = &[
    // Strings.
    ("SET s1 v", Match),
    ("SET s2 v GET", Match),
    ("set s3 v EX 10 NX", Match),
    ("SETEX s4 10 v", Match),
    ("PSETEX s5 1000 v", Match),
    ("SETNX s6 v", Match),
    ("GETSET s7 v", Match),
    ("GETDEL s8", Match),
    ("GETEX s9 EX 10", Match),
    ("GETEX s10", Match),
    ("APPEND s11 v", Match),
    ("SETRANGE s12 0 v", Match),
    ("INCR n1", Match),
    ("DECR n2", Match),
    ("INCRBY n3 5", Match),
    ("DECRBY n4 5", Match),
    ("INCRBYFLOAT n5 1.5", Match),
    ("MSET m1 1 m2 2 m3 3", Match),
    ("MSETNX x1 1 x2 2", Match),
    // Keyspace.
    ("DEL d1 d2 d3", Match),
    ("UNLINK u1 u2", Match),
    ("EXPIRE e1 10", Match),
    ("PEXPIRE e2 1000", Match),
    ("EXPIREAT e3 2000000000", Match),
    ("PEXPIREAT e4 2000000000000", Match),
    ("PERSIST e5", Match),
    ("RENAME r1 r2", Match),
    ("RENAMENX r3 r4", Match),
    ("COPY c1 c2", Match),
    ("COPY c3 c4 DB 0 REPLACE", Match),
    ("MOVE mv1 1", Match),
    ("RESTORE rs1 0 payload", Match),
    // Lists.
    ("LPUSH l1 a b", Match),
    ("RPUSH l2 a", Match),
    ("LPOP l3", Match),
    ("LPOP l4 2", Match),
    ("RPOP l5", Match),
    ("LMOVE l6 l7 LEFT RIGHT", Match),
    ("RPOPLPUSH l8 l9", Match),
    ("LSET l10 0 v", Match),
    ("LINSERT l11 BEFORE a b", Match),
    ("LREM l12 0 a", Match),
    ("LTRIM l13 0 1", Match),
    ("BLPOP bl1 bl2 0", Match),
    ("BLMOVE l14 l15 LEFT LEFT 0", Match),
    ("LMPOP 2 lm1 lm2 LEFT", Match),
    // Sets.
    ("SADD st1 a b", Match),
    ("SREM st2 a", Match),
    ("SPOP st3", Match),
    ("SMOVE st4 st5 m", Match),
    ("SINTERSTORE sd1 sa1 sa2", Match),
    ("SUNIONSTORE sd2 sa3", Match),
    ("SDIFFSTORE sd3 sa4 sa5", Match),
    // Sorted sets.
    ("ZADD z1 1 a", Match),
    ("ZINCRBY z2 1 a", Match),
    ("ZREM z3 a", Match),
    ("ZPOPMIN z4", Match),
    ("ZUNIONSTORE zd1 2 za1 za2 WEIGHTS 1 2", Match),
    ("ZINTERSTORE zd2 1 za3", Match),
    ("ZDIFFSTORE zd3 2 za4 za5", Match),
    ("ZRANGESTORE zd4 zsrc 0 -1", Match),
    ("ZREMRANGEBYSCORE z5 0 1", Match),
    ("ZMPOP 1 zm1 MIN", Match),
    ("BZPOPMIN bz1 0", Match),
    // Hashes.
    ("HSET h1 f v", Match),
    ("HSETNX h2 f v", Match),
    ("HDEL h3 f", Match),
    ("HINCRBY h4 f 1", Match),
    ("HINCRBYFLOAT h5 f 1.5", Match),
    ("HMSET h6 f v", Match),
    // Streams.
    ("XADD xa1 * f v", Match),
    ("XADD xa2 MAXLEN 10 * f v", Match),
    ("XTRIM xa3 MAXLEN 10", Match),
    ("XDEL xa4 1-1", Match),
    ("XGROUP CREATE xs1 g $ MKSTREAM", Match),
    ("xgroup create xs2 g $", Match),
    ("XGROUP DESTROY xs3 g", Match),
    ("XGROUP SETID xs4 g $", Match),
    ("XGROUP CREATECONSUMER xs5 g c", Match),
    ("XACK xs6 g 1-1", Match),
    ("XCLAIM xs7 g c 0 1-1", Match),
    ("XAUTOCLAIM xs8 g c 0 0", Match),
    // XREADGROUP has the write flag but only read-only specs (it changes
    // its streams' consumer groups): its streams count as written.
    ("XREADGROUP GROUP g c STREAMS xr1 xr2 > >", Superset),
    // HyperLogLog (PFCOUNT is readonly, but its spec is RW: it may rewrite
    // the cached cardinality).
    ("PFADD hl1 a", Match),
    ("PFMERGE hl2 hl3 hl4", Match),
    ("PFCOUNT hl5 hl6", Match),
    // Bitmaps. BITFIELD's spec is RW with VARIABLE_FLAGS: Redis narrows it
    // to RO for a GET-only request, the table cannot.
    ("SETBIT b1 0 1", Match),
    ("BITOP AND bd1 bs1 bs2", Match),
    ("BITFIELD bf1 SET u8 0 1", Match),
    ("BITFIELD bf2 GET u8 0", Superset),
    // Geo.
    ("GEOADD g1 0 0 m", Match),
    ("GEORADIUS g2 0 0 1 km STORE gd1", Match),
    ("GEORADIUS g3 0 0 1 km", Match),
    ("GEORADIUSBYMEMBER g4 m 1 km STOREDIST gd2", Match),
    ("GEOSEARCHSTORE gd3 g5 FROMLONLAT 0 0 BYRADIUS 1 km", Match),
    // SORT: the STORE destination only.
    ("SORT so1", Match),
    ("SORT so2 BY w_* GET # LIMIT 0 10 ALPHA", Match),
    ("SORT so3 BY w_* GET # LIMIT 0 10 STORE sod1", Match),
    ("SORT_RO so4", Match),
    // Scripts and functions: the declared keys (specs say RW).
    ("EVAL redis.call('set',KEYS[1],ARGV[1]) 2 ev1 ev2 a1", Match),
    (
        "EVALSHA 0123456789abcdef0123456789abcdef01234567 1 ev3",
        Match,
    ),
    ("FCALL fn 1 fc1 a", Match),
    ("EVAL_RO return 1 ev4", Match),
    ("FCALL_RO fn 1 fc2", Match),
    // No declared key: Redis's keynum spec is invalid; the script may write
    // anything it likes.
    ("EVAL return 0", Everything),
    ("FCALL fn 0 a", Everything),
    // Writes no spec can name.
    ("FLUSHDB", Everything),
    ("FLUSHALL", Everything),
    ("FLUSHALL ASYNC", Everything),
    ("SWAPDB 0 1", Everything),
    ("FUNCTION LOAD code", Everything),
    ("FUNCTION FLUSH", Everything),
    ("FUNCTION DELETE lib", Everything),
    ("FUNCTION RESTORE payload", Everything),
    // MIGRATE's KEYS spec is INCOMPLETE.
    ("MIGRATE host 6379 mg1 0 5000", Everything),
    ("MIGRATE host 6379 \"\" 0 5000 KEYS mg2 mg3", Everything),
    // Not a command (a module loaded later, say).
    ("NOSUCHCOMMAND k", Everything),
    // Reads and commands that touch no data.
    ("GET rd1", Match),
    ("MGET rd2 rd3", Match),
    ("STRLEN rd4", Match),
    ("GETRANGE rd5 0 1", Match),
    ("EXISTS rd6 rd7", Match),
    ("TOUCH rd8", Match),
    ("TYPE rd9", Match),
    ("TTL rd10", Match),
    ("PTTL rd11", Match),
    ("DUMP rd12", Match),
    ("LRANGE rd13 0 -1", Match),
    ("LLEN rd14", Match),
    ("SMEMBERS rd15", Match),
    ("SINTERCARD 2 rd16 rd17", Match),
    ("ZRANGE rd18 0 -1", Match),
    ("ZUNION 2 rd19 rd20", Match),
    ("HGETALL rd21", Match),
    ("HGET rd22 f", Match),
    ("XRANGE rd23 - +", Match),
    ("XREAD COUNT 1 STREAMS rd24 0", Match),
    ("BITCOUNT rd25", Match),
    ("LCS rd26 rd27", Match),
    ("OBJECT ENCODING rd28", Match),
    ("object freq rd29", Match),
    ("XINFO STREAM rd30", Match),
    ("SCAN 0", Match),
    ("KEYS *", Match),
    ("DBSIZE", Match),
    ("INFO", Match),
    ("INFO keyspace", Match),
    ("PING", Match),
    ("ECHO hi", Match),
    ("PUBLISH ch msg", Match),
    ("SPUBLISH ch msg", Match),
    ("CONFIG GET maxmemory", Match),
    ("CLIENT LIST", Match),
    ("XGROUP HELP", Match),
    // An unknown subcommand of a container: Redis answers an error.
    ("XGROUP NOSUCH k", Match),
];

/// The GETKEYSANDFLAGS errors that mean "no keys here".
fn keyless_error(e: &str) -> bool {
    e.contains("The command has no key arguments")
        || e.contains("Invalid arguments specified for command")
        || e.contains("Invalid command specified")
        // A one-word request cannot be asked about at all (arity -4).
        || e.contains("wrong number of arguments for 'command|getkeysandflags'")
}

fn split(cmd: &str) -> Vec<Vec<u8>> {
    cmd.split(' ').map(|a| a.as_bytes().to_vec()).collect()
}

fn show(keys: &BTreeSet<Vec<u8>>) -> String {
    let names: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    format!("{{{}}}", names.join(", "))
}

#[test]
fn writes_match_redis_getkeysandflags() {
    let redis = RedisServer::start();
    let (table, _) = table_from(&redis);
    assert!(
        table.len() > 200,
        "only {} commands in the table",
        table.len()
    );

    let requests: Vec<Vec<Vec<u8>>> = CORPUS
        .iter()
        .map(|(cmd, _)| getkeysandflags_request(&split(cmd)))
        .collect();
    let replies = Raw::connect(redis.port()).pipeline(&requests);

    let mut failures = Vec::new();
    let mut counts = [0usize; 3]; // Nothing, Keys, Everything
    for ((cmd, expect), reply) in CORPUS.iter().zip(replies) {
        let args = split(cmd);
        let redis_says = decode_getkeys(reply);
        if let Redis::Error(e) = &redis_says {
            assert!(keyless_error(e), "{cmd}: corpus bug? Redis says: {e}");
        }
        let want = redis_says.written();
        let (got, keys) = ours(&table, &args);
        counts[match got {
            Writes::Nothing => 0,
            Writes::Keys => 1,
            Writes::Everything => 2,
        }] += 1;
        let ok = match expect {
            Match if want.is_empty() => got == Writes::Nothing,
            Match => got == Writes::Keys && keys == want,
            Everything => got == Writes::Everything,
            Superset => got == Writes::Keys && keys.is_superset(&want) && keys != want,
        };
        if !ok {
            let redis_keys = match &redis_says {
                Redis::Keys { all, .. } => format!("of {}", show(all)),
                Redis::Error(e) => format!("(GETKEYSANDFLAGS: {e})"),
            };
            failures.push(format!(
                "{cmd}: expected {expect:?}; Redis writes {} {redis_keys}; we say {got:?} {}",
                show(&want),
                show(&keys)
            ));
        }
    }
    assert!(CORPUS.len() >= 80);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "keys: {} commands checked against COMMAND GETKEYSANDFLAGS ({} Nothing, {} Keys, {} Everything; {} commands in the table)",
        CORPUS.len(),
        counts[0],
        counts[1],
        counts[2],
        table.len()
    );
}

/// Every command and subcommand Redis knows, with generic arguments of
/// several lengths: the resolver must never miss a key Redis says is
/// written, a `write` command Redis says has no key must be `Everything`,
/// and nothing may panic.
#[test]
fn never_misses_a_written_key() {
    let redis = RedisServer::start();
    let (table, reply) = table_from(&redis);

    // (name words, has the write flag)
    let mut commands: Vec<(Vec<Vec<u8>>, bool)> = Vec::new();
    let is_write = |entry: &[Value]| {
        entry
            .get(2)
            .and_then(Value::as_array)
            .is_some_and(|flags| flags.iter().any(|f| f.as_bytes() == Some(b"write")))
    };
    for entry in reply.as_array().unwrap() {
        let entry = entry.as_array().unwrap();
        let name = entry[0].as_bytes().unwrap().to_vec();
        let subs = entry.get(9).and_then(Value::as_array).unwrap_or_default();
        if subs.is_empty() {
            commands.push((vec![name.clone()], is_write(entry)));
        }
        for sub in subs {
            let sub = sub.as_array().unwrap();
            let full = sub[0].as_bytes().unwrap();
            let bar = full.iter().position(|&b| b == b'|').unwrap();
            commands.push((vec![name.clone(), full[bar + 1..].to_vec()], is_write(sub)));
        }
    }
    assert!(commands.len() > 300, "{} commands", commands.len());

    // Distinct arguments so key names map back to positions; a "1" in one
    // of the first places so keynum specs find a count.
    let mut cases: Vec<(Vec<Vec<u8>>, bool)> = Vec::new();
    for (name, write) in &commands {
        for extra in 0..=7usize {
            for one_at in [None, Some(0), Some(1)] {
                if one_at.is_some_and(|i| i >= extra) {
                    continue;
                }
                let mut args = name.clone();
                args.extend((0..extra).map(|i| {
                    if Some(i) == one_at {
                        b"1".to_vec()
                    } else {
                        format!("a{i}").into_bytes()
                    }
                }));
                cases.push((args, *write));
            }
        }
    }
    let requests: Vec<_> = cases
        .iter()
        .map(|(args, _)| getkeysandflags_request(args))
        .collect();
    let replies = Raw::connect(redis.port()).pipeline(&requests);

    let (mut compared, mut exact, mut over, mut everything) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for ((args, write), reply) in cases.iter().zip(replies) {
        let redis_says = decode_getkeys(reply);
        let (got, keys) = ours(&table, args);
        let shown = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        match &redis_says {
            Redis::Keys { all, written } => {
                compared += 1;
                match got {
                    Writes::Everything => everything += 1,
                    _ if keys == *written => exact += 1,
                    _ if keys.is_superset(written) && keys.is_subset(all) => over += 1,
                    _ => failures.push(format!(
                        "{shown}: Redis writes {} of {}, we say {got:?} {}",
                        show(written),
                        show(all),
                        show(&keys)
                    )),
                }
            }
            Redis::Error(e) if e.contains("The command has no key arguments") && *write => {
                if got != Writes::Everything {
                    failures.push(format!(
                        "{shown}: a keyless write command, we say {got:?} {}",
                        show(&keys)
                    ));
                }
            }
            Redis::Error(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "keys sweep: {} requests over {} commands; {} with keys per Redis: {} exact, {} over-reported, {} Everything",
        cases.len(),
        commands.len(),
        compared,
        exact,
        over,
        everything
    );
}
