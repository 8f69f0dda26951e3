//! The command line: flags, their defaults and their validation.
//!
//! Owns turning `argv` into a [`Config`]; it never opens a socket. Every
//! error names the flag or value at fault, so `main` can print one line and
//! exit with status 2.

use crate::net::Address;
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub const HELP: &str = "\
sidecache: a read-caching sidecar proxy for Redis

Usage: sidecache [OPTIONS]

Options:
  --listen ADDR       address to accept clients on: HOST:PORT or
                      unix:/path/to.sock [default: 127.0.0.1:5555]
  --unix-mode MODE    permissions of the Unix socket file, in octal such as
                      0660 [default: as the umask leaves them]
  --redis ADDRESS     the backing Redis: HOST:PORT, unix:/path/to.sock,
                      unix:///path/to.sock?db=N, or
                      redis://[USER[:PASSWORD]@]HOST:PORT[/DB]; the password
                      can also come from SIDECACHE_REDIS_PASSWORD
                      [default: 127.0.0.1:6379]
  --capacity N        most keys cached, least recently used evicted first;
                      0 turns caching off [default: 10000]
  --ttl DURATION      longest time an entry is served from the cache: whole
                      seconds, or a number followed by ms, s, m or h;
                      0 means entries never expire [default: 60s]
  --tracking MODE     auto, on or off: keep the cache coherent with Redis's
                      client tracking; auto uses it when Redis supports it,
                      on refuses to run without it, off caches by TTL only
                      [default: auto]
  --timeout DURATION  longest wait for Redis to accept a connection or to
                      answer the oldest request in flight; past it the
                      requests in flight fail and the connection is made
                      anew [default: 5s]
  --max-clients N     most client connections; one more is told
                      \"max number of clients reached\" [default: 10000]
  --max-output SIZE   a client whose unread replies exceed SIZE is
                      disconnected [default: 256mb]
  --idle-timeout DURATION
                      close a client idle that long; 0 means never
                      [default: 0]
  --max-memory SIZE   most memory the cache's keys, values and overhead
                      take; least recently used entries go first
                      [default: 64mb]
  --max-value-size SIZE
                      larger GET replies are passed on uncached
                      [default: 1mb]
  --max-pinned N      most connections to Redis pinned to one client each,
                      for transactions and blocking commands; past it such
                      a command is refused with an error [default: 256]
  --requirepass PASSWORD
                      clients must AUTH with this password before anything
                      but AUTH, HELLO, PING and QUIT [default: none]
  --busy-poll MICROSECONDS
                      after each event, keep polling for that long instead
                      of sleeping, while Redis owes no reply: lower latency
                      for a core's worth of CPU under load; 0 turns it off
                      [default: 0]
  --log-level LEVEL   error, warn, info or debug [default: info]
  -h, --help          print this help and exit
  -V, --version       print the version and exit

Every flag can also come from the environment as SIDECACHE_<FLAG>, such as
SIDECACHE_MAX_CLIENTS=500 or SIDECACHE_REQUIREPASS (which keeps the password
out of `ps`); a flag on the command line wins.

GET replies are cached; everything else is forwarded to Redis unchanged.
Transactions and blocking commands run on a connection of the client's
own; subscriptions share one connection to Redis.
SIGINT or SIGTERM stops sidecache after it has sent the replies it owes.
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
    Version,
}

/// Everything the server needs to know to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Address,
    /// Permissions of the listening Unix socket's file.
    pub unix_mode: Option<u32>,
    pub redis: Address,
    /// What every connection to Redis authenticates with, if anything.
    pub redis_auth: Option<RedisAuth>,
    /// The database every connection to Redis selects (and clients may SELECT).
    pub redis_db: u32,
    /// Most keys in the cache; 0 turns caching off.
    pub capacity: usize,
    /// Longest life of a cache entry; `None` means no expiry.
    pub ttl: Option<Duration>,
    pub tracking: TrackingMode,
    /// Connect timeout and request timeout towards Redis.
    pub timeout: Duration,
    pub max_clients: usize,
    /// Unsent output past which a client is disconnected.
    pub max_output: usize,
    /// `None` means clients are never closed for idling.
    pub idle_timeout: Option<Duration>,
    /// Bytes the cache may hold, overhead included.
    pub max_memory: usize,
    /// Largest reply stored in the cache.
    pub max_value_size: usize,
    /// Most connections pinned to one client each (transactions, blocking calls).
    pub max_pinned: usize,
    /// How long the event loop keeps polling after an event before it
    /// sleeps; zero sleeps at once.
    pub busy_poll: Duration,
    /// The password clients must AUTH with; `None`: no authentication.
    pub requirepass: Option<String>,
    pub log_level: LogLevel,
}

