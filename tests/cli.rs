//! The command line, signals, and a real client (redis-cli).

#[macro_use]
mod common;

use common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const QUICK: Duration = Duration::from_secs(5);

fn run(args: &[&str]) -> std::process::Output {
    run_with_timeout(&sidecache_bin(), args, QUICK)
}

#[test]
fn help_exits_zero_and_mentions_every_flag() {
    skip_in_direct_mode!();
    let out = run(&["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "--help: {:?}\n{stdout}",
        out.status
    );
    for flag in [
        "--listen",
        "--redis",
        "--capacity",
        "--ttl",
        "--help",
        "--version",
    ] {
        assert!(
            stdout.contains(flag),
            "--help output does not mention {flag}:\n{stdout}"
        );
    }
}

#[test]
fn version_prints_the_version() {
    skip_in_direct_mode!();
    let out = run(&["--version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "--version: {:?}", out.status);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version output lacks {}: {stdout:?}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn bad_flags_and_values_exit_2_with_one_line_naming_them() {
    skip_in_direct_mode!();
    // Addresses that are free, so that a binary that wrongly starts does not
    // collide with anything (it is killed after the timeout).
    let listen = format!("127.0.0.1:{}", free_port());
    let redis = format!("127.0.0.1:{}", free_port());
    // (arguments, a word the error line must contain)
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--bogus"], vec!["bogus"]),
        (vec!["--bogus=1"], vec!["bogus"]),
        (vec!["-x"], vec!["-x"]),
        (vec!["stray-positional"], vec!["stray-positional"]),
        (vec!["--ttl"], vec!["ttl"]),
        (vec!["--ttl", "abc"], vec!["ttl", "abc"]),
        (vec!["--ttl=abc"], vec!["ttl", "abc"]),
        (vec!["--ttl", "10x"], vec!["ttl", "10x"]),
        (vec!["--ttl", "-5"], vec!["ttl", "-5"]),
        (vec!["--ttl", "ms"], vec!["ttl", "ms"]),
        (vec!["--ttl", ""], vec!["ttl"]),
        (vec!["--capacity", "lots"], vec!["capacity", "lots"]),
        (vec!["--capacity", "-1"], vec!["capacity", "-1"]),
        (vec!["--capacity"], vec!["capacity"]),
        (
            vec!["--redis", "127.0.0.1:notaport"],
            vec!["redis", "notaport"],
        ),
        (vec!["--redis", "127.0.0.1:99999"], vec!["redis", "99999"]),
    ];
    for (args, words) in cases {
        let mut full: Vec<&str> = Vec::new();
        if !args.iter().any(|a| a.starts_with("--redis")) {
            full.extend(["--redis", &redis]);
        }
        full.extend(["--listen", &listen]);
        full.extend(&args);
        check_usage_error(&full, &words);
    }
    for (args, words) in [
        (
            vec!["--listen", "not-an-address"],
            vec!["listen", "not-an-address"],
        ),
        (vec!["--listen", "127.0.0.1:99999"], vec!["listen", "99999"]),
        (vec!["--listen"], vec!["listen"]),
    ] {
        let mut full = args.clone();
        full.extend(["--redis", &redis]);
        check_usage_error(&full, &words);
    }
}

#[track_caller]
fn check_usage_error(args: &[&str], words: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`sidecache {}` should exit 2, got {:?}; stderr: {stderr:?}",
        args.join(" "),
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "`sidecache {}` should print one line on stderr, printed {stderr:?}",
        args.join(" ")
    );
    assert!(
        words.iter().any(|w| lines[0].contains(w)),
        "`sidecache {}`: stderr line {:?} names none of {words:?}",
        args.join(" "),
        lines[0]
    );
}

#[test]
fn good_values_are_accepted() {
    skip_in_direct_mode!();
    let redis_port = free_port(); // no Redis needed for PING
    for extra in [
        &["--ttl", "10"][..],
        &["--ttl=10"],
        &["--ttl", "250ms"],
        &["--ttl", "2s"],
        &["--ttl", "1m"],
        &["--ttl", "1h"],
        &["--ttl", "0"],
        &["--capacity", "1"],
        &["--capacity=0"],
        &["--capacity", "1000000", "--ttl", "5s"],
    ] {
        let proxy = Sidecache::start(redis_port, extra);
        let mut c = proxy.connect();
        c.ping();
    }
    // `=` forms of --listen and --redis.
    let proxy = Sidecache::start_with(|port| {
        vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--redis=127.0.0.1:{redis_port}"),
        ]
    });
    proxy.connect().ping();
}

