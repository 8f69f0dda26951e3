//! Log lines on stderr, one event a line: pid, time (UTC, to the
//! millisecond), level, message, in the spirit of Redis's own log
//! (`pid:role date time level message`). The level is set once at start-up
//! (`--log-level`); nothing is logged per request at the default level.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much is logged, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// sidecache cannot go on, or a client-visible failure.
    Error = 0,
    /// Something is wrong with Redis or a limit was hit.
    Warn = 1,
    /// Start-up, state changes of the connections to Redis.
    Info = 2,
    /// Client connections opening and closing.
    Debug = 3,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Logs `level` and everything more severe from now on.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line of `level` would be written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one log line at info level.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line($crate::log::Level::Info, format_args!($($arg)*))
    };
}

/// Writes one log line at warn level.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        $crate::log::line($crate::log::Level::Warn, format_args!($($arg)*))
    };
}

/// Writes one log line at error level.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => {
        $crate::log::line($crate::log::Level::Error, format_args!($($arg)*))
    };
}

/// Writes one log line at debug level; the message is not even formatted
/// unless debug lines are wanted.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::line($crate::log::Level::Debug, format_args!($($arg)*))
        }
    };
}

pub fn line(level: Level, message: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let time_of_day = secs % 86_400;
    eprintln!(
        "{}:P {year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} {} {message}",
        std::process::id(),
        time_of_day / 3600,
        time_of_day / 60 % 60,
        time_of_day % 60,
        since_epoch.subsec_millis(),
        level.name(),
    );
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }

    #[test]
    fn levels_include_the_more_severe() {
        set_level(Level::Warn);
        assert!(enabled(Level::Error) && enabled(Level::Warn));
        assert!(!enabled(Level::Info) && !enabled(Level::Debug));
        set_level(Level::Info);
        assert!(enabled(Level::Info) && !enabled(Level::Debug));
    }
}