pub use crate::log::Level as LogLevel;

impl Config {
    /// The backing Redis as `--redis` takes it, the password masked.
    pub fn redis_description(&self) -> String {
        match (&self.redis_auth, self.redis_db) {
            (None, 0) => self.redis.to_string(),
            (auth, db) => {
                let login = match auth {
                    None => String::new(),
                    Some(RedisAuth { user, .. }) => {
                        format!("{}:***@", user.as_deref().unwrap_or(""))
                    }
                };
                match &self.redis {
                    Address::Unix(path) => format!("unix://{}?db={db}", path.display()),
                    Address::Tcp(addr) => format!("redis://{login}{addr}/{db}"),
                }
            }
        }
    }

    /// The effective configuration as one log line, every flag with its
    /// value, passwords masked.
    pub fn describe(&self) -> String {
        let duration = |d: Option<Duration>| match d {
            None => "0".to_string(),
            Some(d) => format!("{}ms", d.as_millis()),
        };
        let tracking = match self.tracking {
            TrackingMode::Auto => "auto",
            TrackingMode::On => "on",
            TrackingMode::Off => "off",
        };
        format!(
            "--listen {}{} --redis {} --capacity {} --ttl {} --tracking {tracking} --timeout {} \
             --max-clients {} --max-output {} --idle-timeout {} --max-memory {} \
             --max-value-size {} --max-pinned {} --busy-poll {} --requirepass {} --log-level {}",
            self.listen,
            match self.unix_mode {
                Some(mode) => format!(" --unix-mode {mode:04o}"),
                None => String::new(),
            },
            self.redis_description(),
            self.capacity,
            duration(self.ttl),
            duration(Some(self.timeout)),
            self.max_clients,
            self.max_output,
            duration(self.idle_timeout),
            self.max_memory,
            self.max_value_size,
            self.max_pinned,
            self.busy_poll.as_micros(),
            if self.requirepass.is_some() {
                "(set)"
            } else {
                "(none)"
            },
            format!("{:?}", self.log_level).to_ascii_lowercase(),
        )
    }
}

/// Credentials for Redis: an ACL user, or the default user when `user` is `None`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAuth {
    pub user: Option<String>,
    pub password: String,
}

/// Never prints the password.
impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Whether the cache is kept coherent by Redis's client tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingMode {
    /// Track when Redis can; otherwise warn and cache by TTL only.
    Auto,
    /// Track, or refuse to run.
    On,
    /// Cache by TTL only (writes through sidecache still invalidate).
    Off,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Address::Tcp(SocketAddr::from(([127, 0, 0, 1], 5555))),
            unix_mode: None,
            redis: Address::Tcp(SocketAddr::from(([127, 0, 0, 1], 6379))),
            redis_auth: None,
            redis_db: 0,
            capacity: 10_000,
            ttl: Some(Duration::from_secs(60)),
            tracking: TrackingMode::Auto,
            timeout: Duration::from_secs(5),
            max_clients: 10_000,
            max_output: 256 << 20,
            idle_timeout: None,
            max_memory: 64 << 20,
            max_value_size: 1 << 20,
            max_pinned: 256,
            busy_poll: Duration::ZERO,
            requirepass: None,
            log_level: LogLevel::Info,
        }
    }
}

/// A command line that cannot be run, worded for one line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments that follow the program name, with the process's
/// environment for flags not given.
pub fn parse_args(args: Vec<OsString>) -> Result<Invocation, UsageError> {
    parse_args_with_env(args, |name| std::env::var(name).ok())
}

