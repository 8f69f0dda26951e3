//! sidecache against a Redis with a password, an ACL user and a database
//! other than 0: every connection it opens (shared, invalidation, pinned,
//! pub/sub) logs in and selects the database, on every reconnect too; wrong
//! credentials give clients an error that names the cause, not a hang.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

const PASSWORD: &str = "redis-secret";
const USER: &str = "app";
const USER_PASSWORD: &str = "app-secret";

/// A direct connection to Redis, logged in as the default user.
fn admin(redis: &RedisServer) -> Conn {
    let mut c = Conn::connect(redis.port());
    c.roundtrip(&["AUTH", PASSWORD], OK);
    c
}

/// Redis with `requirepass` and an ACL user allowed everything.
fn protected_redis() -> RedisServer {
    let redis = RedisServer::start();
    let mut c = Conn::connect(redis.port());
    c.roundtrip(&["CONFIG", "SET", "requirepass", PASSWORD], OK);
    c.roundtrip(&["AUTH", PASSWORD], OK);
    c.roundtrip(
        &[
            "ACL",
            "SETUSER",
            USER,
            "on",
            &format!(">{USER_PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ],
        OK,
    );
    redis
}

/// Everything a client can do works through `proxy`, in database `db`.
fn everything_works(redis: &RedisServer, proxy: &Sidecache, db: u32) {
    let mut direct = admin(redis);
    direct.roundtrip(&["SELECT", &db.to_string()], OK);
    direct.send_cmd(&["DEL", "n", "q"]);
    direct.read_reply_raw();
    let mut c = proxy.connect();
    c.roundtrip(&["SET", "k", "v1"], OK);
    direct.roundtrip(&["GET", "k"], &bulk("v1"));
    c.roundtrip(&["GET", "k"], &bulk("v1"));
    // Cached, and kept coherent by tracking (the invalidation connection logged in).
    direct.roundtrip(&["SET", "k", "v2"], OK);
    let seen = poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
        c.send_cmd(&["GET", "k"]);
        (c.read_reply_raw() == bulk("v2")).then_some(())
    });
    assert!(seen.is_some(), "a direct write was never seen");
    // A transaction on a pinned connection, in the same database.
    c.roundtrip(&["MULTI"], OK);
    c.roundtrip(&["INCR", "n"], b"+QUEUED\r\n");
    c.roundtrip(&["EXEC"], b"*1\r\n:1\r\n");
    direct.roundtrip(&["GET", "n"], &bulk("1"));
    // A blocking call on a pinned connection.
    direct.roundtrip(&["RPUSH", "q", "job"], &int(1));
    c.roundtrip(&["BLPOP", "q", "1"], b"*2\r\n$1\r\nq\r\n$3\r\njob\r\n");
    // Pub/sub on its own connection.
    let mut sub = proxy.connect();
    sub.roundtrip(
        &["SUBSCRIBE", "ch"],
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    direct.roundtrip(&["PUBLISH", "ch", "hi"], &int(1));
    sub.expect(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
    // SELECT of the database served, and no other.
    c.roundtrip(&["SELECT", &db.to_string()], OK);
    c.send_cmd(&["SELECT", &(db + 1).to_string()]);
    let e = c.read_error();
    assert!(e.contains(&format!("only database {db} is served")), "{e}");
    // AUTH from a client is sidecache's business, never Redis's.
    c.send_cmd(&["AUTH", PASSWORD]);
    c.read_error();
    c.roundtrip(&["GET", "k"], &bulk("v2"));
}

#[test]
fn default_user_password_in_the_address() {
    skip_in_direct_mode!();
    let redis = protected_redis();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
    let proxy = Sidecache::start_with(|port| listen_args(port, &url, &[]));
    proxy.wait_serving();
    everything_works(&redis, &proxy, 0);
    assert!(!proxy.stderr().contains(PASSWORD), "{}", proxy.stderr());
}

#[test]
fn acl_user_and_database_and_reconnects_log_in_again() {
    skip_in_direct_mode!();
    let redis = protected_redis();
    let url = format!(
        "redis://{USER}:{USER_PASSWORD}@127.0.0.1:{}/3",
        redis.port()
    );
    let proxy = Sidecache::start_with(|port| listen_args(port, &url, &[]));
    proxy.wait_serving();
    everything_works(&redis, &proxy, 3);
    // Every connection of sidecache's is the ACL user's.
    let mut direct = admin(&redis);
    direct.send_cmd(&["CLIENT", "LIST"]);
    let list = direct.read_reply().bulk_str().unwrap();
    for line in list.lines().filter(|l| l.contains("name=sidecache")) {
        assert!(line.contains(&format!(" user={USER} ")), "{line}");
        assert!(line.contains(" db=3 "), "{line}");
    }
    // Kill them all: sidecache logs in and selects again on reconnect.
    direct.send_cmd(&["CLIENT", "KILL", "USER", USER]);
    direct.read_reply_raw();
    proxy.wait_serving();
    let mut c = proxy.connect();
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        c.send_cmd(&["SET", "after", "kill"]);
        (c.read_reply_raw() == OK).then_some(())
    });
    assert!(ok.is_some(), "no reconnect:\n{}", proxy.stderr());
    direct.roundtrip(&["SELECT", "3"], OK);
    direct.roundtrip(&["GET", "after"], &bulk("kill"));
    everything_works(&redis, &proxy, 3);
}

#[test]
fn password_from_the_environment() {
    skip_in_direct_mode!();
    let redis = protected_redis();
    let proxy = Sidecache::start_with_env(&[("SIDECACHE_REDIS_PASSWORD", PASSWORD)], |port| {
        listen_args(port, &format!("127.0.0.1:{}", redis.port()), &[])
    });
    proxy.wait_serving();
    everything_works(&redis, &proxy, 0);
}

#[test]
fn wrong_credentials_are_named_to_clients_and_in_the_log() {
    skip_in_direct_mode!();
    let redis = protected_redis();
    let url = format!("redis://:not-it@127.0.0.1:{}", redis.port());
    let proxy = Sidecache::start_with(|port| listen_args(port, &url, &[]));
    let mut c = proxy.connect();
    for args in [
        &["GET", "k"][..],
        &["SET", "k", "v"][..],
        &["BLPOP", "q", "0"][..],
        &["SUBSCRIBE", "ch"][..],
    ] {
        // Every request gets an answer; once Redis has refused the login,
        // the answer says so.
        let named = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            c.send_cmd(args);
            let e = c.read_error();
            assert!(e.starts_with("ERR backend unavailable"), "{args:?}: {e}");
            e.contains("Redis refused sidecache's AUTH: WRONGPASS")
                .then_some(())
        });
        assert!(named.is_some(), "{args:?}: the cause was never named");
    }
    let log = proxy.stderr();
    assert!(
        log.contains("Redis refused sidecache's AUTH: WRONGPASS"),
        "{log}"
    );
    assert!(!log.contains("not-it"), "{log}");
}
