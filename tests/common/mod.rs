//! Test harness shared by the integration tests: a throw-away `redis-server`,
//! a `sidecache` process in front of it, and a raw RESP client that checks
//! replies byte for byte.
//!
//! Every process started here is killed (and reaped) on `Drop`, also when the
//! test panics. Ports are picked per instance, below the kernel's ephemeral
//! range, so tests can run in parallel.
//!
//! `SIDECACHE_TEST_DIRECT=1` makes [`Sidecache::start`] hand out the address
//! of Redis itself instead of starting the proxy. This exists only to check
//! the harness and the tests that do not depend on caching against the real
//! thing; tests that need the proxy call [`skip_in_direct_mode!`].
//!
//! `SIDECACHE_BIN=/path/to/sidecache` runs the tests against another build
//! of the binary (e.g. `target/release/sidecache`).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a raw client waits for bytes before failing the test.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process gets to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Direct mode
// ---------------------------------------------------------------------------

/// True when `SIDECACHE_TEST_DIRECT=1`: the "proxy" is Redis itself.
pub fn direct_mode() -> bool {
    std::env::var("SIDECACHE_TEST_DIRECT").is_ok_and(|v| v == "1")
}

/// Returns early from a test that only makes sense against sidecache
/// (caching, local replies that differ from Redis, backend handling, CLI).
/// Needs `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! skip_in_direct_mode {
    () => {
        if $crate::common::direct_mode() {
            eprintln!("SIDECACHE_TEST_DIRECT=1: test needs the proxy, skipped");
            return;
        }
    };
}

// ---------------------------------------------------------------------------
// Ports, temp dirs, polling, signals
// ---------------------------------------------------------------------------