#[test]
fn sigterm_flushes_owed_replies_and_exits_zero() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let mut proxy = Sidecache::start(redis.port(), &[]);
    redis.set("k", "owed value");
    let mut c = proxy.connect();
    c.ping();
    // The reply is owed: the request sits, forwarded, in a frozen Redis.
    redis.pause();
    c.send(&cmd(&["GET", "k"]));
    c.send(&cmd(&["PING", "after"]));
    wait_unread_bytes_at(redis.port(), cmd(&["GET", "k"]).len() as u64);
    let t = Instant::now();
    proxy.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    redis.resume();
    c.expect(&bulk("owed value"));
    c.expect(&bulk("after"));
    c.expect_eof();
    let status = proxy.wait_exit(QUICK);
    assert!(
        status.is_some(),
        "sidecache still running {:?} after SIGTERM",
        t.elapsed()
    );
    assert_eq!(status.unwrap().code(), Some(0), "exit status after SIGTERM");
    assert!(
        TcpStream::connect(proxy.addr()).is_err(),
        "port still accepts connections after exit"
    );
}

#[test]
fn sigterm_does_not_wait_forever_for_a_stuck_redis() {
    skip_in_direct_mode!();
    let mut redis = RedisServer::start();
    let mut proxy = Sidecache::start(redis.port(), &[]);
    let mut c = proxy.connect();
    c.ping();
    redis.pause(); // and never resumed
    c.send(&cmd(&["GET", "k"]));
    wait_unread_bytes_at(redis.port(), cmd(&["GET", "k"]).len() as u64);
    let t = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(6));
    assert!(status.is_some(), "sidecache still running 6s after SIGTERM");
    assert_eq!(status.unwrap().code(), Some(0), "exit status after SIGTERM");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        t.elapsed()
    );
    c.read_until_eof(); // whatever it said, the connection is closed
    assert!(
        TcpStream::connect(proxy.addr()).is_err(),
        "port still accepts connections"
    );
}

#[test]
fn sigint_and_sigterm_when_idle_exit_zero_quickly() {
    skip_in_direct_mode!();
    let redis = RedisServer::start();
    for sig in ["INT", "TERM"] {
        let mut proxy = Sidecache::start(redis.port(), &[]);
        let mut c = proxy.connect();
        c.roundtrip(&["GET", "k"], NIL);
        let t = Instant::now();
        proxy.signal(sig);
        let status = proxy.wait_exit(QUICK);
        assert!(status.is_some(), "still running {QUICK:?} after SIG{sig}");
        assert_eq!(
            status.unwrap().code(),
            Some(0),
            "exit status after SIG{sig}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "SIG{sig} exit took {:?}",
            t.elapsed()
        );
        c.read_until_eof();
        assert!(
            TcpStream::connect(proxy.addr()).is_err(),
            "port still accepts after SIG{sig}"
        );
    }
}

#[test]
fn redis_cli_works_through_the_proxy() {
    let cli = which("redis-cli").unwrap_or_else(|| {
        panic!(
            "redis-cli not found: install it with `apt-get install redis-tools` (Debian; \
             redis-server pulls it in) or `brew install redis` (macOS)"
        )
    });
    let cli = cli.to_str().unwrap();
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    redis.set("name", "Robert Kevin");
    let port = proxy.port().to_string();
    let run_cli = |args: &[&str]| {
        let mut full = vec!["-h", "127.0.0.1", "-p", &port];
        full.extend(args);
        let out = run_with_timeout(cli, &full, QUICK);
        assert!(out.status.success(), "redis-cli {args:?}: {:?}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run_cli(&["ping"]), "PONG\n");
    assert_eq!(run_cli(&["get", "name"]), "Robert Kevin\n");
    assert_eq!(run_cli(&["set", "via-cli", "1"]), "OK\n");
    assert_eq!(run_cli(&["incr", "via-cli"]), "2\n");
    assert_eq!(run_cli(&["echo", "hi there"]), "hi there\n");
    assert_eq!(redis.get("via-cli").as_deref(), Some(&b"2"[..]));
}