/// Parses the arguments; `env` looks up `SIDECACHE_<FLAG>` variables for
/// the flags the command line does not give.
pub fn parse_args_with_env(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, UsageError> {
    let mut args = Args {
        args: pico_args::Arguments::from_vec(args),
        env: &env,
    };
    let env = &env;
    if args.args.contains(["-h", "--help"]) {
        return Ok(Invocation::Help);
    }
    if args.args.contains(["-V", "--version"]) {
        return Ok(Invocation::Version);
    }
    let defaults = Config::default();
    let mut config = Config {
        listen: flag(&mut args, "--listen", parse_address)?.unwrap_or(defaults.listen),
        unix_mode: flag(&mut args, "--unix-mode", parse_mode)?.unwrap_or(defaults.unix_mode),
        redis: defaults.redis,
        redis_auth: None,
        redis_db: 0,
        capacity: flag(&mut args, "--capacity", parse_count)?.unwrap_or(defaults.capacity),
        ttl: flag(&mut args, "--ttl", parse_ttl)?.unwrap_or(defaults.ttl),
        tracking: flag(&mut args, "--tracking", parse_tracking)?.unwrap_or(defaults.tracking),
        timeout: flag(&mut args, "--timeout", parse_positive_duration)?.unwrap_or(defaults.timeout),
        max_clients: flag(&mut args, "--max-clients", parse_positive_count)?
            .unwrap_or(defaults.max_clients),
        max_output: flag(&mut args, "--max-output", parse_size)?.unwrap_or(defaults.max_output),
        idle_timeout: flag(&mut args, "--idle-timeout", parse_ttl)?
            .unwrap_or(defaults.idle_timeout),
        max_memory: flag(&mut args, "--max-memory", parse_size)?.unwrap_or(defaults.max_memory),
        max_value_size: flag(&mut args, "--max-value-size", parse_size)?
            .unwrap_or(defaults.max_value_size),
        max_pinned: flag(&mut args, "--max-pinned", parse_positive_count)?
            .unwrap_or(defaults.max_pinned),
        busy_poll: flag(&mut args, "--busy-poll", parse_busy_poll)?.unwrap_or(defaults.busy_poll),
        requirepass: flag(&mut args, "--requirepass", parse_password)?
            .unwrap_or(defaults.requirepass),
        log_level: flag(&mut args, "--log-level", parse_log_level)?.unwrap_or(defaults.log_level),
    };
    if let Some(target) = flag(&mut args, "--redis", parse_redis)? {
        config.redis = target.addr;
        config.redis_auth = target.auth;
        config.redis_db = target.db;
    }
    if let Some(password) = env("SIDECACHE_REDIS_PASSWORD").filter(|p| !p.is_empty()) {
        // The address's own password wins; this one keeps it out of `ps`.
        match &mut config.redis_auth {
            Some(_) => {}
            None => {
                config.redis_auth = Some(RedisAuth {
                    user: None,
                    password,
                })
            }
        }
    }
    let rest = args.args.finish();
    if let Some(first) = rest.first() {
        return Err(UsageError(format!(
            "unexpected argument '{}' (see --help)",
            first.to_string_lossy()
        )));
    }
    Ok(Invocation::Run(Box::new(config)))
}

/// The command line, and the environment behind it.
struct Args<'e> {
    args: pico_args::Arguments,
    env: &'e dyn Fn(&str) -> Option<String>,
}

/// The environment variable that stands for `flag`: `--max-clients` is
/// `SIDECACHE_MAX_CLIENTS`.
pub fn env_name(flag: &str) -> String {
    format!(
        "SIDECACHE_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_ascii_uppercase()
    )
}