const PORT_LO: u32 = 20_000;
const PORT_HI: u32 = 32_000; // below the usual ephemeral range (32768..)

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that was free a moment ago and that no other
/// instance in this test process has been handed.
pub fn free_port() -> u16 {
    let span = PORT_HI - PORT_LO;
    let base = (std::process::id().wrapping_mul(7919)) % span;
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = (PORT_LO + (base + n * 13) % span) as u16;
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    // Fall back on whatever the kernel hands out.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A fresh directory under the system temp dir for one process's files.
pub fn temp_dir(what: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "sidecache-test-{}-{}-{}",
        std::process::id(),
        what,
        n
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Calls `f` every `every` until it returns `Some`, or `None` after `timeout`.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// Sends a signal (`"TERM"`, `"INT"`, `"STOP"`, `"CONT"`, `"KILL"`) to `pid`.
pub fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -s {sig} {pid} failed: {status}");
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll_until(timeout, Duration::from_millis(10), || {
        child.try_wait().expect("try_wait")
    })
}

/// Runs `program args` to completion (killed after `timeout`), capturing output.
pub fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> Output {
    let dir = temp_dir("run");
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{program} {}` did not exit within {timeout:?}; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default())
            );
        }
    };
    let out = Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_dir_all(&dir);
    out
}

/// Full path of `name` if it is on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Bytes as a readable, Rust-escaped string (long inputs are shortened).
pub fn escape(bytes: &[u8]) -> String {
    const MAX: usize = 600;
    let mut s = String::new();
    let (head, tail) = if bytes.len() > MAX {
        (&bytes[..MAX / 2], Some(&bytes[bytes.len() - MAX / 2..]))
    } else {
        (bytes, None)
    };
    let esc = |s: &mut String, b: &[u8]| {
        for &c in b {
            match c {
                b'\r' => s.push_str("\\r"),
                b'\n' => s.push_str("\\n"),
                b'\t' => s.push_str("\\t"),
                b'\\' => s.push_str("\\\\"),
                b'"' => s.push_str("\\\""),
                0x20..=0x7e => s.push(c as char),
                _ => {
                    let _ = write!(s, "\\x{c:02x}");
                }
            }
        }
    };
    s.push('"');
    esc(&mut s, head);
    if let Some(t) = tail {
        let _ = write!(s, "\"...({} bytes)...\"", bytes.len() - MAX);
        esc(&mut s, t);
    }
    s.push('"');
    s
}

// ---------------------------------------------------------------------------
// /proc/net/tcp: who listens where, what sits unread in a socket
// ---------------------------------------------------------------------------

struct TcpEntry {
    local_port: u16,
    remote_port: u16,
    state: u8,
    rx_queue: u64,
    inode: u64,
}

fn tcp_entries() -> Option<Vec<TcpEntry>> {
    let text = fs::read_to_string("/proc/net/tcp").ok()?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let port = |a: &str| {
            a.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let local_port = port(f[1]);
        let remote_port = port(f[2]);
        let state = u8::from_str_radix(f[3], 16).ok();
        let rx_queue = f[4]
            .split(':')
            .nth(1)
            .and_then(|q| u64::from_str_radix(q, 16).ok());
        let inode = f[9].parse().ok();
        if let (Some(local_port), Some(remote_port), Some(state), Some(rx_queue), Some(inode)) =
            (local_port, remote_port, state, rx_queue, inode)
        {
            out.push(TcpEntry {
                local_port,
                remote_port,
                state,
                rx_queue,
                inode,
            });
        }
    }
    Some(out)
}

fn socket_inodes_of(pid: u32) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(rest) = t.strip_prefix("socket:[") {
                if let Ok(n) = rest.trim_end_matches(']').parse() {
                    out.push(n);
                }
            }
        }
    }
    Some(out)
}

/// Whether process `pid` owns the socket listening on `port`. `None` when
/// /proc cannot tell (then callers rely on connecting alone).
fn pid_listens_on(pid: u32, port: u16) -> Option<bool> {
    let entries = tcp_entries()?;
    let inodes = socket_inodes_of(pid)?;
    Some(
        entries
            .iter()
            .any(|e| e.local_port == port && e.state == 0x0A && inodes.contains(&e.inode)),
    )
}

/// Bytes waiting unread in the server side of established connections to
/// `port` (the largest such queue). Used to know that requests sit in a
/// stopped Redis's socket, i.e. sidecache has forwarded them.
pub fn unread_bytes_at(port: u16) -> u64 {
    tcp_entries()
        .unwrap_or_default()
        .iter()
        .filter(|e| e.local_port == port && e.state == 0x01)
        .map(|e| e.rx_queue)
        .max()
        .unwrap_or(0)
}

/// Waits until process `pid` no longer holds socket `inode` (no-op when
/// /proc could not tell which socket it was).
#[track_caller]
pub fn wait_socket_released(pid: u32, inode: Option<u64>) {
    let Some(inode) = inode else { return };
    let released = poll_until(Duration::from_secs(5), Duration::from_millis(2), || {
        (!socket_inodes_of(pid).unwrap_or_default().contains(&inode)).then_some(())
    });
    assert!(
        released.is_some(),
        "process {pid} kept the socket of a closed connection"
    );
}

/// Waits until at least `n` bytes sit unread in a connection to `port`.
#[track_caller]
pub fn wait_unread_bytes_at(port: u16, n: u64) {
    let got = poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
        (unread_bytes_at(port) >= n).then_some(())
    });
    assert!(
        got.is_some(),
        "requests never reached port {port}: expected >= {n} unread bytes there, have {}",
        unread_bytes_at(port)
    );
}

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// A `redis-server` on 127.0.0.1, killed on drop. May be stopped and started
/// again on the same port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

fn redis_server_path() -> PathBuf {
    which("redis-server").unwrap_or_else(|| {
        panic!(
            "redis-server not found: install it with `apt-get install redis-server` (Debian) \
             or `brew install redis` (macOS), and make sure it is on PATH"
        )
    })
}

impl RedisServer {
    /// Starts a fresh Redis on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut r = RedisServer::not_started();
            match r.try_launch() {
                Ok(()) => return r,
                Err(e) => last_err = e, // port taken meanwhile: try another
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// Reserves a port for a Redis without starting it (for "Redis is down
    /// when sidecache starts"). Call [`RedisServer::launch`] later.
    pub fn not_started() -> RedisServer {
        redis_server_path();
        RedisServer {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
            starts: 0,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Starts Redis on this instance's port (retrying briefly if the port is
    /// still held), and waits until it answers PING.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut last_err = String::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            match self.try_launch() {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "could not start redis-server on port {}: {last_err}",
            self.port
        );
    }

    fn try_launch(&mut self) -> Result<(), String> {
        self.try_launch_with(&[])
    }

    /// SIGKILL (a crash, as far as clients can tell) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops Redis abruptly; the port stays reserved for [`Self::launch`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Kills and starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is read.
    pub fn pause(&mut self) {
        send_signal(self.pid(), "STOP");
    }

    /// Undoes [`Self::pause`].
    pub fn resume(&mut self) {
        send_signal(self.pid(), "CONT");
    }

    /// A redis-rs connection straight to Redis (not through the proxy), for
    /// changing data underneath.
    pub fn conn(&self) -> redis::Connection {
        redis_conn(self.port)
    }

    /// SET key value directly in Redis.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) {
        let mut c = self.conn();
        redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .query::<()>(&mut c)
            .unwrap_or_else(|e| panic!("direct SET {key}: {e}"));
    }

    /// GET key directly from Redis.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut c = self.conn();
        redis::cmd("GET")
            .arg(key)
            .query(&mut c)
            .unwrap_or_else(|e| panic!("direct GET {key}: {e}"))
    }

    /// Runs an arbitrary command directly in Redis and returns the raw reply
    /// bytes (through a raw client, so the bytes are Redis's own).
    pub fn raw(&self, args: &[&str]) -> Vec<u8> {
        let mut c = Conn::connect(self.port);
        c.send(&cmd(args));
        c.read_reply_raw()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("(redis-server files kept in {})", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn ping_ok(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A redis-rs connection to `port` (Redis or sidecache), with timeouts.
pub fn redis_conn(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("redis url");
    let con = client
        .get_connection_with_timeout(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("redis-rs connect to port {port}: {e}"));
    con.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    con.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    con
}

// ---------------------------------------------------------------------------
// sidecache
// ---------------------------------------------------------------------------

/// The proxy under test, listening on its own free port; killed on drop.
pub struct Sidecache {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    stderr_path: PathBuf,
}

/// The binary under test: `$SIDECACHE_BIN` if set (e.g. a release build),
/// else the one cargo built for these tests.
pub fn sidecache_bin() -> String {
    std::env::var("SIDECACHE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sidecache").to_string())
}

/// `--listen 127.0.0.1:<port> --redis <redis> <extra>`: what the harness
/// starts sidecache with, for `Sidecache::start_with`.
pub fn listen_args(port: u16, redis: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--redis".to_string(),
        redis.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The message of a thread's panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(panic without a message)".into())
}

/// Joins client threads; one line per thread that panicked, naming it by
/// its place in `workers`.
pub fn join_clients(workers: Vec<std::thread::JoinHandle<()>>) -> Vec<String> {
    let mut failed = Vec::new();
    for (t, w) in workers.into_iter().enumerate() {
        if let Err(p) = w.join() {
            failed.push(format!("client {t}: {}", panic_text(&*p)));
        }
    }
    failed
}

impl Sidecache {
    /// Starts `sidecache --listen 127.0.0.1:<free> --redis 127.0.0.1:<redis_port> <extra>`
    /// and waits until it accepts connections. In direct mode, returns a
    /// handle whose port is Redis's own.
    pub fn start(redis_port: u16, extra_args: &[&str]) -> Sidecache {
        if direct_mode() {
            let dir = temp_dir("sidecache");
            return Sidecache {
                port: redis_port,
                stderr_path: dir.join("stderr"),
                dir,
                child: None,
            };
        }
        let redis = format!("127.0.0.1:{redis_port}");
        Self::start_with(|port| listen_args(port, &redis, extra_args))
    }

    /// Starts sidecache with exactly the arguments `args(port)` returns,
    /// which must make it listen on 127.0.0.1:`port`.
    pub fn start_with(args: impl Fn(u16) -> Vec<String>) -> Sidecache {
        Self::start_with_env(&[], args)
    }

    /// Like `start_with`, with these environment variables set for sidecache.
    pub fn start_with_env(env: &[(&str, &str)], args: impl Fn(u16) -> Vec<String>) -> Sidecache {
        let dir = temp_dir("sidecache");
        let stderr_path = dir.join("stderr");
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Self::try_start(port, &args(port), env, &dir, &stderr_path) {
                Ok(child) => {
                    return Sidecache {
                        port,
                        dir,
                        child: Some(child),
                        stderr_path,
                    }
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start sidecache: {last_err}");
    }

    fn try_start(
        port: u16,
        args: &[String],
        env: &[(&str, &str)],
        dir: &Path,
        stderr_path: &Path,
    ) -> Result<Child, String> {
        let mut child = Command::new(sidecache_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout")).unwrap())
            .stderr(File::create(stderr_path).unwrap())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", sidecache_bin()))?;
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "`sidecache {}` exited early with {status}; stderr:\n{}",
                    args.join(" "),
                    fs::read_to_string(stderr_path).unwrap_or_default()
                ));
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if pid_listens_on(pid, port) != Some(false)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`sidecache {}` did not accept connections on port {port} within {START_TIMEOUT:?}; stderr:\n{}",
                    args.join(" "),
                    fs::read_to_string(stderr_path).unwrap_or_default()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until sidecache logs that it serves GETs from its cache
    /// (Redis's command table loaded, tracking set up).
    pub fn wait_serving(&self) {
        poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            self.stderr()
                .contains("serving GETs from the cache")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("sidecache never served from its cache:\n{}", self.stderr()));
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("no sidecache process (direct mode?)")
            .id()
    }

    /// A raw client connected to the proxy.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.port)
    }

    /// A redis-rs connection to the proxy.
    pub fn redis_conn(&self) -> redis::Connection {
        redis_conn(self.port)
    }

    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("no sidecache process");
        wait_timeout(child, timeout)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Sidecache {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            let err = self.stderr();
            let tail: String = {
                let lines: Vec<&str> = err.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            eprintln!("--- sidecache stderr (last 40 lines) ---\n{tail}\n---");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// RESP encoding and a raw client
// ---------------------------------------------------------------------------

/// A RESP2 multibulk request from string arguments.
pub fn cmd(args: &[&str]) -> Vec<u8> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    cmd_bytes(&args)
}

/// A RESP2 multibulk request from byte arguments.
pub fn cmd_bytes(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The RESP2 bulk reply for `value`.
pub fn bulk(value: impl AsRef<[u8]>) -> Vec<u8> {
    let v = value.as_ref();
    let mut out = format!("${}\r\n", v.len()).into_bytes();
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
    out
}

pub const NIL: &[u8] = b"$-1\r\n";
pub const OK: &[u8] = b"+OK\r\n";
pub const PONG: &[u8] = b"+PONG\r\n";
pub const BACKEND_UNAVAILABLE: &[u8] = b"-ERR backend unavailable\r\n";

/// The RESP2 integer reply for `n`.
pub fn int(n: i64) -> Vec<u8> {
    format!(":{n}\r\n").into_bytes()
}

/// A parsed RESP reply (RESP2 types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    pub fn bulk_str(&self) -> Option<String> {
        match self {
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` if incomplete,
/// otherwise the reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
        let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[from..from + rel], from + rel + 2))
    }
    fn num(b: &[u8]) -> Result<i64, String> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number {}", escape(b)))
    }
    fn at(buf: &[u8], pos: usize) -> Result<Option<(Resp, usize)>, String> {
        let Some(&t) = buf.get(pos) else {
            return Ok(None);
        };
        let Some((l, next)) = line(buf, pos + 1) else {
            return Ok(None);
        };
        let text = || String::from_utf8_lossy(l).into_owned();
        match t {
            b'+' => Ok(Some((Resp::Simple(text()), next))),
            b'-' => Ok(Some((Resp::Error(text()), next))),
            b':' => Ok(Some((Resp::Int(num(l)?), next))),
            b'$' => {
                let n = num(l)?;
                if n < 0 {
                    return Ok(Some((Resp::Bulk(None), next)));
                }
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err("bulk not followed by CRLF".into());
                }
                Ok(Some((Resp::Bulk(Some(buf[next..end].to_vec())), end + 2)))
            }
            b'*' => {
                let n = num(l)?;
                if n < 0 {
                    return Ok(Some((Resp::Array(None), next)));
                }
                let mut items = Vec::with_capacity(n as usize);
                let mut p = next;
                for _ in 0..n {
                    match at(buf, p)? {
                        Some((v, q)) => {
                            items.push(v);
                            p = q;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Resp::Array(Some(items)), p)))
            }
            other => Err(format!("unexpected reply type byte {}", escape(&[other]))),
        }
    }
    at(buf, 0)
}

