//! End to end: one GET round trip from a client through a real sidecache to a
//! real redis-server, as a cache hit and as a miss, next to the same GET sent
//! to Redis directly. One blocking connection, one request in flight, 100-byte
//! value, all on loopback.
//!
//! Needs `redis-server` on PATH. Without it the bench says so on stderr and
//! measures nothing (it does not fail).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

const KEY: &[u8] = b"e2e:key";
const VALUE: [u8; 100] = [b'x'; 100];
/// How long a process gets to start, and a reply to arrive.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A child process, killed and reaped on drop (also when the bench panics),
/// its output in a log file that is removed with it.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command) -> Process {
        let log = std::env::temp_dir().join(format!(
            "sidecache-e2e-bench-{}-{name}.log",
            std::process::id()
        ));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { name, child, log }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Calls `ready` until it returns true; panics, with the process's output,
    /// if the process exits or `TIMEOUT` passes first.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Process) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if ready(self) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("{} exited ({status}):\n{}", self.name, self.output());
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not {what} after {TIMEOUT:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Sends `request` and reads exactly `reply.len()` bytes back into `reply`.
fn round_trip(stream: &mut TcpStream, request: &[u8], reply: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(request)?;
    stream.read_exact(reply)
}

/// One round trip on a fresh connection, with a short read timeout: true if
/// the reply is `expected`. For waiting until a server is ready.
fn answers(addr: SocketAddr, request: &[u8], expected: &[u8]) -> bool {
    let Ok(mut stream) = connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = vec![0; expected.len()];
    round_trip(&mut stream, request, &mut reply).is_ok() && reply == expected
}

/// Redis's count of GET calls, from `INFO commandstats` (a bulk string).
fn redis_get_calls(redis: SocketAddr) -> u64 {
    let mut stream = connect(redis).expect("connect to redis-server");
    stream
        .write_all(&command(&[b"INFO", b"commandstats"]))
        .unwrap();
    let mut header = Vec::new();
    let mut byte = [0];
    while !header.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).unwrap();
        header.push(byte[0]);
    }
    let len: usize = std::str::from_utf8(&header[1..header.len() - 2])
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("INFO reply {:?}", String::from_utf8_lossy(&header)));
    let mut body = vec![0; len + 2];
    stream.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

fn start_redis() -> (Process, SocketAddr) {
    let addr = free_addr();
    let mut redis = Process::spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &addr.port().to_string()])
            .current_dir(std::env::temp_dir()),
    );
    let ping = command(&[b"PING"]);
    redis.wait_until("answering PING", |_| answers(addr, &ping, b"+PONG\r\n"));
    (redis, addr)
}

fn start_sidecache(redis: SocketAddr, extra: &[&str]) -> (Process, SocketAddr) {
    let addr = free_addr();
    let process = Process::spawn(
        "sidecache",
        Command::new(env!("CARGO_BIN_EXE_sidecache"))
            .args(["--listen", &addr.to_string(), "--redis", &redis.to_string()])
            .args(extra),
    );
    (process, addr)
}

fn bench_e2e(c: &mut Criterion) {
    if !on_path("redis-server") {
        eprintln!("e2e bench skipped: redis-server not found (apt-get install redis-server)");
        return;
    }
    // Declared first, so dropped last: the sidecaches go before their Redis.
    let (_redis, redis) = start_redis();
    let get = command(&[b"GET", KEY]);
    let mut expected = format!("${}\r\n", VALUE.len()).into_bytes();
    expected.extend_from_slice(&VALUE);
    expected.extend_from_slice(b"\r\n");
    assert!(
        answers(redis, &command(&[b"SET", KEY, &VALUE]), b"+OK\r\n"),
        "SET in redis-server failed"
    );

    // A caching sidecache, ready once it says it serves GETs from its cache.
    let (mut caching, caching_addr) = start_sidecache(redis, &[]);
    caching.wait_until("serving GETs from the cache", |p| {
        p.output().contains("serving GETs from the cache")
    });
    // Fill the cache, then wait until a GET no longer reaches Redis.
    caching.wait_until("caching the key", |_| {
        let before = redis_get_calls(redis);
        answers(caching_addr, &get, &expected) && redis_get_calls(redis) == before
    });

    // A second sidecache with --capacity 0: caching off, so every GET through
    // it is a miss that goes to Redis. Ready once a GET through it comes back.
    let (mut passthrough, passthrough_addr) = start_sidecache(redis, &["--capacity", "0"]);
    passthrough.wait_until("answering GET", |_| {
        answers(passthrough_addr, &get, &expected)
    });

    let mut group = c.benchmark_group("e2e");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let mut reply = vec![0; expected.len()];

    let mut stream = connect(caching_addr).expect("connect to sidecache");
    let before = redis_get_calls(redis);
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            round_trip(&mut stream, &get, &mut reply).expect("GET through sidecache");
            assert_eq!(reply, expected);
        })
    });
    assert_eq!(
        redis_get_calls(redis),
        before,
        "a GET meant to hit the cache reached Redis"
    );

    let mut stream = connect(passthrough_addr).expect("connect to sidecache");
    let before = redis_get_calls(redis);
    let mut sent = 0;
    group.bench_function("get_miss", |b| {
        b.iter(|| {
            round_trip(&mut stream, &get, &mut reply).expect("GET through sidecache");
            assert_eq!(reply, expected);
            sent += 1;
        })
    });
    assert!(
        redis_get_calls(redis) - before >= sent,
        "a GET meant to miss the cache did not reach Redis"
    );

    let mut stream = connect(redis).expect("connect to redis-server");
    group.bench_function("redis_direct_get", |b| {
        b.iter(|| {
            round_trip(&mut stream, &get, &mut reply).expect("GET to redis-server");
            assert_eq!(reply, expected);
        })
    });

    group.finish();
}

criterion_group!(benches, bench_e2e);
criterion_main!(benches);
