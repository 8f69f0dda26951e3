//! Forwarding: hits, misses, nil, errors, unknown commands, inline requests
//! (as nc sends them), binary values, several clients at once.

#[macro_use]
mod common;

use common::*;
use std::thread;

/// Sends `args` to Redis directly and through the proxy; the reply bytes must
/// be identical.
#[track_caller]
fn same_as_redis(redis: &RedisServer, proxy: &mut Conn, args: &[&str]) -> Vec<u8> {
    let direct = redis.raw(args);
    proxy.send_cmd(args);
    proxy.expect(&direct);
    direct
}

#[test]
fn get_hit_miss_and_nil() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("greeting", "hello");

    let mut c = proxy.connect();
    c.roundtrip(&["GET", "greeting"], b"$5\r\nhello\r\n"); // miss
    c.roundtrip(&["GET", "greeting"], b"$5\r\nhello\r\n"); // hit
    c.roundtrip(&["GET", "no-such-key"], NIL);
    c.roundtrip(&["GET", "no-such-key"], NIL);
    // A different client sees the same.
    let mut d = proxy.connect();
    d.roundtrip(&["GET", "greeting"], b"$5\r\nhello\r\n");
    d.roundtrip(&["GET", "no-such-key"], NIL);
}

#[test]
fn inline_get_as_nc_sends_it() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("name", "Robert Kevin");

    let mut c = proxy.connect();
    c.send(b"GET name\r\n");
    c.expect(b"$12\r\nRobert Kevin\r\n");
    // nc sends bare \n line endings.
    c.send(b"GET name\n");
    c.expect(b"$12\r\nRobert Kevin\r\n");
    c.send(b"get name\n");
    c.expect(b"$12\r\nRobert Kevin\r\n");
    c.send(b"GET nobody\n");
    c.expect(NIL);
    // Several inline requests in one write, extra spaces between arguments.
    c.send(b"PING\nGET   name  \nECHO hi\n");
    c.expect(b"+PONG\r\n$12\r\nRobert Kevin\r\n$2\r\nhi\r\n");
    // Inline and multibulk mixed in one stream.
    c.send(b"PING\r\n*2\r\n$3\r\nGET\r\n$4\r\nname\r\nPING\n");
    c.expect(b"+PONG\r\n$12\r\nRobert Kevin\r\n+PONG\r\n");
}

#[test]
fn inline_quotes_and_escapes() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("my key", "spaced");
    redis.set("it's", "apostrophe");

    let mut c = proxy.connect();
    c.send(b"GET \"my key\"\n");
    c.expect(&bulk("spaced"));
    c.send(b"GET 'my key'\n");
    c.expect(&bulk("spaced"));
    c.send(b"GET 'it\\'s'\n");
    c.expect(&bulk("apostrophe"));
    c.send(b"GET \"it's\"\r\n");
    c.expect(&bulk("apostrophe"));
    // Escapes inside double quotes, as redis-cli / sdssplitargs define them.
    c.send(b"ECHO \"a\\x41\\tb\\n\\\"q\\\"\"\n");
    c.expect(&bulk("aA\tb\n\"q\""));
    c.send(b"ECHO \"\"\n");
    c.expect(&bulk(""));
    // Forwarded inline write with quotes reaches Redis intact.
    c.send(b"SET \"inline key\" \"v 1\"\n");
    c.expect(OK);
    assert_eq!(redis.get("inline key").as_deref(), Some(&b"v 1"[..]));
}

#[test]
fn empty_inline_lines_are_ignored() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();
    c.send(b"\r\n\n   \r\n\t\n\nPING\n\n");
    c.expect(PONG);
    // Nothing else was owed: the next reply is the next PONG.
    c.send(b"\n\r\nECHO x\n");
    c.expect(b"$1\r\nx\r\n");
    c.ping();
}