/// A raw TCP client: send bytes, check the bytes that come back.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
    port: u16,
}

impl Conn {
    #[track_caller]
    pub fn connect(port: u16) -> Conn {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
            port,
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// This connection's own (client side) port.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// The inode of the server's end of this connection (from /proc).
    fn server_side_inode(&self) -> Option<u64> {
        let me = self.local_port();
        tcp_entries()?
            .into_iter()
            .find(|e| e.local_port == self.port && e.remote_port == me && e.state == 0x01)
            .map(|e| e.inode)
    }

    /// Hangs up (FIN), then waits until process `server_pid` has closed its
    /// socket for this connection, i.e. has let go of the client entirely.
    #[track_caller]
    pub fn hang_up(self, server_pid: u32) {
        let inode = self.server_side_inode();
        drop(self);
        wait_socket_released(server_pid, inode);
    }

    /// Resets the connection (RST, as a crashed client would), then waits
    /// until process `server_pid` has closed its socket for it. A reply must
    /// already be on its way (the reset comes from closing with unread data).
    #[track_caller]
    pub fn abort(self, server_pid: u32) {
        let inode = self.server_side_inode();
        if self.buf.is_empty() {
            self.stream.set_read_timeout(Some(self.timeout)).unwrap();
            let n = self.stream.peek(&mut [0u8; 1]).unwrap_or(0);
            assert!(n > 0, "abort(): no unread reply to make the close a reset");
        }
        drop(self);
        wait_socket_released(server_pid, inode);
    }

    /// The underlying stream (e.g. to clone it for a writer thread).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("send to port {}: {e}", self.port);
        }
    }

    /// Sends, ignoring errors (for peers that may already have hung up).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends one multibulk request.
    #[track_caller]
    pub fn send_cmd(&mut self, args: &[&str]) {
        self.send(&cmd(args));
    }

    /// Reads more into the buffer. Ok(0) is EOF; a reset counts as EOF.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
        }
        self.stream.set_read_timeout(Some(deadline - now))?;
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timeout"))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly `expected.len()` bytes and asserts they equal `expected`.
    /// Fails at the first differing byte, on EOF, or after the read timeout.
    #[track_caller]
    pub fn expect(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + self.timeout;
        let mut checked = 0;
        loop {
            let n = self.buf.len().min(expected.len());
            if self.buf[checked..n] != expected[checked..n] {
                // Collect a little more for a useful message.
                let _ = self.fill(Instant::now() + Duration::from_millis(50));
                panic!(
                    "reply mismatch on port {}\n expected: {}\n      got: {}",
                    self.port,
                    escape(expected),
                    escape(&self.buf)
                );
            }
            if self.buf.len() >= expected.len() {
                self.buf.drain(..expected.len());
                return;
            }
            checked = n;
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "connection closed before the expected reply on port {}\n expected: {}\n      got: {}",
                    self.port,
                    escape(expected),
                    escape(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "no (complete) reply within {:?} on port {} ({e})\n expected: {}\n      got: {}",
                    self.timeout,
                    self.port,
                    escape(expected),
                    escape(&self.buf)
                ),
            }
        }
    }

    /// Reads exactly `n` bytes.
    #[track_caller]
    pub fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "EOF after {} of {n} bytes: {}",
                    self.buf.len(),
                    escape(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "only {} of {n} bytes within {:?} ({e}): {}",
                    self.buf.len(),
                    self.timeout,
                    escape(&self.buf)
                ),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one complete reply and returns its raw bytes.
    #[track_caller]
    pub fn read_reply_raw(&mut self) -> Vec<u8> {
        self.read_framed(|buf| parse_reply(buf).map(|r| r.map(|(_, used)| used)))
    }

    /// Reads until `frame` finds one complete reply; returns its raw bytes.
    #[track_caller]
    fn read_framed(&mut self, frame: fn(&[u8]) -> Result<Option<usize>, String>) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match frame(&self.buf) {
                Ok(Some(used)) => return self.buf.drain(..used).collect(),
                Ok(None) => {}
                Err(e) => panic!("unparseable reply ({e}): {}", escape(&self.buf)),
            }
            match self.fill(deadline) {
                Ok(0) => panic!("EOF in the middle of a reply: {}", escape(&self.buf)),
                Ok(_) => {}
                Err(e) => panic!(
                    "no complete reply within {:?} ({e}); have {}",
                    self.timeout,
                    escape(&self.buf)
                ),
            }
        }
    }

    /// Reads one complete reply, parsed.
    #[track_caller]
    pub fn read_reply(&mut self) -> Resp {
        let raw = self.read_reply_raw();
        parse_reply(&raw).unwrap().unwrap().0
    }

    /// Reads one reply that must be an error; returns its line without `-`.
    #[track_caller]
    pub fn read_error(&mut self) -> String {
        match self.read_reply() {
            Resp::Error(e) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    /// Reads until the peer closes (a reset counts as a close); fails after
    /// the read timeout.
    #[track_caller]
    pub fn read_until_eof(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
                Err(e) => panic!(
                    "connection to port {} not closed within {:?} ({e}); got so far: {}",
                    self.port,
                    self.timeout,
                    escape(&self.buf)
                ),
            }
        }
    }

    /// Asserts the peer closes the connection with nothing more to read.
    #[track_caller]
    pub fn expect_eof(&mut self) {
        let rest = self.read_until_eof();
        assert!(
            rest.is_empty(),
            "expected EOF on port {}, got more bytes: {}",
            self.port,
            escape(&rest)
        );
    }

    /// Asserts nothing arrives for `d` (and the connection stays open).
    #[track_caller]
    pub fn expect_silence(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            assert!(
                self.buf.is_empty(),
                "expected no bytes, got: {}",
                escape(&self.buf)
            );
            match self.fill(deadline) {
                Ok(0) => panic!("connection to port {} closed unexpectedly", self.port),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return,
                Err(e) => panic!("read error: {e}"),
            }
        }
    }

    /// Round trip: sends one request, expects exactly `reply`.
    #[track_caller]
    pub fn roundtrip(&mut self, args: &[&str], reply: &[u8]) {
        self.send_cmd(args);
        self.expect(reply);
    }

    /// PING must answer PONG on this connection.
    #[track_caller]
    pub fn ping(&mut self) {
        self.roundtrip(&["PING"], PONG);
    }
}

