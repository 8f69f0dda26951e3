//! Operations: client authentication (`--requirepass`), flags from the
//! environment (`SIDECACHE_<FLAG>`), log levels, the start-up line.

#[macro_use]
mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "correct horse";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";

fn args(redis_port: u16, extra: &'static [&'static str]) -> impl Fn(u16) -> Vec<String> {
    let redis = format!("127.0.0.1:{redis_port}");
    move |port| listen_args(port, &redis, extra)
}

fn auth_calls(redis: &RedisServer) -> String {
    let info = String::from_utf8_lossy(&redis.raw(&["INFO", "commandstats"])).into_owned();
    info.lines()
        .find(|l| l.starts_with("cmdstat_auth:"))
        .unwrap_or("none")
        .to_string()
}

/// What a client may do before and after AUTH, against one sidecache.
fn check_password_gate(proxy: &Sidecache, redis: &RedisServer) {
    redis.set("k", "v");
    let mut c = proxy.connect();
    c.roundtrip(&["GET", "k"], NOAUTH);
    c.roundtrip(&["SET", "k", "x"], NOAUTH);
    c.roundtrip(&["MULTI"], NOAUTH);
    c.roundtrip(&["SUBSCRIBE", "ch"], NOAUTH);
    c.roundtrip(&["PING"], PONG);
    c.roundtrip(&["AUTH", "wrong"], WRONGPASS);
    c.roundtrip(&["AUTH", "default", "wrong"], WRONGPASS);
    c.roundtrip(&["AUTH", "someone", PASSWORD], WRONGPASS);
    c.roundtrip(&["GET", "k"], NOAUTH);
    c.roundtrip(&["AUTH", PASSWORD], OK);
    c.roundtrip(&["GET", "k"], &bulk("v"));
    // RESET logs out.
    c.roundtrip(&["RESET"], b"+RESET\r\n");
    c.roundtrip(&["GET", "k"], NOAUTH);
    c.roundtrip(&["AUTH", "default", PASSWORD], OK);
    c.roundtrip(&["GET", "k"], &bulk("v"));
    assert_eq!(
        redis.get("k").as_deref(),
        Some(&b"v"[..]),
        "no write got through"
    );

    // HELLO: nothing without credentials; with them, authenticated at once.
    let mut h = proxy.connect();
    let e = {
        h.send_cmd(&["HELLO", "3"]);
        h.read_error()
    };
    assert!(
        e.starts_with("NOAUTH HELLO must be called with the client already authenticated"),
        "{e}"
    );
    h.roundtrip(&["HELLO", "3", "AUTH", "default", "wrong"], WRONGPASS);
    h.send_cmd(&["HELLO", "3", "AUTH", "default", PASSWORD]);
    let hello = h.read_reply3_raw();
    assert!(hello.starts_with(b"%7\r\n"), "{}", escape(&hello));
    h.send_cmd(&["GET", "nothing"]);
    assert_eq!(h.read_reply3_raw(), b"_\r\n");

    // QUIT is allowed before AUTH.
    let mut q = proxy.connect();
    q.roundtrip(&["QUIT"], OK);
    q.expect_eof();

    assert_eq!(
        auth_calls(redis),
        "none",
        "AUTH is never forwarded to Redis"
    );
}

#[test]
fn requirepass_gates_every_command_but_auth_hello_ping_quit() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &["--requirepass", PASSWORD]);
    check_password_gate(&proxy, &redis);
    assert!(
        !proxy.stderr().contains(PASSWORD),
        "the password must not appear in the log:\n{}",
        proxy.stderr()
    );
}

#[test]
fn requirepass_from_the_environment() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let proxy = Sidecache::start_with_env(
        &[("SIDECACHE_REQUIREPASS", PASSWORD)],
        args(redis.port(), &[]),
    );
    check_password_gate(&proxy, &redis);
    let log = proxy.stderr();
    assert!(log.contains("--requirepass (set)"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}

/// Without --requirepass, AUTH answers as a Redis without a password does.
#[test]
fn auth_without_a_password_answers_as_redis() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    let mut direct = Conn::connect(redis.port());
    let mut through = proxy.connect();
    for args in [
        &["AUTH", "pw"][..],
        &["AUTH", "default", "anything"][..],
        &["AUTH", "someone", "pw"][..],
        &["AUTH"][..],
        &["AUTH", "a", "b", "c"][..],
        &["HELLO", "2", "AUTH", "default", "anything"][..],
        &["HELLO", "2", "AUTH", "someone", "pw"][..],
    ] {
        direct.send_cmd(args);
        through.send_cmd(args);
        let (d, t) = (direct.read_reply_raw(), through.read_reply_raw());
        if args[0] == "HELLO" && d.starts_with(b"*") {
            // HELLO's reply differs by id and version; its success must not.
            assert!(t.starts_with(b"*14\r\n"), "{args:?}: {}", escape(&t));
        } else {
            assert_eq!(escape(&t), escape(&d), "{args:?}");
        }
    }
}