#[test]
fn unknown_and_malformed_commands_get_redis_own_errors() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("text", "abc");
    let mut c = proxy.connect();

    let reply = same_as_redis(&redis, &mut c, &["FOO", "bar", "baz"]);
    assert!(
        reply.starts_with(b"-ERR unknown command 'FOO', with args beginning with: "),
        "{}",
        escape(&reply)
    );
    same_as_redis(&redis, &mut c, &["foo"]);
    // GET with the wrong number of arguments is not a cacheable GET.
    let reply = same_as_redis(&redis, &mut c, &["GET"]);
    assert!(reply.starts_with(b"-ERR wrong number of arguments"));
    same_as_redis(&redis, &mut c, &["GET", "text", "extra"]);
    same_as_redis(&redis, &mut c, &["SET", "text"]);
    same_as_redis(&redis, &mut c, &["INCR", "text"]);
    // Inline form too.
    let direct = redis.raw(&["NOSUCHCMD", "x"]);
    c.send(b"NOSUCHCMD x\n");
    c.expect(&direct);
    // The connection is still fine.
    c.ping();
    c.roundtrip(&["GET", "text"], &bulk("abc"));
}

#[test]
fn wrongtype_error_passes_through() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.raw(&["RPUSH", "alist", "x"]);
    let mut c = proxy.connect();
    let reply = same_as_redis(&redis, &mut c, &["GET", "alist"]);
    assert!(reply.starts_with(b"-WRONGTYPE "), "{}", escape(&reply));
    same_as_redis(&redis, &mut c, &["GET", "alist"]);
}

#[test]
fn writes_and_other_commands_are_forwarded() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();

    c.roundtrip(&["SET", "w:a", "1"], OK);
    assert_eq!(redis.get("w:a").as_deref(), Some(&b"1"[..]));
    c.roundtrip(&["INCR", "w:counter"], &int(1));
    c.roundtrip(&["INCR", "w:counter"], &int(2));
    c.roundtrip(&["INCRBY", "w:counter", "40"], &int(42));
    assert_eq!(redis.get("w:counter").as_deref(), Some(&b"42"[..]));
    c.roundtrip(&["HSET", "w:h", "f", "v"], &int(1));
    c.roundtrip(&["HGET", "w:h", "f"], &bulk("v"));
    c.roundtrip(&["HGET", "w:h", "nope"], NIL);
    c.roundtrip(&["RPUSH", "w:l", "a", "b", "c"], &int(3));
    c.roundtrip(
        &["LRANGE", "w:l", "0", "-1"],
        b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
    );
    c.roundtrip(&["MGET", "w:a", "w:none"], b"*2\r\n$1\r\n1\r\n$-1\r\n");
    c.roundtrip(&["EXISTS", "w:a", "w:none"], &int(1));
    c.roundtrip(&["TYPE", "w:h"], b"+hash\r\n");
    c.roundtrip(&["DEL", "w:a", "w:none"], &int(1));
    assert_eq!(redis.get("w:a"), None);
    c.roundtrip(&["LRANGE", "w:empty", "0", "-1"], b"*0\r\n");
    // Reply types Redis sends: status, integer, bulk, multibulk, nested.
    same_as_redis(&redis, &mut c, &["CONFIG", "GET", "maxmemory"]);
    same_as_redis(&redis, &mut c, &["COMMAND", "INFO", "get"]);
    same_as_redis(&redis, &mut c, &["DBSIZE"]);
}

#[test]
fn xread_without_block_is_forwarded() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.raw(&["XADD", "stream", "1-1", "field", "value"]);
    redis.raw(&["XADD", "stream", "2-1", "field", "other"]);
    let mut c = proxy.connect();
    let reply = same_as_redis(
        &redis,
        &mut c,
        &["XREAD", "COUNT", "10", "STREAMS", "stream", "0"],
    );
    assert!(reply.starts_with(b"*1\r\n"), "{}", escape(&reply));
    same_as_redis(&redis, &mut c, &["xread", "streams", "stream", "1-1"]);
    c.ping();
}