/// A deterministic xorshift PRNG (no external crates).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A key name unique to this process and call site.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}:{}", N.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------
// Coherence helpers: Redis started with extra arguments, Redis's own view of
// its clients and command counts, and unread bytes on particular sockets.
// ---------------------------------------------------------------------------

impl RedisServer {
    /// Like [`RedisServer::start`], with extra `redis-server` arguments,
    /// e.g. `["--rename-command", "CLIENT", ""]` for a Redis that cannot
    /// track clients. Only this first start uses them: a later
    /// [`RedisServer::launch`] or [`RedisServer::restart`] does not.
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut r = RedisServer::not_started();
            match r.try_launch_with(extra) {
                Ok(()) => return r,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server {extra:?}: {last_err}");
    }

    fn try_launch_with(&mut self, extra: &[&str]) -> Result<(), String> {
        self.starts += 1;
        let log = self.dir.join(format!("redis-{}.log", self.starts));
        let child = Command::new(redis_server_path())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--enable-debug-command", "yes"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                let status = self.child.take().unwrap().wait().ok();
                return Err(format!(
                    "redis-server exited early ({status:?}); log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if pid_listens_on(pid, self.port) != Some(false) && ping_ok(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server did not answer PING on port {} within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How many times Redis on `port` has executed `command` (lower case, e.g.
/// `"get"`), from `INFO commandstats`; 0 before the first call.
pub fn redis_command_calls(port: u16, command: &str) -> u64 {
    let mut c = Conn::connect(port);
    c.send_cmd(&["INFO", "commandstats"]);
    let info = match c.read_reply() {
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO commandstats on port {port}: {other:?}"),
    };
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let n = rest.split(',').next().unwrap_or("");
            n.parse()
                .unwrap_or_else(|_| panic!("bad commandstats line for {command}: {rest}"))
        })
        .unwrap_or(0)
}

/// How many GETs Redis on `port` has executed (`cmdstat_get:calls`). A GET
/// served from sidecache's cache does not count.
pub fn redis_get_calls(port: u16) -> u64 {
    redis_command_calls(port, "get")
}

/// Waits (up to 5 s) until sidecache caches GETs sent on `c`: of two GETs
/// of one key, at most one reaches Redis. Replies `-ERR backend
/// unavailable` are retried. A no-op in direct mode, where nothing caches.
#[track_caller]
pub fn wait_caching(redis: &RedisServer, c: &mut Conn) {
    if direct_mode() {
        return;
    }
    let settle = Duration::from_secs(5);
    let key = unique("probe");
    redis.set(&key, "probe");
    let get = |c: &mut Conn| {
        c.send_cmd(&["GET", &key]);
        c.read_reply3_raw()
    };
    let mut last = String::new();
    let ok = poll_until(settle, Duration::from_millis(20), || {
        let before = redis_get_calls(redis.port());
        let (r1, r2) = (get(c), get(c));
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
        "sidecache did not (again) cache within {settle:?}: {last}"
    );
}

/// Redis's `CLIENT LIST`, one map of field to value per client.
pub fn client_list(port: u16) -> Vec<std::collections::HashMap<String, String>> {
    let mut c = Conn::connect(port);
    c.send_cmd(&["CLIENT", "LIST"]);
    let text = match c.read_reply() {
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLIENT LIST on port {port}: {other:?}"),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The ids of Redis's clients named `name` (CLIENT SETNAME).
pub fn client_ids_named(port: u16, name: &str) -> Vec<u64> {
    client_list(port)
        .iter()
        .filter(|c| c.get("name").map(String::as_str) == Some(name))
        .filter_map(|c| c.get("id").and_then(|id| id.parse().ok()))
        .collect()
}

/// `CLIENT KILL ID <id>` on Redis; asserts one client was killed.
#[track_caller]
pub fn kill_client(port: u16, id: u64) {
    let mut c = Conn::connect(port);
    c.roundtrip(&["CLIENT", "KILL", "ID", &id.to_string()], &int(1));
}

/// Bytes waiting unread at process `pid`'s end of its established
/// connections to `port`, one entry per connection (e.g. sidecache's data
/// and invalidation connections to Redis).
pub fn unread_bytes_of_pid_to(pid: u32, port: u16) -> Vec<u64> {
    let inodes = socket_inodes_of(pid).unwrap_or_default();
    tcp_entries()
        .unwrap_or_default()
        .iter()
        .filter(|e| e.remote_port == port && e.state == 0x01 && inodes.contains(&e.inode))
        .map(|e| e.rx_queue)
        .collect()
}

impl Conn {
    /// Bytes this client sent that the server has not read yet (from
    /// /proc; 0 when /proc cannot tell).
    pub fn unread_at_server(&self) -> u64 {
        let me = self.local_port();
        tcp_entries()
            .unwrap_or_default()
            .iter()
            .find(|e| e.local_port == self.port && e.remote_port == me && e.state == 0x01)
            .map_or(0, |e| e.rx_queue)
    }
}

/// Waits until process `pid` is actually stopped (state `T` in
/// /proc/<pid>/stat): `kill -STOP` returns before the target has stopped.
/// A no-op when /proc cannot tell.
#[track_caller]
pub fn wait_process_stopped(pid: u32) {
    let state = || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    };
    if state().is_none() {
        return;
    }
    let stopped = poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
        matches!(state(), Some('T') | Some('t')).then_some(())
    });
    assert!(
        stopped.is_some(),
        "process {pid} did not stop (state {:?})",
        state()
    );
}

/// The length of one complete RESP2 or RESP3 reply (push messages and
/// attributes included) at the start of `buf`: `Ok(None)` if incomplete.
pub fn resp3_reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    fn at(buf: &[u8], pos: usize) -> Result<Option<usize>, String> {
        let Some(&t) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(rel) = buf[pos + 1..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[pos + 1..pos + 1 + rel];
        let next = pos + 1 + rel + 2;
        let num = || -> Result<i64, String> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad length {}", escape(line)))
        };
        match t {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Ok(Some(next)),
            b'$' | b'!' | b'=' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Some(next));
                }
                let end = next + n as usize + 2;
                Ok((buf.len() >= end).then_some(end))
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Some(next));
                }
                let items = if matches!(t, b'%' | b'|') { 2 * n } else { n };
                let mut p = next;
                for _ in 0..items {
                    match at(buf, p)? {
                        Some(q) => p = q,
                        None => return Ok(None),
                    }
                }
                // An attribute is followed by the reply it annotates.
                if t == b'|' {
                    return at(buf, p);
                }
                Ok(Some(p))
            }
            other => Err(format!("unexpected reply type byte {}", escape(&[other]))),
        }
    }
    at(buf, 0)
}

