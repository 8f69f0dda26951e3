//! Unix sockets on both sides: sidecache listening on one (with its
//! permissions, a stale file replaced, a live one refused, the file removed
//! on exit) and reaching a Redis that listens on one, with a password and a
//! database, as a sidecar usually runs.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sidecache(args: &[String], stderr: &Path) -> Proc {
    Proc(
        Command::new(sidecache_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start sidecache"),
    )
}

/// One round trip over a Unix socket.
fn roundtrip(path: &Path, request: &[u8], reply_len: usize) -> Vec<u8> {
    let mut s = UnixStream::connect(path).expect("connect to the socket");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut reply = vec![0; reply_len];
    s.read_exact(&mut reply).expect("a reply");
    reply
}

/// One request over a Unix socket; the reply's first line.
fn error_line(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).expect("connect to the socket");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut byte).expect("a reply line");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn wait_for_socket(path: &Path, log: &Path) {
    poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        UnixStream::connect(path).ok().map(|_| ())
    })
    .unwrap_or_else(|| {
        panic!(
            "nothing listens on {}:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
}

/// A redis-server listening on a Unix socket only, with a password.
fn redis_on_unix_socket(dir: &Path) -> (Proc, PathBuf) {
    let socket = dir.join("redis.sock");
    let redis = Proc(
        Command::new(
            which("redis-server")
                .expect("redis-server not found: install it with `apt-get install redis-server`"),
        )
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .args(["--requirepass", "pw", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server"),
    );
    poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        UnixStream::connect(&socket).ok().map(|_| ())
    })
    .expect("redis-server listens on its socket");
    (redis, socket)
}

#[test]
fn a_sidecar_over_unix_sockets_on_both_sides() {
    skip_in_direct_mode!();
    let dir = temp_dir("unix");
    let (_redis, redis_socket) = redis_on_unix_socket(&dir);
    let socket = dir.join("sidecache.sock");
    let log = dir.join("sidecache.log");
    let mut sidecache = start_sidecache(
        &[
            "--listen".into(),
            format!("unix:{}", socket.display()),
            "--unix-mode".into(),
            "0660".into(),
            "--redis".into(),
            format!("unix://{}?db=5", redis_socket.display()),
        ],
        &log,
    );
    // The password from the environment would do too; here it comes from
    // a second sidecache below. This one has none: Redis refuses it.
    wait_for_socket(&socket, &log);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let e = error_line(&socket, &cmd(&["GET", "k"]));
    // Redis wants a password sidecache was not given: the client is told.
    assert!(
        e.starts_with("-ERR backend unavailable") || e.starts_with("-NOAUTH"),
        "{e}"
    );
    // A live socket is never taken over: a second sidecache on it refuses to start.
    let second_log = dir.join("second.log");
    let mut second = start_sidecache(
        &[
            "--listen".into(),
            format!("unix:{}", socket.display()),
            "--redis".into(),
            format!("unix:{}", redis_socket.display()),
        ],
        &second_log,
    );
    let status = wait_timeout(&mut second.0, Duration::from_secs(10)).expect("it exits");
    assert!(!status.success());
    let err = std::fs::read_to_string(&second_log).unwrap();
    assert!(err.contains("another process listens on"), "{err}");
    assert!(socket.exists(), "the live socket's file is left alone");
    // The socket file goes away with sidecache.
    send_signal(sidecache.0.id(), "TERM");
    wait_timeout(&mut sidecache.0, Duration::from_secs(10)).expect("sidecache exits");
    assert!(!socket.exists(), "the socket file is removed on exit");

    // With the password (from the environment) and database 5, over both sockets.
    let mut third = Proc(
        Command::new(sidecache_bin())
            .args(["--listen".to_string(), format!("unix:{}", socket.display())])
            .env(
                "SIDECACHE_REDIS",
                format!("unix://{}?db=5", redis_socket.display()),
            )
            .env("SIDECACHE_REDIS_PASSWORD", "pw")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_socket(&socket, &log);
    assert_eq!(roundtrip(&socket, &cmd(&["SET", "k", "v"]), 5), OK);
    assert_eq!(roundtrip(&socket, &cmd(&["GET", "k"]), 7), bulk("v"));
    assert_eq!(roundtrip(&socket, &cmd(&["SELECT", "5"]), 5), OK);
    let mut direct = UnixStream::connect(&redis_socket).unwrap();
    direct.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut request = cmd(&["AUTH", "pw"]);
    request.extend(cmd(&["SELECT", "5"]));
    request.extend(cmd(&["GET", "k"]));
    direct.write_all(&request).unwrap();
    let mut reply = vec![0; 5 + 5 + 7];
    direct.read_exact(&mut reply).unwrap();
    assert_eq!(reply, b"+OK\r\n+OK\r\n$1\r\nv\r\n", "written in database 5");
    drop(third.0.kill());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    skip_in_direct_mode!();
    let dir = temp_dir("unix-stale");
    let socket = dir.join("sidecache.sock");
    // Left behind by a process that is gone.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let redis = RedisServer::start();
    let log = dir.join("sidecache.log");
    let _sidecache = start_sidecache(
        &[
            "--listen".into(),
            format!("unix:{}", socket.display()),
            "--redis".into(),
            format!("127.0.0.1:{}", redis.port()),
        ],
        &log,
    );
    wait_for_socket(&socket, &log);
    redis.set("k", "v");
    assert_eq!(roundtrip(&socket, &cmd(&["GET", "k"]), 7), bulk("v"));
}
