//! RESP3 clients, checked against Redis itself.
//!
//! - A differential corpus: every command runs once directly against Redis
//!   and once through sidecache, as a RESP2 client and as a RESP3 client
//!   (`HELLO 3` first), on the same keyspace each time; the reply bytes must
//!   be identical.
//! - A pipeline that switches protocol half way, and the HELLO variants,
//!   against what Redis answers for the same requests.
//! - Read-your-writes and coherence across a RESP2 and a RESP3 client of the
//!   same sidecache, with a direct client writing underneath.
//!
//! Replies are framed with sidecache's own [`ReplyFramer`], which knows every
//! RESP3 type; the harness's `Conn` reads RESP2 only.

#[macro_use]
mod common;

use common::*;
use sidecache::resp::{split_inline, ReplyFramer};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How long a write by someone else may take to reach the cache.
const PROPAGATION: Duration = Duration::from_millis(100);
/// How long sidecache may take to start caching (tracking set up).
const SETTLE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A raw client that reads RESP2 and RESP3 replies
// ---------------------------------------------------------------------------

/// A raw TCP client whose replies are framed by [`ReplyFramer`], so it reads
/// RESP2 and RESP3 alike and hands back each reply's exact bytes.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    framer: ReplyFramer,
    port: u16,
}

impl Raw {
    #[track_caller]
    fn connect(port: u16) -> Raw {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            framer: ReplyFramer::default(),
            port,
        }
    }

    /// Connects and says `HELLO 3`; the reply must be a RESP3 map saying proto 3.
    #[track_caller]
    fn connect3(port: u16) -> Raw {
        let mut c = Raw::connect(port);
        let hello = c.call(&["HELLO", "3"]);
        let tree = parse_tree(&hello);
        assert!(
            matches!(&tree, Tree::Agg(b'%', Some(_))) && map_get(&tree, "proto") == Some(&int3()),
            "HELLO 3 on port {port} did not answer a RESP3 map with proto 3: {}",
            escape(&hello)
        );
        c
    }

    #[track_caller]
    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("send to port {}: {e}", self.port);
        }
    }

    /// Reads one complete reply (any RESP2 or RESP3 type) and returns its bytes.
    #[track_caller]
    fn read_reply(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            match self.framer.frame(&self.buf) {
                Ok(Some(n)) => return self.buf.drain(..n).collect(),
                Ok(None) => {}
                Err(e) => panic!(
                    "unframeable reply on port {} ({e}): {}",
                    self.port,
                    escape(&self.buf)
                ),
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no complete reply within {READ_TIMEOUT:?} on port {}; have {}",
                self.port,
                escape(&self.buf)
            );
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let mut tmp = [0u8; 64 * 1024];
            match self.stream.read(&mut tmp) {
                Ok(0) => panic!(
                    "port {} closed the connection; have {}",
                    self.port,
                    escape(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read from port {}: {e}", self.port),
            }
        }
    }

    /// Sends one request and reads its reply.
    #[track_caller]
    fn call(&mut self, args: &[&str]) -> Vec<u8> {
        self.send(&cmd(args));
        self.read_reply()
    }

    #[track_caller]
    fn call_bytes(&mut self, args: &[Vec<u8>]) -> Vec<u8> {
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        self.send(&cmd_bytes(&refs));
        self.read_reply()
    }

    /// Sends one request; the reply must be exactly `want`.
    #[track_caller]
    fn roundtrip(&mut self, args: &[&str], want: &[u8]) {
        let got = self.call(args);
        assert_eq!(
            got,
            want,
            "`{}` on port {}: expected {}, got {}",
            args.join(" "),
            self.port,
            escape(want),
            escape(&got)
        );
    }
}

// ---------------------------------------------------------------------------
// A reply as a tree: for structural comparisons (HELLO) and nothing else
// ---------------------------------------------------------------------------

/// One reply, keeping its exact type bytes. A map or attribute keeps its
/// 2n elements flat.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    /// `+ - : _ # , (`: the type byte and the line.
    Line(u8, Vec<u8>),
    /// `$ = !`: the type byte and the body (`None` for `$-1`).
    Blob(u8, Option<Vec<u8>>),
    /// `* ~ > % |`: the type byte and the elements (`None` for `*-1`).
    Agg(u8, Option<Vec<Tree>>),
}

fn int3() -> Tree {
    Tree::Line(b':', b"3".to_vec())
}

