//! A stampede on one cold key: many clients GET the same uncached key at
//! once, and Redis sees that GET once. Counted with Redis's own
//! `INFO commandstats`, which sidecache's PTTLs do not touch.

#[macro_use]
mod common;

use common::*;

const CLIENTS: usize = 1000;

/// Redis's count of GET calls since its last CONFIG RESETSTAT.
fn get_calls(redis: &RedisServer) -> u64 {
    let info = String::from_utf8_lossy(&redis.raw(&["INFO", "commandstats"])).into_owned();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
        .map(|rest| rest.split(',').next().unwrap_or("0").parse().unwrap())
        .unwrap_or(0)
}

fn start_serving(redis: &RedisServer, extra: &[&str]) -> Sidecache {
    let proxy = Sidecache::start(redis.port(), extra);
    proxy.wait_serving();
    proxy
}

/// Sends `request` on every connection, as close together as one thread
/// can, then checks every reply.
fn stampede(clients: &mut [Conn], request: &[u8], reply: &[u8]) {
    for c in clients.iter_mut() {
        c.send(request);
    }
    for c in clients.iter_mut() {
        c.expect(reply);
    }
}

#[test]
fn a_stampede_on_a_cold_key_costs_redis_one_get() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_serving(&redis, &[]);
    let value = "v".repeat(1000);
    redis.set("cold", &value);
    let mut clients: Vec<Conn> = (0..CLIENTS).map(|_| proxy.connect()).collect();
    for c in clients.iter_mut() {
        c.ping();
    }
    redis.raw(&["CONFIG", "RESETSTAT"]);
    stampede(&mut clients, &cmd(&["GET", "cold"]), &bulk(&value));
    assert_eq!(get_calls(&redis), 1, "{CLIENTS} GETs of one cold key");

    // A cold key that does not exist: the nil is shared too.
    stampede(&mut clients, &cmd(&["GET", "nothing"]), NIL);
    assert_eq!(get_calls(&redis), 2);

    // Both protocols: RESP3 clients share a GET on their own connection to Redis.
    for c in clients.iter_mut().take(CLIENTS / 2) {
        c.send_cmd(&["HELLO", "3"]);
        c.read_reply3_raw();
    }
    let (resp3, resp2) = clients.split_at_mut(CLIENTS / 2);
    stampede(resp2, &cmd(&["GET", "nothing2"]), NIL);
    stampede(resp3, &cmd(&["GET", "nothing3"]), b"_\r\n");
    assert_eq!(get_calls(&redis), 4);
    // Once filled, one entry serves both protocols: no GET at all.
    stampede(resp3, &cmd(&["GET", "nothing2"]), b"_\r\n");
    stampede(resp2, &cmd(&["GET", "cold"]), &bulk(&value));
    assert_eq!(get_calls(&redis), 4);
}

/// Sharing never outlives a write: a GET sent after a write of its key,
/// through sidecache or reported by Redis, never gets the reply of a GET
/// sent before that write.
#[test]
fn a_write_ends_the_sharing() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = start_serving(&redis, &[]);
    let mut writer = proxy.connect();
    let mut readers: Vec<Conn> = (0..20).map(|_| proxy.connect()).collect();
    for round in 0..200 {
        let key = format!("k{round}");
        let old = format!("old{round}");
        let new = format!("new{round}");
        redis.set(&key, &old);
        // One reader's GET goes out; the writer's SET and the other
        // readers' GETs follow while it may still be in flight.
        readers[0].send_cmd(&["GET", &key]);
        writer.send_cmd(&["SET", &key, &new]);
        writer.expect(OK);
        for r in readers.iter_mut().skip(1) {
            r.send_cmd(&["GET", &key]);
        }
        let first = readers[0].read_reply().bulk_str();
        assert!(
            first.as_deref() == Some(old.as_str()) || first.as_deref() == Some(new.as_str()),
            "round {round}: {first:?}"
        );
        for r in readers.iter_mut().skip(1) {
            // Sent after the writer saw its reply: read-your-writes for everyone.
            r.expect(&bulk(&new));
        }
    }
}
