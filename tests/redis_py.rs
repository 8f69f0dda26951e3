//! redis-py 8, a real client library, through sidecache: the scenarios in
//! `tests/redis_py/scenarios.py` must all pass with redis-py's default
//! settings (RESP3 since redis-py 8) and with `protocol=2`.
//!
//! Each run first checks the scenarios against Redis itself (`--direct`), so
//! that a failure through sidecache is sidecache's, not the script's.
//!
//! The scenarios come in groups (`--group` of the script): `core` runs in
//! `redis_py_with_*`, `contention` (20 threads adding to one counter with
//! WATCH/MULTI/EXEC retries) in `redis_py_contention_*`.
//!
//! Needs `python3` with redis-py >= 8 (`python3 -m pip install 'redis>=8'`;
//! `scripts/test` installs it). Without them these tests fail, they do not
//! skip.

#[macro_use]
mod common;

use common::*;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// A whole scenario run takes about a second; the script itself gives up
/// on a scenario after 10 s and on the run after about 50 s. This only stops
/// a hang of the script itself.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// The script has at least this many `core` scenarios, and runs them all through sidecache.
const MIN_SCENARIOS: u32 = 28;
/// The same for the `contention` group.
const MIN_CONTENTION_SCENARIOS: u32 = 1;

const INSTALL_HINT: &str = "install it with `python3 -m pip install 'redis>=8'` \
     (add --break-system-packages for Debian's own python3), or run scripts/test, which does";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/redis_py/scenarios.py")
}

fn text(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test, with how to install them, unless python3 and redis-py
/// >= 8 are there.
fn require_redis_py() -> String {
    let python = which("python3").unwrap_or_else(|| {
        panic!(
            "python3 not found on PATH: these tests need python3 with redis-py >= 8; \
             install python3 and pip (`apt-get install python3 python3-pip`), then redis-py: {INSTALL_HINT}"
        )
    });
    let python = python.to_string_lossy().into_owned();
    let check = run_with_timeout(
        &python,
        &[
            "-c",
            "import redis, sys; print(redis.__version__); \
             sys.exit(int(redis.__version__.split('.')[0]) < 8)",
        ],
        RUN_TIMEOUT,
    );
    assert!(
        check.status.success(),
        "{python} has no redis-py >= 8 (found: {}): {INSTALL_HINT}\n{}",
        String::from_utf8_lossy(&check.stdout).trim(),
        text(&check)
    );
    python
}

/// Runs the scenarios; returns the output, asserting that they all passed.
#[track_caller]
fn run_scenarios(
    python: &str,
    port: u16,
    redis_port: u16,
    protocol: u8,
    group: &str,
    min_scenarios: u32,
    direct: bool,
) -> String {
    let port = port.to_string();
    let redis_port = redis_port.to_string();
    let protocol = protocol.to_string();
    let script = script();
    let mut args = vec![
        script.to_str().unwrap(),
        "--port",
        &port,
        "--redis-port",
        &redis_port,
        "--protocol",
        &protocol,
        "--group",
        group,
    ];
    if direct {
        args.push("--direct");
    }
    let out = run_with_timeout(python, &args, RUN_TIMEOUT);
    let all = text(&out);
    let against = if direct {
        "directly against Redis (so the scenarios or redis-py are at fault, not sidecache)"
    } else {
        "through sidecache"
    };
    assert!(
        out.status.success(),
        "redis-py scenarios (group {group}, protocol {protocol}) failed {against}:\n{all}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: Option<u32> = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok());
    assert!(
        direct || passed.is_some_and(|n| n >= min_scenarios),
        "expected at least {min_scenarios} {group} scenarios passed and none failed, the summary says {summary:?}:\n{all}"
    );
    eprintln!("{stdout}");
    stdout
}

fn scenarios_pass(protocol: u8, group: &str, min_scenarios: u32) {
    let python = require_redis_py();
    let redis = RedisServer::start();
    run_scenarios(
        &python,
        redis.port(),
        redis.port(),
        protocol,
        group,
        min_scenarios,
        true,
    );
    let proxy = Sidecache::start(redis.port(), &[]);
    run_scenarios(
        &python,
        proxy.port(),
        redis.port(),
        protocol,
        group,
        min_scenarios,
        direct_mode(),
    );
}

/// redis-py's defaults: no `protocol` is passed, so this is RESP3 (the
/// script checks that HELLO says so).
#[test]
fn redis_py_with_default_settings_resp3() {
    scenarios_pass(3, "core", MIN_SCENARIOS);
}

#[test]
fn redis_py_with_protocol_2() {
    scenarios_pass(2, "core", MIN_SCENARIOS);
}

// Through a debug build, 20 threads retrying WATCH/MULTI/EXEC take about
// 15 s, past the script's 10 s per scenario (release: about 2 s, as direct):
// each read from a connection to Redis zero-fills 64 KiB byte by byte
// (`Backend::read`), about 0.25 ms per forwarded request without
// optimisation. `SIDECACHE_BIN=target/release/sidecache` runs them now.
#[test]
fn redis_py_contention_with_default_settings_resp3() {
    scenarios_pass(3, "contention", MIN_CONTENTION_SCENARIOS);
}

#[test]
fn redis_py_contention_with_protocol_2() {
    scenarios_pass(2, "contention", MIN_CONTENTION_SCENARIOS);
}