/// The value of `name` from the command line, or else from its
/// environment variable; errors name whichever gave the bad value.
fn flag<T>(
    args: &mut Args<'_>,
    name: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, UsageError> {
    let given = args.args.opt_value_from_fn(name, parse).map_err(|e| {
        UsageError(match e {
            pico_args::Error::OptionWithoutAValue(_) => format!("{name} needs a value"),
            pico_args::Error::Utf8ArgumentParsingFailed { value, cause } => {
                // A password is not echoed back.
                let secret = name == "--requirepass" || value.contains('@');
                let value = if secret { "***" } else { value.as_str() };
                format!("invalid value '{value}' for {name}: {cause}")
            }
            pico_args::Error::ArgumentParsingFailed { cause } => {
                format!("invalid value for {name}: {cause}")
            }
            other => format!("{name}: {other}"),
        })
    })?;
    if given.is_some() {
        return Ok(given);
    }
    let var = env_name(name);
    match (args.env)(&var) {
        None => Ok(None),
        Some(value) => parse(&value).map(Some).map_err(|cause| {
            // A password is not echoed back.
            let shown = if name == "--requirepass" || value.contains('@') {
                "***"
            } else {
                &value
            };
            UsageError(format!("invalid value '{shown}' for {var}: {cause}"))
        }),
    }
}

fn parse_password(s: &str) -> Result<Option<String>, String> {
    match s {
        "" => Err("must not be empty".to_string()),
        _ => Ok(Some(s.to_string())),
    }
}

fn parse_log_level(s: &str) -> Result<LogLevel, String> {
    match s {
        "error" => Ok(LogLevel::Error),
        "warn" => Ok(LogLevel::Warn),
        "info" => Ok(LogLevel::Info),
        "debug" => Ok(LogLevel::Debug),
        _ => Err("expected error, warn, info or debug".to_string()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("expected HOST:PORT ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| "the host has no address".to_string())
}

/// Where Redis is and how to log in, from `--redis`.
struct RedisTarget {
    addr: Address,
    auth: Option<RedisAuth>,
    db: u32,
}

/// `HOST:PORT`, or `redis://[USER[:PASSWORD]@]HOST:PORT[/DB]` (`redis://:PASSWORD@...`
/// for the default user with a password).
fn parse_redis(s: &str) -> Result<RedisTarget, String> {
    if let Some(rest) = s.strip_prefix("unix://") {
        // unix:///path/to.sock?db=N
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let db = match query.strip_prefix("db=") {
            Some(db) => db
                .parse()
                .map_err(|_| format!("expected a database number after 'db=', not '{db}'"))?,
            None if query.is_empty() => 0,
            None => return Err(format!("unknown option '{query}' (db=N is the one known)")),
        };
        return Ok(RedisTarget {
            addr: unix_path(path)?,
            auth: None,
            db,
        });
    }
    let Some(rest) = s.strip_prefix("redis://") else {
        return Ok(RedisTarget {
            addr: parse_address(s)?,
            auth: None,
            db: 0,
        });
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let (host_port, db) = match rest.split_once('/') {
        None => (rest, 0),
        Some((host_port, "")) => (host_port, 0),
        Some((host_port, db)) => (
            host_port,
            db.parse()
                .map_err(|_| format!("expected a database number after '/', not '{db}'"))?,
        ),
    };
    let auth = match credentials {
        None => None,
        Some(credentials) => {
            let (user, password) = match credentials.split_once(':') {
                Some((user, password)) => (user, password),
                // redis://secret@host is a password for the default user, as in redis-cli.
                None => ("", credentials),
            };
            if password.is_empty() {
                return Err("the password after ':' is empty".to_string());
            }
            Some(RedisAuth {
                user: (!user.is_empty()).then(|| user.to_string()),
                password: password.to_string(),
            })
        }
    };
    Ok(RedisTarget {
        addr: Address::Tcp(parse_addr(host_port)?),
        auth,
        db,
    })
}

/// `HOST:PORT` or `unix:/path/to.sock`.
fn parse_address(s: &str) -> Result<Address, String> {
    match s.strip_prefix("unix:") {
        Some(path) => unix_path(path),
        None => parse_addr(s).map(Address::Tcp),
    }
}

fn unix_path(path: &str) -> Result<Address, String> {
    if path.is_empty() {
        return Err("expected a socket path after 'unix:'".to_string());
    }
    Ok(Address::Unix(PathBuf::from(path)))
}

/// Permissions in octal, such as 0660 or 770.
fn parse_mode(s: &str) -> Result<Option<u32>, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|&m| m <= 0o777)
        .map(Some)
        .ok_or_else(|| "expected permissions in octal, such as 0660".to_string())
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| "expected a whole number, such as 10000".to_string())
}

fn parse_positive_count(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(n),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than 0".to_string());
    }
    Ok(d)
}

/// A size as Redis writes one in its config: bytes, or a number followed
/// by k, kb, m, mb, g or gb (k = 1000, kb = 1024), in any case.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || "expected a size such as 64mb, 1gb, 512kb or 1000".to_string();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let n: usize = number.parse().map_err(|_| bad())?;
    let multiplier: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| "size is too large".to_string())
}

fn parse_tracking(s: &str) -> Result<TrackingMode, String> {
    match s {
        "auto" => Ok(TrackingMode::Auto),
        "on" => Ok(TrackingMode::On),
        "off" => Ok(TrackingMode::Off),
        _ => Err("expected auto, on or off".to_string()),
    }
}

fn parse_ttl(s: &str) -> Result<Option<Duration>, String> {
    let ttl = parse_duration(s)?;
    Ok((!ttl.is_zero()).then_some(ttl))
}

/// Whole microseconds, as Linux's `net.core.busy_poll` counts them; at most
/// a second, as longer would only burn CPU.
fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(micros) if micros <= 1_000_000 => Ok(Duration::from_micros(micros)),
        _ => Err("expected microseconds from 0 to 1000000, such as 50".to_string()),
    }
}