impl Conn {
    /// Reads one complete reply, RESP2 or RESP3, and returns its raw bytes.
    #[track_caller]
    pub fn read_reply3_raw(&mut self) -> Vec<u8> {
        self.read_framed(resp3_reply_len)
    }
}

// ---------------------------------------------------------------------------
// Hardening helpers: a process's memory, CPU time and descriptors from
// /proc, the server's end of a connection, half-closing, replies with a
// deadline that do not panic.
// ---------------------------------------------------------------------------

/// A `kB` field of /proc/<pid>/status (`"VmRSS"`, `"VmHWM"`, `"VmSize"`),
/// in bytes; `None` when /proc cannot tell.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let prefix = format!("{field}:");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident memory of process `pid` now, in bytes.
#[track_caller]
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Peak resident memory of process `pid` so far (VmHWM), in bytes.
#[track_caller]
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM for process {pid}"))
}

/// Bytes as mebibytes, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 if unknown).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + system) process `pid` has used so far.
#[track_caller]
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .expect("/proc/<pid>/stat without ')'")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
}

/// How many file descriptors process `pid` has open.
pub fn open_fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether process `pid` still holds socket `inode`.
pub fn process_holds_socket(pid: u32, inode: u64) -> bool {
    socket_inodes_of(pid).unwrap_or_default().contains(&inode)
}