#[test]
fn flags_come_from_the_environment_and_the_command_line_wins() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    // SIDECACHE_MAX_CLIENTS=1: a second client is refused.
    let proxy =
        Sidecache::start_with_env(&[("SIDECACHE_MAX_CLIENTS", "1")], args(redis.port(), &[]));
    // The harness's own probe connection may still hold the one slot for
    // a moment: retry until a client gets in.
    let mut first = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        let mut c = proxy.connect();
        c.send_cmd(&["PING"]);
        (c.read_reply_raw() == PONG).then_some(c)
    })
    .expect("one client is accepted");
    first.ping();
    let mut second = proxy.connect();
    assert_eq!(
        second.read_until_eof(),
        b"-ERR max number of clients reached\r\n"
    );
    drop(proxy);
    // The flag wins over the environment. (3, not 2: the harness's own
    // probe connection may not have been seen closing yet.)
    let proxy = Sidecache::start_with_env(
        &[("SIDECACHE_MAX_CLIENTS", "1")],
        args(redis.port(), &["--max-clients", "3"]),
    );
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    a.ping();
    b.ping();
}

#[test]
fn a_bad_environment_value_is_named_and_exits_2() {
    let out = Command::new(sidecache_bin())
        .env("SIDECACHE_LOG_LEVEL", "chatty")
        .arg("--listen")
        .arg("127.0.0.1:1")
        .output()
        .expect("run sidecache");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SIDECACHE_LOG_LEVEL") && err.contains("chatty"),
        "{err}"
    );
}

#[test]
fn log_levels_and_the_start_up_line() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    let wait_connect_line = |proxy: &Sidecache, want: bool| {
        let mut c = proxy.connect();
        c.ping();
        drop(c);
        if want {
            poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
                let log = proxy.stderr();
                (log.contains(" DEBUG client ") && log.contains(" closed")).then_some(())
            })
            .unwrap_or_else(|| panic!("no client lines at debug:\n{}", proxy.stderr()));
        }
    };

    let info = Sidecache::start(redis.port(), &[]);
    wait_connect_line(&info, false);
    let log = info.stderr();
    assert!(
        log.contains(" INFO configuration: --listen 127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains("--log-level info"), "{log}");
    assert!(
        !log.contains(" DEBUG "),
        "nothing per connection at info:\n{log}"
    );

    let debug = Sidecache::start(redis.port(), &["--log-level", "debug"]);
    wait_connect_line(&debug, true);

    let warn = Sidecache::start(redis.port(), &["--log-level", "warn"]);
    wait_connect_line(&warn, false);
    assert!(
        !warn.stderr().contains(" INFO "),
        "only warnings and errors at warn:\n{}",
        warn.stderr()
    );
}

/// `--busy-poll`: sidecache keeps polling while requests flow (its CPU time
/// shows it) and sleeps again once they stop, answering right meanwhile.
#[test]
fn busy_poll_spins_while_requests_flow_and_sleeps_when_they_stop() {
    let redis = RedisServer::start();
    // 20 ms: a request every 5 ms keeps it polling the whole time.
    let proxy = Sidecache::start(redis.port(), &["--busy-poll", "20000"]);
    redis.set("k", "v");
    let mut c = proxy.connect();
    let flowing = Duration::from_millis(500);
    let cpu_before = cpu_time(proxy.pid());
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < flowing {
        c.roundtrip(&["GET", "k"], &bulk("v"));
        c.roundtrip(&["SET", "n", &sent.to_string()], b"+OK\r\n");
        sent += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let busy = (cpu_time(proxy.pid()) - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    // Asleep between requests it would use about 1%; polling, most of a
    // CPU. A third leaves room for a machine busy with other tests.
    assert!(
        busy > 0.3,
        "sidecache used {:.0}% of a CPU while requests flowed with --busy-poll",
        busy * 100.0
    );
    assert_eq!(redis.get("n"), Some((sent - 1).to_string().into_bytes()));

    // Once traffic stops it sleeps within the 20 ms window (and a clock
    // tick of /proc's accounting): over a quiet second, next to nothing.
    std::thread::sleep(Duration::from_millis(100));
    let quiet_from = cpu_time(proxy.pid());
    std::thread::sleep(Duration::from_secs(1));
    let quiet = cpu_time(proxy.pid()) - quiet_from;
    assert!(
        quiet < Duration::from_millis(50),
        "sidecache used {quiet:?} of CPU in a quiet second with --busy-poll"
    );
    c.roundtrip(&["GET", "k"], &bulk("v"));
}