/// Parses one complete reply (as framed by [`ReplyFramer`]).
fn parse_tree(bytes: &[u8]) -> Tree {
    fn at(b: &[u8], pos: &mut usize) -> Tree {
        let kind = b[*pos];
        let rel = b[*pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("framed reply has a CRLF");
        let line = b[*pos + 1..*pos + rel].to_vec();
        *pos += rel + 2;
        let len = || -> i64 { std::str::from_utf8(&line).unwrap().parse().unwrap() };
        match kind {
            b'$' | b'=' | b'!' => {
                let n = len();
                if n < 0 {
                    return Tree::Blob(kind, None);
                }
                let body = b[*pos..*pos + n as usize].to_vec();
                *pos += n as usize + 2;
                Tree::Blob(kind, Some(body))
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = len();
                if n < 0 {
                    return Tree::Agg(kind, None);
                }
                let count = if matches!(kind, b'%' | b'|') {
                    2 * n
                } else {
                    n
                };
                let items = (0..count).map(|_| at(b, pos)).collect();
                Tree::Agg(kind, Some(items))
            }
            _ => Tree::Line(kind, line),
        }
    }
    let mut pos = 0;
    let t = at(bytes, &mut pos);
    assert_eq!(pos, bytes.len(), "trailing bytes after {}", escape(bytes));
    t
}

/// Adds the type byte of `t` and of everything inside it to `out`.
fn collect_types(t: &Tree, out: &mut std::collections::BTreeSet<u8>) {
    match t {
        Tree::Line(k, _) | Tree::Blob(k, _) | Tree::Agg(k, None) => {
            out.insert(*k);
        }
        Tree::Agg(k, Some(items)) => {
            out.insert(*k);
            for i in items {
                collect_types(i, out);
            }
        }
    }
}

fn encode_tree(t: &Tree, out: &mut Vec<u8>) {
    match t {
        Tree::Line(k, l) => {
            out.push(*k);
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        Tree::Blob(k, None) => {
            out.push(*k);
            out.extend_from_slice(b"-1\r\n");
        }
        Tree::Blob(k, Some(body)) => {
            out.push(*k);
            out.extend_from_slice(format!("{}\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        Tree::Agg(k, None) => {
            out.push(*k);
            out.extend_from_slice(b"-1\r\n");
        }
        Tree::Agg(k, Some(items)) => {
            let n = if matches!(k, b'%' | b'|') {
                items.len() / 2
            } else {
                items.len()
            };
            out.push(*k);
            out.extend_from_slice(format!("{n}\r\n").as_bytes());
            for i in items {
                encode_tree(i, out);
            }
        }
    }
}

/// The value after the bulk key `key` in a map (RESP3) or flat key/value
/// array (RESP2).
fn map_get<'a>(t: &'a Tree, key: &str) -> Option<&'a Tree> {
    let Tree::Agg(b'%' | b'*', Some(items)) = t else {
        return None;
    };
    items
        .chunks(2)
        .find(|kv| kv[0] == Tree::Blob(b'$', Some(key.as_bytes().to_vec())))
        .and_then(|kv| kv.get(1))
}

/// A HELLO reply with the values that legitimately differ between Redis and
/// sidecache (`id`: sidecache's own client ids; `version`) replaced by
/// placeholders of the same type. Any other reply is returned unchanged.
fn mask_hello(reply: &[u8]) -> Vec<u8> {
    let mut t = parse_tree(reply);
    if let Tree::Agg(b'%' | b'*', Some(items)) = &mut t {
        let is_hello = items.len() == 14 && items[0] == Tree::Blob(b'$', Some(b"server".to_vec()));
        if is_hello {
            for kv in items.chunks_mut(2) {
                let [Tree::Blob(b'$', Some(k)), v] = kv else {
                    continue;
                };
                match (&k[..], v) {
                    (b"id", Tree::Line(b':', v)) => *v = b"<id>".to_vec(),
                    (b"version", Tree::Blob(b'$', Some(v))) => *v = b"<version>".to_vec(),
                    _ => {}
                }
            }
        }
    }
    let mut out = Vec::new();
    encode_tree(&t, &mut out);
    out
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// Parses an inline command line as Redis would.
fn inline(line: &str) -> Vec<Vec<u8>> {
    split_inline(line.as_bytes()).unwrap_or_else(|e| panic!("bad corpus line {line:?}: {e:?}"))
}

fn show(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| {
            let s = String::from_utf8_lossy(a);
            if a.len() > 60 || a.iter().any(|b| !(0x20..0x7f).contains(b)) {
                format!("{:?}", s.chars().take(60).collect::<String>())
            } else if s.contains(' ') || s.is_empty() {
                format!("{s:?}")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Empties Redis (keys, scripts, functions) and runs `setup` directly; every
/// setup command must succeed.
#[track_caller]
fn reset(redis: &RedisServer, setup: &[Vec<Vec<u8>>]) {
    let mut d = Raw::connect(redis.port());
    for c in [
        &["FLUSHALL"][..],
        &["SCRIPT", "FLUSH"],
        &["FUNCTION", "FLUSH"],
    ] {
        d.roundtrip(c, OK);
    }
    for c in setup {
        let r = d.call_bytes(c);
        assert!(
            !r.starts_with(b"-"),
            "setup `{}` failed: {}",
            show(c),
            escape(&r)
        );
    }
}

/// Waits until sidecache caches GETs sent on `c` (of two GETs of one key, at
/// most one reaches Redis). A RESP3 client's GETs go over sidecache's RESP3
/// data connection, which has its own tracking to set up.
#[track_caller]
fn wait_caching(redis: &RedisServer, c: &mut Raw) {
    let key = unique("resp3:probe");
    redis.set(&key, "probe");
    let mut last = String::new();
    let ok = poll_until(SETTLE, Duration::from_millis(20), || {
        let before = redis_get_calls(redis.port());
        let r1 = c.call(&["GET", &key]);
        let r2 = c.call(&["GET", &key]);
        if r1 == BACKEND_UNAVAILABLE || r2 == BACKEND_UNAVAILABLE {
            last = "backend unavailable".into();
            return None;
        }
        assert_eq!(r1, bulk("probe"), "probe GET: {}", escape(&r1));
        assert_eq!(r2, bulk("probe"), "probe GET: {}", escape(&r2));
        let reached = redis_get_calls(redis.port()) - before;
        last = format!("{reached} of 2 GETs reached Redis");
        (reached <= 1).then_some(())
    });
    assert!(
        ok.is_some(),
        "sidecache did not cache within {SETTLE:?}: {last}"
    );
    let mut d = Raw::connect(redis.port());
    d.roundtrip(&["DEL", &key], &int(1));
}

/// GETs `key` through `c` until the reply is `new`; every reply before must
/// be `old`, and a GET that starts later than [`PROPAGATION`] after `since`
/// must return `new`. Returns how long after `since` `new` was first seen.
#[track_caller]
fn expect_seen(
    c: &mut Raw,
    key: &str,
    old: &[u8],
    new: &[u8],
    since: Instant,
    what: &str,
) -> Duration {
    loop {
        let started = Instant::now();
        let r = c.call(&["GET", key]);
        if r == new {
            return started.saturating_duration_since(since);
        }
        assert_eq!(
            r,
            old,
            "{what}: GET {key} returned neither the old value {} nor the new one {}: {}",
            escape(old),
            escape(new),
            escape(&r)
        );
        assert!(
            started < since + PROPAGATION,
            "{what}: GET {key} started {:?} after the direct write was acknowledged still returned the old value {} (wanted {} within {PROPAGATION:?})",
            started - since,
            escape(old),
            escape(new)
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// How many GETs [`until_cached`] may see reach Redis before one is served
/// from the cache.
const FILL_ATTEMPTS: u32 = 3;

/// Sends the GET `args` through `c` until one is served from the cache
/// (Redis's GET count does not move); every reply must be `want`. Returns
/// how many reached Redis first. A GET miss right after a write of the same
/// key may legitimately not fill the cache: Redis's invalidation of that
/// write can reach sidecache after the write's reply and void the fill. So
/// a few misses are allowed, but the cache must end up serving the key.
fn until_cached(
    redis: &RedisServer,
    c: &mut Raw,
    args: &[Vec<u8>],
    want: &[u8],
) -> Result<u32, String> {
    for misses in 0..=FILL_ATTEMPTS {
        let before = redis_get_calls(redis.port());
        let r = c.call_bytes(args);
        if r != want {
            return Err(format!(
                "`{}` returned {}, before {}, with nothing written in between",
                show(args),
                escape(&r),
                escape(want)
            ));
        }
        if redis_get_calls(redis.port()) == before {
            return Ok(misses);
        }
    }
    Err(format!(
        "`{}`: {} GETs in a row reached Redis instead of the cache",
        show(args),
        FILL_ATTEMPTS + 1
    ))
}

// ---------------------------------------------------------------------------
// 1. The differential corpus
// ---------------------------------------------------------------------------

/// Keys and values every run starts from (after FLUSHALL, SCRIPT FLUSH and
/// FUNCTION FLUSH), run directly in Redis. One inline command per line.
const SETUP: &str = r#"
SET str hello
SET num 10
SET float 3.5
SET raw 0123456789012345678901234567890123456789012345678901234567890123456789
SET bin "\x00\xff\r\n\x01binary"
SET expiring soon EXAT 4102444800
RPUSH list a b c d e c
RPUSH nums 3 1 2 10
SADD set a b c
SADD set2 b c d
SADD iset 3 1 2
SADD one only
SADD luaset solo
ZADD z 1 a 2 b 3 c 1.5 d
ZADD z2 2 b 5 x
ZADD z1 7.25 solo
ZADD zl 0 a 0 b 0 c 0 d
ZADD zinf inf top -inf bottom 0.1 tenth
HSET h f1 v1 f2 v2 n 5 fl 1.5
HSET h1 only val
XADD s 1-1 f v1
XADD s 2-1 f v2 g w
XADD s 3-0 f v3
GEOADD geo 13.361389 38.115556 Palermo 15.087269 37.502669 Catania
PFADD hll a b c
PFADD hll2 c d e
SETBIT bits 7 1
SETBIT bits 12 1
SET bits2 "\xf0"
"#;

/// The commands compared. One inline command per line; `#` starts a
/// comment line. `@hit ` before a GET asserts that, through sidecache, the
/// GET is served from the cache (Redis's GET count does not move; see
/// [`until_cached`] for the misses allowed after a write).
///
/// Left out, because the reply depends on the connection or on time rather
/// than on the keyspace:
/// - `CLIENT ID`, `CLIENT LIST`, `CLIENT INFO`, `HELLO`: connection ids
///   (sidecache answers with its own); HELLO is compared structurally in
///   the tests below.
/// - `INFO`, `TIME`, `LASTSAVE`, `LATENCY` (but `LATENCY DOCTOR`, constant
///   while latency monitoring is off, the default), `SLOWLOG`, `MEMORY
///   STATS|USAGE|DOCTOR`: time, RSS or allocator state.
/// - `LOLWUT`: draws with `rand()`.
/// - `RANDOMKEY`, `SPOP`/`SRANDMEMBER`/`HRANDFIELD`/`ZRANDMEMBER` on more
///   than one element with a count below the size: random. (Single-element
///   keys and counts covering the whole key are deterministic and included.)
/// - `KEYS`/`SCAN` over several keys: the keyspace dict's order depends on
///   how far its incremental rehash got, which Redis advances on a timer.
/// - `OBJECT IDLETIME`, `OBJECT FREQ`, `XINFO CONSUMERS`, extended
///   `XPENDING`, `XINFO STREAM FULL` with consumers: idle and seen times.
/// - `TTL`/`PTTL` of keys with an expiry (only -1 and -2 are compared;
///   `EXPIRETIME` with an absolute time is).
/// - `DEBUG`: server internals (and `DEBUG SLEEP` is timing).
/// - `CLIENT SETINFO`: Redis 7.0 does not know it; sidecache answers it.
/// - `QUIT`, `SELECT` other than 0, and everything sidecache refuses
///   (transactions, pub/sub, blocking commands, AUTH, other CLIENT
///   subcommands): sidecache answers those differently by design.
const CORPUS: &str = r##"
# --- local replies (must look like Redis's) ---
PING
PING "hello world"
ping lower
ECHO "echo me"
ECHO ""
SELECT 0
CLIENT GETNAME
CLIENT SETNAME corpus-client
CLIENT GETNAME
PING a b
ECHO

# --- strings, and the GET cache ---
GET str
@hit GET str
GET nosuch
@hit GET nosuch
GET bin
@hit GET bin
GET raw
@hit GET raw
GET num
STRLEN str
APPEND str " world"
GET str
@hit GET str
GETRANGE str 0 4
SUBSTR str -5 -1
SETRANGE str 6 WORLD
GET str
SET str again GET
SET newkey v NX
SET newkey v2 NX
SET newkey v3 XX GET
SET nosuch2 v XX
GET newkey
@hit GET newkey
SETNX newkey v4
GETSET newkey v5
MSET m1 a m2 b
MGET m1 nosuch m2 str
MSETNX m1 x m3 y
MSETNX m3 y m4 z
MGET m3 m4
GETDEL m4
GET m4
@hit GET m4
GETEX m3
GETEX m3 PERSIST
GETEX nosuch
INCR num
INCRBY num 5
DECR num
DECRBY num 20
INCRBYFLOAT float 0.25
INCRBYFLOAT float -10.75
INCRBYFLOAT num 1.5
GET num
INCR str
INCRBY num notanumber
INCRBYFLOAT float inf
SET maxint 9223372036854775807
INCR maxint
LCS str raw
SET lcs1 ohmytext
SET lcs2 mynewtext
LCS lcs1 lcs2
LCS lcs1 lcs2 LEN
LCS lcs1 lcs2 IDX
LCS lcs1 lcs2 IDX MINMATCHLEN 4 WITHMATCHLEN
SET k v XX NX
SET k v EX notanumber
SET
GET
GET a b

# --- keys, types, expiry (deterministic cases only) ---
EXISTS str list nosuch set
TYPE str
TYPE list
TYPE set
TYPE z
TYPE h
TYPE s
TYPE hll
TYPE nosuch
OBJECT ENCODING num
OBJECT ENCODING str
OBJECT ENCODING raw
OBJECT ENCODING list
OBJECT ENCODING set
OBJECT ENCODING iset
OBJECT ENCODING z
OBJECT ENCODING h
OBJECT ENCODING s
OBJECT ENCODING nosuch
OBJECT REFCOUNT str
OBJECT BOGUS x
TTL str
PTTL str
TTL nosuch
PTTL nosuch
EXPIRETIME expiring
PEXPIRETIME expiring
EXPIRETIME str
EXPIRETIME nosuch
GET expiring
@hit GET expiring
PERSIST expiring
TTL expiring
EXPIREAT expiring 4102444800
EXPIREAT expiring 4102444800 NX
EXPIRE str 1000
PERSIST str
TTL str
EXPIRE str notanumber
COPY str strcopy
COPY str strcopy
GET strcopy
RENAME strcopy strmoved
GET strcopy
GET strmoved
RENAMENX strmoved str
RENAME nosuch x
TOUCH str list nosuch
KEYS str
KEYS nosuch*
DUMP str
DUMP nosuch
DEL strmoved nosuch
UNLINK m1 m2
DBSIZE
SORT nums
SORT nums DESC LIMIT 0 2
SORT list ALPHA
SORT_RO nums
SORT list

# --- lists ---
LRANGE list 0 -1
LLEN list
LINDEX list 2
LINDEX list 99
LINDEX list notanumber
LPOS list c
LPOS list c RANK 2
LPOS list c COUNT 0
LPOS list zz
LINSERT list BEFORE c x
LINSERT list AFTER nosuchpivot y
LSET list 0 first
LSET list 99 z
LREM list 1 c
LRANGE list 0 -1
LPUSH list p1 p2
RPUSHX list r1
LPUSHX nosuch v
LPOP list
LPOP list 2
RPOP list
RPOP list 0
LPOP nosuch
LPOP nosuch 2
RPOP nosuch 3
LMOVE list list2 LEFT RIGHT
RPOPLPUSH list list2
LRANGE list2 0 -1
LMPOP 2 nosuch list LEFT COUNT 2
LMPOP 1 nosuch RIGHT
LTRIM list 0 1
LRANGE list 0 -1
LRANGE nosuch 0 -1
GET list
LPUSH str x

# --- sets ---
SMEMBERS set
SMEMBERS iset
SMEMBERS one
SMEMBERS nosuch
SCARD set
SISMEMBER set a
SISMEMBER set zz
SMISMEMBER set a zz b
SINTER set set2
SINTERCARD 2 set set2
SUNION iset one
SDIFF set set2
SDIFFSTORE dst set set2
SMEMBERS dst
SINTERSTORE dst2 set nosuch
SMOVE set set2 a
SREM set2 zz a
SRANDMEMBER one
SRANDMEMBER one -3
SRANDMEMBER iset 10
SRANDMEMBER nosuch
SRANDMEMBER nosuch 5
SPOP one
SPOP one
SPOP nosuch 2
SSCAN iset 0
SADD iset notanint
OBJECT ENCODING iset
SADD str x

# --- sorted sets ---
ZRANGE z 0 -1
ZRANGE z 0 -1 WITHSCORES
ZRANGE z 0 -1 REV WITHSCORES
ZRANGE z (1 3 BYSCORE WITHSCORES LIMIT 0 2
ZRANGE zl [b (d BYLEX
ZRANGEBYSCORE z -inf +inf WITHSCORES
ZREVRANGEBYSCORE z 3 (1 WITHSCORES
ZRANGEBYLEX zl - +
ZREVRANGE z 0 1 WITHSCORES
ZSCORE z a
ZSCORE z d
ZSCORE z nosuch
ZSCORE nosuch a
ZMSCORE z a nosuch c
ZSCORE zinf top
ZSCORE zinf bottom
ZSCORE zinf tenth
ZRANGE zinf 0 -1 WITHSCORES
ZINCRBY z 0.25 a
ZINCRBY z 1e3 a
ZADD z INCR 1 b
ZADD z XX CH GT 10 c
ZADD z NX XX 1 a
ZADD z 3.141592653589793 pi
ZSCORE z pi
ZRANK z c
ZREVRANK z c
ZRANK z nosuch
ZCARD z
ZCOUNT z (1 +inf
ZLEXCOUNT zl - [c
ZRANDMEMBER z1
ZRANDMEMBER z1 1 WITHSCORES
ZRANDMEMBER z1 -3 WITHSCORES
ZRANDMEMBER z 100 WITHSCORES
ZRANDMEMBER nosuch
ZRANDMEMBER nosuch 2 WITHSCORES
ZUNION 2 z z2 WITHSCORES
ZINTER 2 z z2 WITHSCORES AGGREGATE MAX
ZINTERCARD 2 z z2
ZDIFF 2 z z2 WITHSCORES
ZUNIONSTORE zu 2 z z2 WEIGHTS 1 0.5
ZRANGE zu 0 -1 WITHSCORES
ZRANGESTORE zr z 0 1
ZRANGE zr 0 -1 WITHSCORES
ZPOPMIN z
ZPOPMAX z 2
ZPOPMIN nosuch
ZMPOP 1 z MIN COUNT 1
ZMPOP 1 nosuch MAX
ZREMRANGEBYRANK zu 0 0
ZREM zu b nosuch
ZSCAN z1 0
ZRANGE z 0 -1 WITHSCORES
ZADD z notafloat a
ZADD str 1 a

# --- hashes ---
HGETALL h
HGETALL h1
HGETALL nosuch
HGET h f1
HGET h nosuch
HMGET h f1 nosuch f2
HKEYS h
HVALS h
HLEN h
HEXISTS h f1
HSTRLEN h f1
HINCRBY h n 10
HINCRBYFLOAT h fl 0.5
HINCRBYFLOAT h fl 1e2
HINCRBY h f1 1
HSETNX h f1 x
HSETNX h f3 v3
HDEL h f3 nosuch
HRANDFIELD h1
HRANDFIELD h1 1 WITHVALUES
HRANDFIELD h1 -2 WITHVALUES
HRANDFIELD h 100 WITHVALUES
HRANDFIELD nosuch
HRANDFIELD nosuch 3
HSCAN h 0
HGETALL h
HSET h
GET h
HGET str f

# --- streams (explicit ids only) ---
XLEN s
XRANGE s - +
XRANGE s (1-1 +
XRANGE s - + COUNT 1
XREVRANGE s + - COUNT 2
XRANGE nosuch - +
XADD s 4-0 f v4
XADD s 4-0 f dup
XADD s NOMKSTREAM 5-0 f v5
XADD nosuch NOMKSTREAM 1-0 f v
XREAD COUNT 2 STREAMS s 0-0
XREAD STREAMS s 3-0
XREAD STREAMS s 99-0
XREAD STREAMS nosuch 0
XREAD COUNT 1 STREAMS s s 0 2-0
XINFO STREAM s
XINFO STREAM s FULL
XINFO STREAM nosuch
XGROUP CREATE s g 0
XGROUP CREATE s g 0
XREADGROUP GROUP g c1 COUNT 2 STREAMS s >
XREADGROUP GROUP g c1 STREAMS s 0
XPENDING s g
XACK s g 1-1 nosuch
XACK s g 1-1
XCLAIM s g c2 0 2-1 JUSTID
XAUTOCLAIM s g c3 0 0-0 COUNT 10 JUSTID
XINFO GROUPS s
XDEL s 2-1 99-0
XTRIM s MAXLEN 2
XRANGE s - +
XSETID s 10-0
XINFO STREAM s
XADD s 1-0 f v
XADD s bogus f v
XGROUP DESTROY s g
GET s

# --- geo ---
GEODIST geo Palermo Catania
GEODIST geo Palermo Catania km
GEODIST geo Palermo nosuch
GEOPOS geo Palermo nosuch Catania
GEOHASH geo Palermo Catania
GEOSEARCH geo FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHDIST WITHCOORD WITHHASH
GEOSEARCH geo FROMMEMBER Palermo BYBOX 400 400 km DESC COUNT 1
GEORADIUSBYMEMBER geo Palermo 300 km ASC WITHDIST
GEOSEARCHSTORE geodst geo FROMLONLAT 15 37 BYRADIUS 200 km STOREDIST
ZRANGE geodst 0 -1 WITHSCORES
ZSCORE geo Palermo
GEOADD geo 200 100 bad
GEOPOS nosuch a

# --- HyperLogLog (a string underneath: cached by GET) ---
PFCOUNT hll
PFCOUNT hll hll2
PFADD hll a
PFADD hll z
PFCOUNT hll
GET hll
@hit GET hll
PFMERGE hll3 hll hll2
PFCOUNT hll3
PFADD hll y
GET hll
PFADD str x
PFCOUNT list

# --- bitmaps ---
GETBIT bits 7
GETBIT bits 8
BITCOUNT bits
BITCOUNT bits 0 0
BITCOUNT bits 0 12 BIT
BITPOS bits 1
BITPOS bits 0 2
BITOP AND band bits bits2
BITOP OR bor bits bits2
BITOP NOT bnot bits
GET bor
@hit GET bor
GET bnot
BITFIELD bf SET u8 0 255 GET u8 0
BITFIELD bf INCRBY u8 0 10
BITFIELD bf OVERFLOW FAIL INCRBY u8 0 300
BITFIELD bf GET i8 0 GET u4 4
BITFIELD_RO bf GET u8 0
BITFIELD bf GET u99 0
SETBIT bits -1 1
SETBIT bits 0 2
GET bits

# --- scripting ---
EVAL "return 1" 0
EVAL "return 3.99" 0
EVAL "return 'bulk'" 0
EVAL "return {1, 'two', {3, 'four'}}" 0
EVAL "return nil" 0
EVAL "return false" 0
EVAL "return true" 0
EVAL "return {ok='FINE'}" 0
EVAL "return {err='MYERR custom'}" 0
EVAL "return redis.status_reply('STATUS')" 0
EVAL "return redis.error_reply('ERR oops')" 0
EVAL "return {double=3.5}" 0
EVAL "return {double=0.1}" 0
EVAL "return {map={only=1}}" 0
EVAL "return {set={member=true}}" 0
EVAL "return {big_number='123456789012345678901234567890'}" 0
EVAL "return redis.call('GET', KEYS[1])" 1 str
EVAL "return redis.call('GET', KEYS[1])" 1 nosuch
EVAL "return redis.call('HGETALL', KEYS[1])" 1 h
# Maps and sets pass through Lua tables, whose order is Lua's: one entry only.
EVAL "redis.setresp(3); return redis.call('HGETALL', KEYS[1])" 1 h1
EVAL "redis.setresp(3); return redis.call('ZSCORE', KEYS[1], ARGV[1])" 1 zinf tenth
EVAL "redis.setresp(3); return redis.call('SMEMBERS', KEYS[1])" 1 luaset
EVAL "redis.setresp(3); return redis.call('GET', KEYS[1])" 1 nosuch
EVAL "redis.setresp(3); return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')" 1 zinf
EVAL "redis.setresp(3); return redis.call('ZRANDMEMBER', KEYS[1], 1, 'WITHSCORES')" 1 z1
EVAL "redis.setresp(3); return redis.call('XRANGE', KEYS[1], '-', '+')" 1 s
EVAL "redis.setresp(3); local t = redis.call('ZSCORE', KEYS[1], ARGV[1]); return type(t)" 1 zinf tenth
EVAL "return redis.call('SET', KEYS[1], ARGV[1])" 1 fromlua written
GET fromlua
@hit GET fromlua
EVAL "return redis.call('INCR', KEYS[1])" 1 str
EVAL "return redis.call('NOSUCHCMD')" 0
EVAL "syntax error here(" 0
EVAL "return 1"
EVAL_RO "return redis.call('GET', KEYS[1])" 1 str
EVAL_RO "return redis.call('SET', KEYS[1], 'x')" 1 str
SCRIPT LOAD "return ARGV[1]"
EVALSHA 098e0f0d1448c0a81dafe820f66d460eb09263da 0 viasha
EVALSHA 0000000000000000000000000000000000000000 0
SCRIPT EXISTS 098e0f0d1448c0a81dafe820f66d460eb09263da 0000000000000000000000000000000000000000
FUNCTION LOAD "#!lua name=corpuslib\nredis.register_function('echo_arg', function(keys, args) return args[1] end)\nredis.register_function{function_name='ro_get', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}"
FCALL echo_arg 0 fromfunction
FCALL_RO ro_get 1 str
FCALL nosuchfunction 0
FUNCTION LIST
FUNCTION LIST LIBRARYNAME corpuslib WITHCODE

# --- server and introspection (deterministic parts) ---
CONFIG GET maxmemory-policy
CONFIG GET maxmemory
CONFIG GET nosuchconfig
CONFIG GET
COMMAND COUNT
COMMAND INFO get zadd nosuchcommand
COMMAND DOCS get
COMMAND GETKEYS SET a b
COMMAND GETKEYS GET
COMMAND LIST FILTERBY PATTERN xa*
OBJECT HELP
ACL WHOAMI
ACL CAT
ACL GETUSER default
ACL GETUSER nosuchuser
# A verbatim string (`=`) in RESP3; constant while latency monitoring is off.
LATENCY DOCTOR
PUBLISH corpus-channel hello
FUNCTION STATS
NOSUCHCOMMAND a b
nosuchcommand

# --- whole-keyspace writes through sidecache ---
GET str
@hit GET str
SWAPDB 0 1
GET str
EXISTS list
SWAPDB 0 1
GET str
MOVE str 1
GET str
DBSIZE
FLUSHALL
GET float
@hit GET float
DBSIZE
"##;

/// Extra setup generated in code: keys big enough for their non-compact
/// encodings (hashtable hash and set, skiplist zset, quicklist list).
fn big_setup() -> Vec<Vec<Vec<u8>>> {
    let strs = |prefix: &str, n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .collect()
    };
    let with = |head: &[&str], rest: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = head.iter().map(|s| s.as_bytes().to_vec()).collect();
        v.extend(rest);
        v
    };
    let pairs = |a: Vec<Vec<u8>>, b: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect()
    };
    vec![
        with(
            &["HSET", "bighash"],
            pairs(strs("field", 600), strs("value", 600)),
        ),
        with(&["SADD", "bigset"], strs("member", 200)),
        with(
            &["ZADD", "bigzset"],
            pairs(
                (0..200)
                    .map(|i| format!("{}.5", i % 37).into_bytes())
                    .collect(),
                strs("m", 200),
            ),
        ),
        with(&["RPUSH", "biglist"], strs("item-with-some-length-", 300)),
        with(
            &["SET", "bigvalue"],
            vec![(0..1 << 20).map(|i| b"0123456789abcdef"[i % 16]).collect()],
        ),
    ]
}

/// Commands on the big keys, compared like the corpus.
const BIG_CORPUS: &str = r#"
OBJECT ENCODING bighash
OBJECT ENCODING bigset
OBJECT ENCODING bigzset
OBJECT ENCODING biglist
HGETALL bighash
HKEYS bighash
HRANDFIELD bighash 1000 WITHVALUES
SMEMBERS bigset
SRANDMEMBER bigset 1000
SINTER bigset bigset
ZRANGE bigzset 0 -1 WITHSCORES
ZRANGEBYSCORE bigzset 3 7 WITHSCORES LIMIT 2 10
ZRANDMEMBER bigzset 1000 WITHSCORES
LRANGE biglist 0 -1
LRANGE biglist 100 110
GET bigvalue
@hit GET bigvalue
GETRANGE bigvalue 1048570 -1
"#;

struct Line {
    args: Vec<Vec<u8>>,
    /// Through sidecache this GET must be a cache hit.
    hit: bool,
}

fn corpus_lines(text: &str) -> Vec<Line> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.strip_prefix("@hit ") {
            Some(rest) => Line {
                args: inline(rest),
                hit: true,
            },
            None => Line {
                args: inline(l),
                hit: false,
            },
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Redis,
    Sidecache,
}

/// One run of the corpus: reset the keyspace, connect (and `HELLO 3` for
/// RESP3), send each command and collect its reply. Through sidecache, each
/// `@hit` GET must end up served from the cache ([`until_cached`]); its
/// problems are returned with the replies.
fn run_corpus(
    redis: &RedisServer,
    proxy: &Sidecache,
    via: Via,
    resp3: bool,
    setup: &[Vec<Vec<u8>>],
    lines: &[Line],
) -> (Vec<Vec<u8>>, Vec<String>) {
    let port = match via {
        Via::Redis => redis.port(),
        Via::Sidecache => proxy.port(),
    };
    let mut c = if resp3 {
        Raw::connect3(port)
    } else {
        Raw::connect(port)
    };
    let check_hits = via == Via::Sidecache && !direct_mode();
    if check_hits {
        wait_caching(redis, &mut c);
    }
    reset(redis, setup);
    let mut replies = Vec::with_capacity(lines.len());
    let mut hit_failures = Vec::new();
    let mut late_fills = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let reply = c.call_bytes(&line.args);
        if check_hits && line.hit {
            // The GET before this one missed and should have filled the cache.
            match until_cached(redis, &mut c, &line.args, &reply) {
                Ok(0) => {}
                Ok(misses) => late_fills.push(format!("#{i} ({misses} extra)")),
                Err(e) => hit_failures.push(format!(
                    "#{i} (RESP{}): expected a cache hit: {e}",
                    if resp3 { 3 } else { 2 }
                )),
            }
        }
        replies.push(reply);
    }
    if !late_fills.is_empty() {
        eprintln!(
            "RESP{}: cache hits that took more than one GET (a late invalidation voided the fill): {}",
            if resp3 { 3 } else { 2 },
            late_fills.join(", ")
        );
    }
    (replies, hit_failures)
}

#[test]
fn every_reply_matches_redis_byte_for_byte_in_resp2_and_resp3() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut setup: Vec<Vec<Vec<u8>>> = corpus_lines(SETUP).into_iter().map(|l| l.args).collect();
    setup.extend(big_setup());
    let mut lines = corpus_lines(CORPUS);
    // The big keys go first: the corpus ends by flushing everything.
    let mut all = corpus_lines(BIG_CORPUS);
    all.append(&mut lines);
    let lines = all;

    let mut failures = Vec::new();
    let mut differ_by_protocol = 0;
    let mut direct = Vec::new();
    for resp3 in [false, true] {
        let proto = if resp3 { 3 } else { 2 };
        let (want, _) = run_corpus(&redis, &proxy, Via::Redis, resp3, &setup, &lines);
        let (got, hits) = run_corpus(&redis, &proxy, Via::Sidecache, resp3, &setup, &lines);
        failures.extend(hits);
        for (i, line) in lines.iter().enumerate() {
            if want[i] != got[i] {
                failures.push(format!(
                    "#{i} `{}` (RESP{proto}):\n    redis:     {}\n    sidecache: {}",
                    show(&line.args),
                    escape(&want[i]),
                    escape(&got[i])
                ));
            }
        }
        direct.push(want);
    }
    for (r2, r3) in direct[0].iter().zip(&direct[1]) {
        if r2 != r3 {
            differ_by_protocol += 1;
        }
    }
    // Every RESP3 type Redis 7.0 sends without pub/sub or tracking was among
    // the replies compared (Redis's commands send no boolean `#`).
    let mut types = std::collections::BTreeSet::new();
    for r in &direct[1] {
        collect_types(&parse_tree(r), &mut types);
    }
    let missing: String = "%~,_(=*$:+-"
        .chars()
        .filter(|c| !types.contains(&(*c as u8)))
        .collect();
    assert!(
        missing.is_empty(),
        "the RESP3 corpus never got a reply of type(s) {missing:?}"
    );
    eprintln!(
        "compared {} commands x 2 protocols (RESP2 and RESP3) against Redis; {} of them answer differently in RESP3",
        lines.len(),
        differ_by_protocol
    );
    assert!(lines.len() >= 200, "corpus too small: {}", lines.len());
    // The RESP3 runs really were RESP3: maps, sets, doubles, `_` nils.
    assert!(
        differ_by_protocol >= 50,
        "only {differ_by_protocol} commands answered differently in RESP3: was HELLO 3 in effect?"
    );
    assert!(
        failures.is_empty(),
        "{} problem(s) over {} commands x 2 protocols (replies that differ from Redis's, GETs not cached):\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 2. Switching protocol mid-pipeline; HELLO variants
// ---------------------------------------------------------------------------

/// Sends `requests` in one write to `port` (after resetting Redis and running
/// `setup` directly) and reads one reply per request.
fn pipeline_replies(
    redis: &RedisServer,
    port: u16,
    setup: &[&[&str]],
    requests: &[&[&str]],
) -> Vec<Vec<u8>> {
    let setup: Vec<Vec<Vec<u8>>> = setup
        .iter()
        .map(|c| c.iter().map(|a| a.as_bytes().to_vec()).collect())
        .collect();
    reset(redis, &setup);
    let mut c = Raw::connect(port);
    let mut wire = Vec::new();
    for r in requests {
        wire.extend(cmd(r));
    }
    c.send(&wire);
    requests.iter().map(|_| c.read_reply()).collect()
}

/// Runs `requests` as one pipeline directly and through sidecache; each
/// reply must be byte-identical, HELLO replies up to their `id` and
/// `version` values. Returns the replies through sidecache.
#[track_caller]
fn pipeline_same_as_redis(
    redis: &RedisServer,
    proxy: &Sidecache,
    setup: &[&[&str]],
    requests: &[&[&str]],
) -> Vec<Vec<u8>> {
    let want = pipeline_replies(redis, redis.port(), setup, requests);
    let got = pipeline_replies(redis, proxy.port(), setup, requests);
    let mut failures = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let hello = r[0].eq_ignore_ascii_case("HELLO");
        let (w, g) = if hello {
            (mask_hello(&want[i]), mask_hello(&got[i]))
        } else {
            (want[i].clone(), got[i].clone())
        };
        if w != g {
            failures.push(format!(
                "#{i} `{}`{}:\n    redis:     {}\n    sidecache: {}",
                r.join(" "),
                if hello {
                    " (id and version masked)"
                } else {
                    ""
                },
                escape(&w),
                escape(&g)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "pipeline replies differ from Redis's:\n{}",
        failures.join("\n")
    );
    got
}

#[test]
fn a_pipeline_that_switches_protocol_half_way_matches_redis() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let setup: &[&[&str]] = &[&["HSET", "h", "f1", "v1", "f2", "v2"]];
    let requests: &[&[&str]] = &[
        &["SET", "k", "v"],
        &["GET", "k"],
        &["HGETALL", "h"],
        &["HELLO", "3"],
        &["GET", "k"],
        &["HGETALL", "h"],
        &["GET", "missing"],
        &["HELLO", "2"],
        &["GET", "missing"],
        &["HGETALL", "h"],
        &["PING"],
    ];
    let got = pipeline_same_as_redis(&redis, &proxy, setup, requests);
    // Spelled out too, so that a Redis that changed would not hide a bug.
    let hgetall2 = b"*4\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n".to_vec();
    let hgetall3 = b"%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n".to_vec();
    let expected: [(usize, &[u8]); 9] = [
        (0, OK),
        (1, b"$1\r\nv\r\n"),
        (2, &hgetall2),
        (4, b"$1\r\nv\r\n"),
        (5, &hgetall3),
        (6, b"_\r\n"),
        (8, b"$-1\r\n"),
        (9, &hgetall2),
        (10, PONG),
    ];
    for (i, want) in expected {
        assert_eq!(
            got[i],
            want,
            "#{i} `{}`: expected {}, got {}",
            requests[i].join(" "),
            escape(want),
            escape(&got[i])
        );
    }
    assert!(
        got[3].starts_with(b"%7\r\n"),
        "HELLO 3: {}",
        escape(&got[3])
    );
    assert!(
        got[7].starts_with(b"*14\r\n"),
        "HELLO 2: {}",
        escape(&got[7])
    );

    // The same again with the GETs served from the cache: `missing` and `k`
    // are cached by the first round, and the cached nil must still be spelled
    // in each protocol's way.
    if direct_mode() {
        return;
    }
    let mut c = Raw::connect(proxy.port());
    wait_caching(&redis, &mut c);
    let mut c3 = Raw::connect3(proxy.port());
    wait_caching(&redis, &mut c3);
    c.roundtrip(&["SET", "k", "v"], OK);
    get_twice_cached(&redis, &mut c, "k", b"$1\r\nv\r\n", "priming");
    get_twice_cached(&redis, &mut c, "missing", NIL, "priming");
    let before = redis_get_calls(redis.port());
    let requests: &[&[&str]] = &[
        &["GET", "k"],
        &["GET", "missing"],
        &["HELLO", "3"],
        &["GET", "k"],
        &["GET", "missing"],
        &["HELLO", "2"],
        &["GET", "missing"],
        &["GET", "k"],
    ];
    let mut wire = Vec::new();
    for r in requests {
        wire.extend(cmd(r));
    }
    let mut p = Raw::connect(proxy.port());
    p.send(&wire);
    let got: Vec<Vec<u8>> = requests.iter().map(|_| p.read_reply()).collect();
    let want: [&[u8]; 8] = [
        b"$1\r\nv\r\n",
        NIL,
        b"%7\r\n",
        b"$1\r\nv\r\n",
        b"_\r\n",
        b"*14\r\n",
        NIL,
        b"$1\r\nv\r\n",
    ];
    for (i, w) in want.iter().enumerate() {
        assert!(
            got[i].starts_with(w) && (requests[i][0] == "HELLO" || got[i] == *w),
            "cached round #{i} `{}`: expected {}, got {}",
            requests[i].join(" "),
            escape(w),
            escape(&got[i])
        );
    }
    let reached = redis_get_calls(redis.port()) - before;
    assert_eq!(
        reached, 0,
        "{reached} of the 6 GETs of cached keys reached Redis instead of the cache"
    );
}

#[test]
fn switching_protocol_keeps_the_clients_order() {
    // A request sent after a HELLO goes to the other data connection; it
    // must not overtake the requests sent before the HELLO. CLIENT PAUSE
    // WRITE holds the writes on one connection while reads on the other
    // would still be answered at once.
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = Raw::connect(proxy.port());
    let mut d = Raw::connect(redis.port());
    for round in 0..4 {
        let key = format!("order:{round}");
        let (from, to) = if round % 2 == 0 {
            ("2", "3")
        } else {
            ("3", "2")
        };
        c.call(&["HELLO", from]);
        let nil: &[u8] = if from == "2" { b"_\r\n" } else { NIL };
        let requests: &[&[&str]] = &[
            &["SET", &key, "first"],
            &["HELLO", to],
            &["GET", &key],
            &["APPEND", &key, "+second"],
            &["HELLO", from],
            &["GET", &key],
            &["DEL", &key],
            &["HELLO", to],
            &["GET", &key],
        ];
        d.roundtrip(&["CLIENT", "PAUSE", "80", "WRITE"], OK);
        let mut wire = Vec::new();
        for r in requests {
            wire.extend(cmd(r));
        }
        c.send(&wire);
        let got: Vec<Vec<u8>> = requests.iter().map(|_| c.read_reply()).collect();
        let want: [(usize, &[u8]); 6] = [
            (0, OK),
            (2, &bulk("first")),
            (3, &int(12)),
            (5, &bulk("first+second")),
            (6, &int(1)),
            (8, nil),
        ];
        for (i, w) in want {
            assert_eq!(
                got[i],
                w,
                "round {round} (RESP{from} -> RESP{to}), #{i} `{}`: expected {}, got {}",
                requests[i].join(" "),
                escape(w),
                escape(&got[i])
            );
        }
    }
}

#[test]
fn hello_variants_answer_like_redis() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let requests: &[&[&str]] = &[
        &["HELLO"],
        &["CLIENT", "GETNAME"],
        &["HELLO", "3", "SETNAME", "first"],
        &["CLIENT", "GETNAME"],
        &["HELLO"],
        &["HELLO", "4"],
        &["HELLO", "1"],
        &["HELLO", "x"],
        &["HELLO", "3", "SETNAME"],
        &["HELLO", "3", "BOGUS"],
        &["HELLO", "3", "SETNAME", "has space"],
        &["PING"],
        &["GET", "nokey"],
        &[
            "HELLO", "2", "AUTH", "default", "anything", "SETNAME", "second",
        ],
        &["CLIENT", "GETNAME"],
        &["GET", "nokey"],
        &["HELLO", "3", "AUTH", "default", "anything"],
        &["CLIENT", "SETNAME", ""],
        &["CLIENT", "GETNAME"],
        &["HELLO", "4"],
        &["GET", "nokey"],
        &["hello", "2"],
        &["CLIENT", "GETNAME"],
        &["HELLO"],
    ];
    let got = pipeline_same_as_redis(&redis, &proxy, &[], requests);
    // Explicitly: the protocol each HELLO left the client in.
    assert!(got[4].starts_with(b"%7\r\n"), "HELLO: {}", escape(&got[4]));
    assert_eq!(got[5], b"-NOPROTO unsupported protocol version\r\n");
    assert_eq!(got[12], b"_\r\n");
    assert_eq!(got[15], NIL);
    assert_eq!(got[18], b"_\r\n");
    assert_eq!(got[20], b"_\r\n");
    assert!(
        got[23].starts_with(b"*14\r\n"),
        "HELLO: {}",
        escape(&got[23])
    );
}

// ---------------------------------------------------------------------------
// 3. Read-your-writes and coherence across protocols
// ---------------------------------------------------------------------------

/// RESP2 and RESP3 clients of one sidecache, caching ready on both.
fn two_clients(redis: &RedisServer, proxy: &Sidecache) -> (Raw, Raw) {
    let mut c2 = Raw::connect(proxy.port());
    let mut c3 = Raw::connect3(proxy.port());
    wait_caching(redis, &mut c2);
    wait_caching(redis, &mut c3);
    (c2, c3)
}

/// GETs `key` through `c`: the reply must be `want`, and a GET again must
/// be served from the cache (after at most [`FILL_ATTEMPTS`] misses).
#[track_caller]
fn get_twice_cached(redis: &RedisServer, c: &mut Raw, key: &str, want: &[u8], what: &str) {
    let r = c.call(&["GET", key]);
    assert_eq!(
        r,
        want,
        "{what}: GET {key}: expected {}, got {}",
        escape(want),
        escape(&r)
    );
    let args = [b"GET".to_vec(), key.as_bytes().to_vec()];
    if let Err(e) = until_cached(redis, c, &args, want) {
        panic!("{what}: {e}");
    }
}

#[test]
fn writes_through_either_protocol_are_read_by_the_other() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let (mut c2, mut c3) = two_clients(&redis, &proxy);
    for round in 0..20 {
        let key = format!("ryw:{round}");
        let v1 = format!("v1-{round}");
        let v2 = format!("v2-{round}");
        let what = format!("round {round}");
        // Prime both protocols with the key missing.
        get_twice_cached(&redis, &mut c2, &key, NIL, &what);
        get_twice_cached(&redis, &mut c3, &key, b"_\r\n", &what);

        c2.roundtrip(&["SET", &key, &v1], OK);
        get_twice_cached(&redis, &mut c3, &key, &bulk(&v1), &what);
        get_twice_cached(&redis, &mut c2, &key, &bulk(&v1), &what);

        c3.roundtrip(&["SET", &key, &v2], OK);
        get_twice_cached(&redis, &mut c2, &key, &bulk(&v2), &what);
        get_twice_cached(&redis, &mut c3, &key, &bulk(&v2), &what);

        // Writes other than SET, one per protocol.
        c3.roundtrip(&["APPEND", &key, "+3"], &int(v2.len() as i64 + 2));
        c2.roundtrip(&["GET", &key], &bulk(format!("{v2}+3")));
        c2.roundtrip(&["DEL", &key], &int(1));
        c3.roundtrip(&["GET", &key], b"_\r\n");
        c2.roundtrip(&["GET", &key], NIL);
        c3.roundtrip(
            &[
                "EVAL",
                "return redis.call('SET', KEYS[1], ARGV[1])",
                "1",
                &key,
                &v1,
            ],
            OK,
        );
        c2.roundtrip(&["GET", &key], &bulk(&v1));
        c3.roundtrip(&["GET", &key], &bulk(&v1));

        // A nil cached by one protocol, served to the other in its spelling.
        let gone = format!("ryw:gone:{round}");
        let (first, second, first_nil, second_nil): (&mut Raw, &mut Raw, &[u8], &[u8]) =
            if round % 2 == 0 {
                (&mut c2, &mut c3, NIL, b"_\r\n")
            } else {
                (&mut c3, &mut c2, b"_\r\n", NIL)
            };
        first.roundtrip(&["GET", &gone], first_nil);
        let before = redis_get_calls(redis.port());
        second.roundtrip(&["GET", &gone], second_nil);
        assert_eq!(
            redis_get_calls(redis.port()) - before,
            0,
            "{what}: a nil cached through one protocol was not served from the cache to the other"
        );
    }
}

#[test]
fn a_direct_write_reaches_both_protocols_within_100ms() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let (mut c2, mut c3) = two_clients(&redis, &proxy);
    let mut d = Raw::connect(redis.port());
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let key = format!("direct:{round}");
        let what = format!("round {round}");
        let old = format!("old-{round}");
        let new = format!("new-{round}");
        d.roundtrip(&["SET", &key, &old], OK);
        get_twice_cached(&redis, &mut c2, &key, &bulk(&old), &what);
        get_twice_cached(&redis, &mut c3, &key, &bulk(&old), &what);

        // A direct SET: both protocols must see it.
        d.roundtrip(&["SET", &key, &new], OK);
        let acked = Instant::now();
        let (a, b) = if round % 2 == 0 {
            (&mut c2, &mut c3)
        } else {
            (&mut c3, &mut c2)
        };
        slowest = slowest.max(expect_seen(a, &key, &bulk(&old), &bulk(&new), acked, &what));
        slowest = slowest.max(expect_seen(b, &key, &bulk(&old), &bulk(&new), acked, &what));

        // Cached again, then a direct DEL: the nil in each protocol's spelling.
        get_twice_cached(&redis, &mut c2, &key, &bulk(&new), &what);
        get_twice_cached(&redis, &mut c3, &key, &bulk(&new), &what);
        d.roundtrip(&["DEL", &key], &int(1));
        let acked = Instant::now();
        slowest = slowest.max(expect_seen(
            &mut c3,
            &key,
            &bulk(&new),
            b"_\r\n",
            acked,
            &what,
        ));
        slowest = slowest.max(expect_seen(&mut c2, &key, &bulk(&new), NIL, acked, &what));

        // A cached nil, then a direct write creating the key.
        get_twice_cached(&redis, &mut c2, &key, NIL, &what);
        get_twice_cached(&redis, &mut c3, &key, b"_\r\n", &what);
        d.roundtrip(&["SET", &key, &old], OK);
        let acked = Instant::now();
        slowest = slowest.max(expect_seen(&mut c2, &key, NIL, &bulk(&old), acked, &what));
        slowest = slowest.max(expect_seen(
            &mut c3,
            &key,
            b"_\r\n",
            &bulk(&old),
            acked,
            &what,
        ));
    }
    eprintln!("slowest propagation of a direct write: {slowest:?}");
}