/// What [`Conn::poll_reply`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// One complete reply, raw.
    Reply(Vec<u8>),
    /// The peer closed (or reset); the bytes that came before it.
    Eof(Vec<u8>),
    /// No complete reply before the deadline (the connection is open).
    Nothing,
}

impl Conn {
    /// The inode of the server's end of this connection once process
    /// `server_pid` has accepted it; fails if it does not within 5 s.
    #[track_caller]
    pub fn accepted_by(&self, server_pid: u32) -> u64 {
        poll_until(Duration::from_secs(5), Duration::from_millis(2), || {
            self.server_side_inode()
                .filter(|&i| i != 0 && process_holds_socket(server_pid, i))
        })
        .unwrap_or_else(|| {
            panic!(
                "process {server_pid} did not accept the connection from port {}",
                self.local_port()
            )
        })
    }

    /// Shuts down the sending half (FIN); replies can still be read.
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(Write)");
    }

    /// Waits at most `d` for one complete RESP2 reply, without panicking
    /// on a timeout or EOF.
    #[track_caller]
    pub fn poll_reply(&mut self, d: Duration) -> Polled {
        let deadline = Instant::now() + d;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((_, used))) => return Polled::Reply(self.buf.drain(..used).collect()),
                Ok(None) => {}
                Err(e) => panic!("unparseable reply ({e}): {}", escape(&self.buf)),
            }
            match self.fill(deadline) {
                Ok(0) => return Polled::Eof(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Polled::Nothing,
                Err(_) => return Polled::Eof(std::mem::take(&mut self.buf)),
            }
        }
    }

    /// Reads and discards everything until the peer closes; returns how
    /// many bytes came, or `None` if it is still open after `d`.
    pub fn drain_until_eof(&mut self, d: Duration) -> Option<u64> {
        let deadline = Instant::now() + d;
        let mut total = self.buf.len() as u64;
        self.buf.clear();
        loop {
            match self.fill(deadline) {
                Ok(0) => return Some(total),
                Ok(n) => {
                    total += n as u64;
                    self.buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return None,
                Err(_) => return Some(total),
            }
        }
    }
}