/// A whole number of seconds, or a whole number followed by `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || "expected a duration such as 60, 500ms, 30s, 5m or 1h".to_string();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| "duration is too long".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Invocation, UsageError> {
        parse_args_with_env(args.iter().map(OsString::from).collect(), |_| None)
    }

    fn config(args: &[&str]) -> Config {
        match run(args) {
            Ok(Invocation::Run(c)) => *c,
            other => panic!("expected a config from {args:?}, got {other:?}"),
        }
    }

    fn with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_args_with_env(args.iter().map(OsString::from).collect(), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn every_flag_from_the_environment_and_the_command_line_wins() {
        assert_eq!(env_name("--max-clients"), "SIDECACHE_MAX_CLIENTS");
        let env = [
            ("SIDECACHE_MAX_CLIENTS", "7"),
            ("SIDECACHE_REQUIREPASS", "s3cret"),
            ("SIDECACHE_LOG_LEVEL", "debug"),
            ("SIDECACHE_TTL", "5s"),
        ];
        let Ok(Invocation::Run(c)) = with_env(&["--ttl", "9"], &env) else {
            panic!("should parse");
        };
        assert_eq!(c.max_clients, 7);
        assert_eq!(c.requirepass.as_deref(), Some("s3cret"));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.ttl, Some(Duration::from_secs(9)), "the flag wins");
        let e = with_env(&[], &[("SIDECACHE_MAX_CLIENTS", "lots")]).unwrap_err();
        assert!(e.0.contains("SIDECACHE_MAX_CLIENTS"), "{e}");
        let e = with_env(&[], &[("SIDECACHE_REQUIREPASS", "")]).unwrap_err();
        assert!(!e.0.contains("''"), "{e}");
        assert!(run(&["--log-level", "loud"]).is_err());
    }

    #[test]
    fn redis_urls() {
        let c = config(&["--redis", "redis://app:s3cret@127.0.0.1:6380/2"]);
        assert_eq!(c.redis.to_string(), "127.0.0.1:6380");
        assert_eq!(c.redis_db, 2);
        let auth = c.redis_auth.clone().unwrap();
        assert_eq!(
            (auth.user.as_deref(), auth.password.as_str()),
            (Some("app"), "s3cret")
        );
        assert!(!c.describe().contains("s3cret"));
        assert!(c.describe().contains("redis://app:***@127.0.0.1:6380/2"));
        let c = config(&["--redis", "redis://:pw@127.0.0.1:6379"]);
        assert_eq!(c.redis_auth.unwrap().user, None);
        let c = config(&["--redis", "redis://127.0.0.1:6379/3"]);
        assert_eq!((c.redis_auth, c.redis_db), (None, 3));
        assert!(run(&["--redis", "redis://127.0.0.1:6379/x"]).is_err());
        assert!(run(&["--redis", "redis://u:@127.0.0.1:6379"]).is_err());
        let Ok(Invocation::Run(c)) = with_env(&[], &[("SIDECACHE_REDIS_PASSWORD", "fromenv")])
        else {
            panic!("should parse");
        };
        assert_eq!(c.redis_auth.unwrap().password, "fromenv");
        let Ok(Invocation::Run(c)) = with_env(
            &["--redis", "redis://u:inurl@127.0.0.1:6379"],
            &[("SIDECACHE_REDIS_PASSWORD", "fromenv")],
        ) else {
            panic!("should parse");
        };
        assert_eq!(c.redis_auth.unwrap().password, "inurl");
    }

    #[test]
    fn unix_sockets_on_both_sides() {
        let c = config(&[
            "--listen",
            "unix:/run/app/sidecache.sock",
            "--unix-mode",
            "0660",
            "--redis",
            "unix:///run/redis/redis.sock?db=4",
        ]);
        assert_eq!(c.listen, Address::Unix("/run/app/sidecache.sock".into()));
        assert_eq!(c.unix_mode, Some(0o660));
        assert_eq!(c.redis, Address::Unix("/run/redis/redis.sock".into()));
        assert_eq!(c.redis_db, 4);
        assert!(c
            .describe()
            .contains("--listen unix:/run/app/sidecache.sock --unix-mode 0660"));
        assert!(c
            .describe()
            .contains("--redis unix:///run/redis/redis.sock?db=4"));
        let c = config(&["--redis", "unix:/tmp/r.sock"]);
        assert_eq!(
            (c.redis, c.redis_db),
            (Address::Unix("/tmp/r.sock".into()), 0)
        );
        assert!(run(&["--unix-mode", "0999"]).is_err());
        assert!(run(&["--listen", "unix:"]).is_err());
        assert!(run(&["--redis", "unix:///tmp/r.sock?database=2"]).is_err());
    }

    #[test]
    fn the_description_masks_the_password() {
        let c = config(&["--requirepass", "hunter2", "--ttl", "250ms"]);
        let line = c.describe();
        assert!(!line.contains("hunter2"), "{line}");
        assert!(line.contains("--requirepass (set)"), "{line}");
        assert!(line.contains("--ttl 250ms"), "{line}");
        assert!(config(&[]).describe().contains("--requirepass (none)"));
    }

    #[test]
    fn defaults() {
        assert_eq!(config(&[]), Config::default());
        assert_eq!(config(&[]).listen.to_string(), "127.0.0.1:5555");
        assert_eq!(config(&[]).ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn both_value_forms() {
        let a = config(&["--ttl", "10", "--capacity", "5"]);
        let b = config(&["--ttl=10", "--capacity=5"]);
        assert_eq!(a, b);
        assert_eq!(a.ttl, Some(Duration::from_secs(10)));
        assert_eq!(a.capacity, 5);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("7s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1",
            "10d",
            " 1",
            "1 s",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(config(&["--ttl", "0"]).ttl, None);
    }

    #[test]
    fn sizes_as_redis_writes_them() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1k"), Ok(1000));
        assert_eq!(parse_size("1kb"), Ok(1024));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("2m"), Ok(2_000_000));
        for bad in [
            "",
            "mb",
            "1.5mb",
            "-1",
            "1tb",
            " 1",
            "99999999999999999999gb",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
        let c = config(&[
            "--max-memory",
            "1mb",
            "--max-value-size=10kb",
            "--max-output",
            "2mb",
        ]);
        assert_eq!(
            (c.max_memory, c.max_value_size, c.max_output),
            (1 << 20, 10 << 10, 2 << 20)
        );
    }

    #[test]
    fn limits() {
        let c = config(&[
            "--timeout",
            "250ms",
            "--max-clients",
            "5",
            "--idle-timeout",
            "30s",
        ]);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.max_clients, 5);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config(&[]).idle_timeout, None);
        assert!(run(&["--timeout", "0"]).is_err());
        assert!(run(&["--max-clients", "0"]).is_err());
    }

    #[test]
    fn busy_poll_counts_microseconds_up_to_a_second() {
        assert_eq!(config(&[]).busy_poll, Duration::ZERO);
        assert_eq!(
            config(&["--busy-poll", "50"]).busy_poll,
            Duration::from_micros(50)
        );
        assert_eq!(
            config(&["--busy-poll", "1000000"]).busy_poll,
            Duration::from_secs(1)
        );
        for bad in ["-1", "50us", "1000001", ""] {
            let e = run(&["--busy-poll", bad]).unwrap_err().0;
            assert!(e.contains("--busy-poll"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        let e = run(&["--ttl", "soon"]).unwrap_err().0;
        assert!(e.contains("--ttl") && e.contains("soon"), "{e}");
        let e = run(&["--capacity", "-3"]).unwrap_err().0;
        assert!(e.contains("--capacity"), "{e}");
        let e = run(&["--bogus"]).unwrap_err().0;
        assert!(e.contains("--bogus"), "{e}");
        let e = run(&["--redis"]).unwrap_err().0;
        assert!(e.contains("--redis"), "{e}");
        let e = run(&["--tracking", "maybe"]).unwrap_err().0;
        assert!(e.contains("--tracking") && e.contains("maybe"), "{e}");
        let e = run(&["--listen", "nowhere"]).unwrap_err().0;
        assert!(e.contains("--listen"), "{e}");
    }

    #[test]
    fn help_and_version() {
        assert_eq!(run(&["--help"]), Ok(Invocation::Help));
        assert_eq!(run(&["-V"]), Ok(Invocation::Version));
        for flag in [
            "--listen",
            "--redis",
            "--capacity",
            "--ttl",
            "--tracking",
            "--timeout",
            "--max-clients",
            "--max-output",
            "--idle-timeout",
            "--max-memory",
            "--max-value-size",
            "--max-pinned",
            "--busy-poll",
            "--requirepass",
            "--log-level",
            "--help",
            "--version",
        ] {
            assert!(HELP.contains(flag), "help lacks {flag}");
        }
    }
}