#[test]
fn binary_empty_and_large_values() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let binary: Vec<u8> = b"a\r\nb\0c\xff$-1\r\n*2\r\n".to_vec();
    let large: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    redis.set("bin", &binary);
    redis.set("empty", "");
    redis.set("large", &large);

    let mut c = proxy.connect();
    for _ in 0..2 {
        // miss, then hit
        c.roundtrip(&["GET", "bin"], &bulk(&binary));
        c.roundtrip(&["GET", "empty"], b"$0\r\n\r\n");
        c.roundtrip(&["GET", "large"], &bulk(&large));
    }
    // Binary key names.
    let key: &[u8] = b"k\r\n\0\xfe";
    let mut con = redis.conn();
    redis::cmd("SET")
        .arg(key)
        .arg(b"bk".as_slice())
        .query::<()>(&mut con)
        .unwrap();
    c.send(&cmd_bytes(&[b"GET", key]));
    c.expect(&bulk("bk"));
    // A large request is forwarded intact.
    c.send(&cmd_bytes(&[b"SET", b"large2", &large]));
    c.expect(OK);
    assert!(
        redis.get("large2").as_deref() == Some(&large[..]),
        "large SET through the proxy was altered"
    );
}

#[test]
fn many_arguments_in_one_request() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();
    let n = 5000;
    let mut args: Vec<String> = vec!["MSET".into()];
    for i in 0..n {
        args.push(format!("m:{i}"));
        args.push(format!("value-of-m:{i}"));
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    c.roundtrip(&refs, OK);
    let mut mget: Vec<String> = vec!["MGET".into()];
    let mut expected = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        mget.push(format!("m:{i}"));
        expected.extend(bulk(format!("value-of-m:{i}")));
    }
    let refs: Vec<&str> = mget.iter().map(|s| s.as_str()).collect();
    c.roundtrip(&refs, &expected);
    assert_eq!(
        redis.get("m:4999").as_deref(),
        Some(&b"value-of-m:4999"[..])
    );
}

#[test]
fn several_clients_at_once() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    for i in 0..50 {
        redis.set(&format!("shared:{i}"), format!("value-of-shared:{i}"));
    }
    let port = proxy.port();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Conn::connect(port);
                let mut rng = Rng::new(t + 1);
                for n in 0..300 {
                    match rng.below(4) {
                        0 | 1 => {
                            let k = format!("shared:{}", rng.below(50));
                            c.roundtrip(&["GET", &k], &bulk(format!("value-of-{k}")));
                        }
                        2 => {
                            let k = format!("own:{t}:{n}");
                            c.roundtrip(&["SET", &k, &format!("value-of-{k}")], OK);
                        }
                        _ => {
                            let m = format!("client {t} message {n}");
                            c.roundtrip(&["ECHO", &m], &bulk(&m));
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread failed");
    }
}

#[test]
fn redis_rs_client_works_through_the_proxy() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("rs:a", "alpha");
    // redis-rs pipelines CLIENT SETINFO on connect.
    let mut con = proxy.redis_conn();
    let v: Option<String> = redis::cmd("GET").arg("rs:a").query(&mut con).unwrap();
    assert_eq!(v.as_deref(), Some("alpha"));
    let v: Option<String> = redis::cmd("GET").arg("rs:none").query(&mut con).unwrap();
    assert_eq!(v, None);
    let n: i64 = redis::cmd("INCR").arg("rs:n").query(&mut con).unwrap();
    assert_eq!(n, 1);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let (a, b, c): (Option<String>, i64, String) = redis::pipe()
        .cmd("GET")
        .arg("rs:a")
        .cmd("INCR")
        .arg("rs:n")
        .cmd("ECHO")
        .arg("echoed")
        .query(&mut con)
        .unwrap();
    assert_eq!((a.as_deref(), b, c.as_str()), (Some("alpha"), 2, "echoed"));
    let err = redis::cmd("NOSUCHCOMMAND")
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    let v: Option<String> = redis::cmd("GET").arg("rs:a").query(&mut con).unwrap();
    assert_eq!(v.as_deref(), Some("alpha"));
}