/// Bytes waiting unread in the server side of all established connections
/// to `port`, summed (e.g. everything clients sent that sidecache has not
/// read yet).
pub fn unread_bytes_total_at(port: u16) -> u64 {
    tcp_entries()
        .unwrap_or_default()
        .iter()
        .filter(|e| e.local_port == port && e.state == 0x01)
        .map(|e| e.rx_queue)
        .sum()
}

/// This process's soft limit on open files (from /proc/self/limits).
pub fn open_files_soft_limit() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// RESP3 and blocked clients, shared by the transaction, pub/sub and blocking suites
// ---------------------------------------------------------------------------

/// Says `HELLO 3` on `c`; the reply must be a RESP3 map.
#[track_caller]
pub fn hello3(c: &mut Conn) {
    c.send_cmd(&["HELLO", "3"]);
    let reply = c.read_reply3_raw();
    assert!(
        reply.starts_with(b"%"),
        "HELLO 3 did not answer a map: {}",
        escape(&reply)
    );
}

/// A connection to `port`, in RESP3 after `HELLO 3` when `resp3`.
#[track_caller]
pub fn connect(port: u16, resp3: bool) -> Conn {
    let mut c = Conn::connect(port);
    if resp3 {
        hello3(&mut c);
    }
    c
}

/// Redis's `blocked_clients` from `INFO clients` (asked directly).
pub fn blocked_clients(redis_port: u16) -> u64 {
    let mut c = Conn::connect(redis_port);
    c.send_cmd(&["INFO", "clients"]);
    let info = match c.read_reply() {
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO clients: {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in INFO clients:\n{info}"))
}

/// Waits until Redis counts exactly `n` blocked clients.
#[track_caller]
pub fn wait_blocked(redis_port: u16, n: u64) {
    let mut last = 0;
    let got = poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
        last = blocked_clients(redis_port);
        (last == n).then_some(())
    });
    assert!(
        got.is_some(),
        "Redis's blocked_clients stayed {last}, expected {n}"
    );
}
