//! Transactions (`MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`) through
//! sidecache, checked against Redis itself.
//!
//! - A differential corpus of scripts: each runs once directly against Redis
//!   and once through sidecache (the same redis-server, the same key names,
//!   `FLUSHALL` in between), as a RESP2 and as a RESP3 client, one command
//!   at a time and with every run of client commands sent in one write. The
//!   reply bytes must be identical. Steps marked "other" are sent by a
//!   second connection straight to Redis in both runs (to touch a watched
//!   key). Some steps also state what Redis must answer, so that the corpus
//!   tests what its names say.
//! - Read-your-writes: a value cached through sidecache and then written
//!   inside `MULTI`/`EXEC` is never read back old, by the writer or anyone.
//! - Isolation: while one client's `MULTI` is open, 50 other clients go on
//!   through sidecache, and none of their commands lands in the transaction.
//!
//! `SIDECACHE_TEST_DIRECT=1` runs all this against Redis itself, which
//! checks the corpus and its expectations.

#[macro_use]
mod common;

use common::*;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

const QUEUED: &[u8] = b"+QUEUED\r\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
const EXEC_WITHOUT_MULTI: &[u8] = b"-ERR EXEC without MULTI\r\n";
const DISCARD_WITHOUT_MULTI: &[u8] = b"-ERR DISCARD without MULTI\r\n";
/// A nil `EXEC` (a watched key was touched), RESP2 and RESP3.
const NIL_EXEC2: &[u8] = b"*-1\r\n";
const NIL_EXEC3: &[u8] = b"_\r\n";

// ---------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The client under test: through sidecache, or straight to Redis in
    /// the reference run.
    Client,
    /// Another client, straight to Redis in both runs (RESP2), sent once
    /// every earlier reply has come.
    Other,
}

struct Step {
    who: Who,
    args: Vec<Vec<u8>>,
    /// What Redis itself answers, as a RESP2 and as a RESP3 client.
    expect: Option<(Vec<u8>, Vec<u8>)>,
}

impl Step {
    /// Redis answers exactly `reply` in both protocols.
    fn is(self, reply: &[u8]) -> Step {
        self.is23(reply, reply)
    }

    /// Redis answers `resp2` to a RESP2 client and `resp3` to a RESP3 one.
    fn is23(mut self, resp2: &[u8], resp3: &[u8]) -> Step {
        self.expect = Some((resp2.to_vec(), resp3.to_vec()));
        self
    }

    fn queued(self) -> Step {
        self.is(QUEUED)
    }
}

fn step(who: Who, args: &[&str]) -> Step {
    Step {
        who,
        args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
        expect: None,
    }
}

/// A command of the client under test.
fn c(args: &[&str]) -> Step {
    step(Who::Client, args)
}

/// A command of another client, straight to Redis.
fn other(args: &[&str]) -> Step {
    step(Who::Other, args)
}

struct Script {
    name: &'static str,
    steps: Vec<Step>,
}

fn script(name: &'static str, steps: Vec<Step>) -> Script {
    Script { name, steps }
}

/// A command for messages: its arguments, escaped, long ones shortened.
fn show(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| {
            let printable = a.iter().all(|&b| b.is_ascii_graphic());
            if a.len() > 40 {
                format!("<{} bytes>", a.len())
            } else if printable && !a.is_empty() {
                String::from_utf8_lossy(a).into_owned()
            } else {
                escape(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn show_script(s: &Script, mark: Option<usize>) -> String {
    let mut out = String::new();
    for (i, st) in s.steps.iter().enumerate() {
        let who = match st.who {
            Who::Client => "client",
            Who::Other => "other ",
        };
        let arrow = if mark == Some(i) { "=>" } else { "  " };
        out.push_str(&format!("  {arrow} {i:3} {who} {}\n", show(&st.args)));
    }
    out
}

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

fn corpus() -> Vec<Script> {
    let big = "x".repeat(200_000);
    let big_tail = "y".repeat(100_000);
    let mut many = vec![c(&["MULTI"]).is(OK)];
    for i in 0..300 {
        let v = i.to_string();
        many.push(c(&["INCR", "tx:cnt"]).queued());
        many.push(c(&["RPUSH", "tx:list", &v]).queued());
        if i % 50 == 0 {
            many.push(c(&["LRANGE", "tx:list", "0", "-1"]).queued());
        }
    }
    many.push(c(&["EXEC"]));
    many.push(c(&["GET", "tx:cnt"]).is(&bulk("300")));
    many.push(c(&["LLEN", "tx:list"]).is(&int(300)));

    vec![
        script(
            "plain",
            vec![
                c(&["SET", "tx:a", "1"]).is(OK),
                c(&["GET", "tx:a"]),
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:a", "10"]).queued(),
                c(&["INCR", "tx:a"]).queued(),
                c(&["GET", "tx:a"]).queued(),
                c(&["APPEND", "tx:a", "x"]).queued(),
                c(&["GET", "tx:a"]).queued(),
                c(&["GET", "tx:missing"]).queued(),
                c(&["EXEC"]).is23(
                    b"*6\r\n+OK\r\n:11\r\n$2\r\n11\r\n:3\r\n$3\r\n11x\r\n$-1\r\n",
                    b"*6\r\n+OK\r\n:11\r\n$2\r\n11\r\n:3\r\n$3\r\n11x\r\n_\r\n",
                ),
                c(&["GET", "tx:a"]).is(&bulk("11x")),
                c(&["GET", "tx:missing"]),
            ],
        ),
        script(
            "empty_transaction",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["EXEC"]).is(b"*0\r\n"),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
            ],
        ),
        script(
            "lower_case_commands",
            vec![
                c(&["multi"]).is(OK),
                c(&["set", "tx:a", "1"]).queued(),
                c(&["Exec"]).is(b"*1\r\n+OK\r\n"),
                c(&["watch", "tx:a"]).is(OK),
                c(&["unwatch"]).is(OK),
                c(&["mUlTi"]).is(OK),
                c(&["get", "tx:a"]).queued(),
                c(&["discard"]).is(OK),
                c(&["get", "tx:a"]).is(&bulk("1")),
            ],
        ),
        script(
            "queue_time_error_wrong_arity",
            vec![
                c(&["SET", "tx:a", "1"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:a", "2"]).queued(),
                c(&["GET"]).is(b"-ERR wrong number of arguments for 'get' command\r\n"),
                c(&["INCR", "tx:b"]).queued(),
                c(&["EXEC"]).is(EXECABORT),
                c(&["GET", "tx:a"]).is(&bulk("1")),
                c(&["EXISTS", "tx:b"]).is(&int(0)),
                // The next transaction runs.
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:b"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:1\r\n"),
            ],
        ),
        script(
            "queue_time_error_unknown_command",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:a", "1"]).queued(),
                c(&["NOSUCHCOMMAND", "tx:a", "2"]),
                c(&["SET", "tx:b", "1"]).queued(),
                c(&["EXEC"]).is(EXECABORT),
                c(&["GET", "tx:a"]).is23(NIL, b"_\r\n"),
                c(&["EXISTS", "tx:a", "tx:b"]).is(&int(0)),
            ],
        ),
        script(
            "queue_time_error_then_discard",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:a", "1"]).queued(),
                c(&["SET", "tx:a"]),
                c(&["DISCARD"]).is(OK),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
                c(&["EXISTS", "tx:a"]).is(&int(0)),
            ],
        ),
        script(
            "run_time_errors",
            vec![
                c(&["SET", "tx:s", "foo"]).is(OK),
                c(&["RPUSH", "tx:l", "a"]).is(&int(1)),
                c(&["GET", "tx:s"]),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:s"]).queued(),
                c(&["SET", "tx:t", "1"]).queued(),
                c(&["LPUSH", "tx:s", "x"]).queued(),
                c(&["GET", "tx:l"]).queued(),
                c(&["HSET", "tx:s", "f", "v"]).queued(),
                c(&["INCRBY", "tx:t", "5"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:t"]).is(&bulk("6")),
                c(&["GET", "tx:s"]).is(&bulk("foo")),
                c(&["LRANGE", "tx:l", "0", "-1"]),
            ],
        ),
        script(
            "watch_untouched",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["WATCH", "tx:w"]).is(OK),
                c(&["GET", "tx:w"]).is(&bulk("1")),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:w"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:2\r\n"),
                c(&["GET", "tx:w"]).is(&bulk("2")),
            ],
        ),
        script(
            "watch_touched_by_another_connection",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["GET", "tx:w"]),
                c(&["GET", "tx:w"]),
                c(&["WATCH", "tx:w"]).is(OK),
                other(&["SET", "tx:w", "5"]).is(OK),
                c(&["GET", "tx:w"]).is(&bulk("5")),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:w"]).queued(),
                c(&["EXEC"]).is23(NIL_EXEC2, NIL_EXEC3),
                c(&["GET", "tx:w"]).is(&bulk("5")),
                // A nil EXEC ends the WATCH: the next transaction runs.
                other(&["SET", "tx:w", "7"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:w"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:8\r\n"),
                c(&["GET", "tx:w"]).is(&bulk("8")),
            ],
        ),
        script(
            "watch_touched_after_multi",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["WATCH", "tx:w"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:w"]).queued(),
                other(&["INCR", "tx:w"]).is(&int(2)),
                c(&["EXEC"]).is23(NIL_EXEC2, NIL_EXEC3),
                c(&["GET", "tx:w"]).is(&bulk("2")),
            ],
        ),
        script(
            "watch_several_keys_one_touched",
            vec![
                c(&["MSET", "tx:a", "1", "tx:b", "2"]).is(OK),
                c(&["WATCH", "tx:a", "tx:b"]).is(OK),
                c(&["WATCH", "tx:c"]).is(OK),
                other(&["EXPIRE", "tx:b", "1000"]).is(&int(1)),
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:a", "changed"]).queued(),
                c(&["EXEC"]).is23(NIL_EXEC2, NIL_EXEC3),
                c(&["GET", "tx:a"]).is(&bulk("1")),
            ],
        ),
        script(
            "watch_missing_key_created_by_another_connection",
            vec![
                c(&["GET", "tx:new"]),
                c(&["WATCH", "tx:new"]).is(OK),
                other(&["SET", "tx:new", "1"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:new", "2"]).queued(),
                c(&["EXEC"]).is23(NIL_EXEC2, NIL_EXEC3),
                c(&["GET", "tx:new"]).is(&bulk("1")),
            ],
        ),
        script(
            "watch_touched_by_own_write",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["WATCH", "tx:w"]).is(OK),
                c(&["SET", "tx:w", "2"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["GET", "tx:w"]).queued(),
                c(&["EXEC"]).is23(NIL_EXEC2, NIL_EXEC3),
                c(&["GET", "tx:w"]).is(&bulk("2")),
            ],
        ),
        script(
            "watch_then_unwatch",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["WATCH", "tx:w"]).is(OK),
                c(&["UNWATCH"]).is(OK),
                other(&["SET", "tx:w", "5"]).is(OK),
                c(&["GET", "tx:w"]).is(&bulk("5")),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:w"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:6\r\n"),
                c(&["GET", "tx:w"]).is(&bulk("6")),
            ],
        ),
        script(
            "watch_without_multi",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["WATCH", "tx:w"]).is(OK),
                c(&["GET", "tx:w"]).is(&bulk("1")),
                c(&["SET", "tx:w", "2"]).is(OK),
                c(&["GET", "tx:w"]).is(&bulk("2")),
                c(&["INCR", "tx:w"]).is(&int(3)),
                c(&["PING"]).is(PONG),
                c(&["UNWATCH"]).is(OK),
                c(&["GET", "tx:w"]).is(&bulk("3")),
                c(&["UNWATCH"]).is(OK),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
            ],
        ),
        script(
            "unwatch_and_watch_errors",
            vec![
                c(&["UNWATCH"]).is(OK),
                c(&["WATCH"]).is(b"-ERR wrong number of arguments for 'watch' command\r\n"),
                c(&["MULTI", "extra"])
                    .is(b"-ERR wrong number of arguments for 'multi' command\r\n"),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
                c(&["SET", "tx:a", "1"]).is(OK),
            ],
        ),
        script(
            "discard",
            vec![
                c(&["SET", "tx:d", "1"]).is(OK),
                c(&["GET", "tx:d"]).is(&bulk("1")),
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:d", "2"]).queued(),
                c(&["INCR", "tx:d"]).queued(),
                c(&["DEL", "tx:d"]).queued(),
                c(&["DISCARD"]).is(OK),
                c(&["GET", "tx:d"]).is(&bulk("1")),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
                c(&["DISCARD"]).is(DISCARD_WITHOUT_MULTI),
            ],
        ),
        script(
            "discard_unwatches",
            vec![
                c(&["SET", "tx:d", "1"]).is(OK),
                c(&["WATCH", "tx:d"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["DISCARD"]).is(OK),
                other(&["SET", "tx:d", "9"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:d"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:10\r\n"),
            ],
        ),
        script(
            "exec_and_discard_without_multi",
            vec![
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
                c(&["DISCARD"]).is(DISCARD_WITHOUT_MULTI),
                c(&["SET", "tx:a", "1"]).is(OK),
                c(&["GET", "tx:a"]).is(&bulk("1")),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
                c(&["DISCARD"]).is(DISCARD_WITHOUT_MULTI),
            ],
        ),
        script(
            "nested_multi",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:n", "1"]).queued(),
                c(&["MULTI"]).is(b"-ERR MULTI calls can not be nested\r\n"),
                c(&["SET", "tx:m", "2"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:n"]),
                c(&["GET", "tx:m"]),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
            ],
        ),
        script(
            "watch_inside_multi",
            vec![
                c(&["SET", "tx:x", "1"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:x", "2"]).queued(),
                c(&["WATCH", "tx:x"]).is(b"-ERR WATCH inside MULTI is not allowed\r\n"),
                c(&["INCR", "tx:x"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:x"]),
            ],
        ),
        script(
            // UNWATCH inside MULTI is queued: it does not end the transaction.
            "unwatch_inside_multi",
            vec![
                c(&["SET", "tx:u", "1"]).is(OK),
                c(&["WATCH", "tx:u"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["UNWATCH"]).queued(),
                c(&["INCR", "tx:u"]).queued(),
                c(&["GET", "tx:u"]).queued(),
                c(&["EXEC"]).is(b"*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n"),
                c(&["EXEC"]).is(EXEC_WITHOUT_MULTI),
                c(&["GET", "tx:u"]).is(&bulk("2")),
            ],
        ),
        script(
            "get_inside_multi_of_a_cached_key",
            vec![
                c(&["SET", "tx:c", "v1"]).is(OK),
                c(&["GET", "tx:c"]).is(&bulk("v1")),
                c(&["GET", "tx:c"]).is(&bulk("v1")),
                c(&["MULTI"]).is(OK),
                c(&["GET", "tx:c"]).queued(),
                c(&["SET", "tx:c", "v2"]).queued(),
                c(&["GET", "tx:c"]).queued(),
                c(&["EXEC"]).is(b"*3\r\n$2\r\nv1\r\n+OK\r\n$2\r\nv2\r\n"),
                c(&["GET", "tx:c"]).is(&bulk("v2")),
                c(&["GET", "tx:c"]).is(&bulk("v2")),
            ],
        ),
        script(
            "get_inside_multi_sees_another_connections_write",
            vec![
                c(&["SET", "tx:c", "v1"]).is(OK),
                c(&["GET", "tx:c"]).is(&bulk("v1")),
                c(&["GET", "tx:c"]).is(&bulk("v1")),
                c(&["GET", "tx:nil"]),
                c(&["GET", "tx:nil"]),
                c(&["MULTI"]).is(OK),
                c(&["GET", "tx:c"]).queued(),
                c(&["GET", "tx:nil"]).queued(),
                other(&["MSET", "tx:c", "v2", "tx:nil", "now"]).is(OK),
                c(&["EXEC"]).is(b"*2\r\n$2\r\nv2\r\n$3\r\nnow\r\n"),
                c(&["GET", "tx:c"]).is(&bulk("v2")),
                c(&["GET", "tx:nil"]).is(&bulk("now")),
            ],
        ),
        script(
            "writes_in_exec_replace_cached_values",
            vec![
                c(&["MSET", "tx:a", "1", "tx:b", "2", "tx:c", "3"]).is(OK),
                c(&["GET", "tx:a"]),
                c(&["GET", "tx:b"]),
                c(&["GET", "tx:c"]),
                c(&["GET", "tx:d"]),
                c(&["MULTI"]).is(OK),
                c(&["MSET", "tx:a", "10", "tx:d", "40"]).queued(),
                c(&["DEL", "tx:b"]).queued(),
                c(&["RENAME", "tx:c", "tx:e"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:a"]).is(&bulk("10")),
                c(&["GET", "tx:b"]),
                c(&["GET", "tx:c"]),
                c(&["GET", "tx:d"]).is(&bulk("40")),
                c(&["GET", "tx:e"]).is(&bulk("3")),
            ],
        ),
        script(
            "flushdb_inside_exec",
            vec![
                c(&["SET", "tx:a", "1"]).is(OK),
                c(&["GET", "tx:a"]).is(&bulk("1")),
                c(&["MULTI"]).is(OK),
                c(&["FLUSHDB"]).queued(),
                c(&["SET", "tx:b", "2"]).queued(),
                c(&["EXEC"]).is(b"*2\r\n+OK\r\n+OK\r\n"),
                c(&["GET", "tx:a"]).is23(NIL, b"_\r\n"),
                c(&["GET", "tx:b"]).is(&bulk("2")),
            ],
        ),
        script(
            "expire_rename_and_scripts_inside_exec",
            vec![
                c(&["SET", "tx:e", "v"]).is(OK),
                c(&["GET", "tx:e"]).is(&bulk("v")),
                c(&["MULTI"]).is(OK),
                c(&["EXPIRE", "tx:e", "1000"]).queued(),
                c(&["TTL", "tx:e"]).queued(),
                c(&["PERSIST", "tx:e"]).queued(),
                c(&["TTL", "tx:e"]).queued(),
                c(&["RENAME", "tx:e", "tx:f"]).queued(),
                c(&["EXISTS", "tx:e"]).queued(),
                c(&["EVAL", "return redis.call('incr', KEYS[1])", "1", "tx:n"]).queued(),
                c(&["EVAL", "return {1, 'two', {3}, false}", "0"]).queued(),
                c(&["TYPE", "tx:f"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:e"]),
                c(&["GET", "tx:f"]).is(&bulk("v")),
                c(&["GET", "tx:n"]).is(&bulk("1")),
            ],
        ),
        script(
            "commands_sidecache_answers_itself_are_queued_inside_multi",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["PING"]).queued(),
                c(&["PING", "hello"]).queued(),
                c(&["ECHO", "hi"]).queued(),
                c(&["SELECT", "0"]).queued(),
                c(&["SET", "tx:a", "1"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:a"]).is(&bulk("1")),
            ],
        ),
        script(
            "many_types_in_one_exec",
            vec![
                c(&["SET", "tx:str", "s"]).is(OK),
                c(&["GET", "tx:str"]),
                c(&["MULTI"]).is(OK),
                // lists
                c(&["RPUSH", "tx:l", "a", "b", "c", "d"]).queued(),
                c(&["LPOP", "tx:l"]).queued(),
                c(&["LPUSH", "tx:l", "z"]).queued(),
                c(&["LRANGE", "tx:l", "0", "-1"]).queued(),
                c(&["LINDEX", "tx:l", "1"]).queued(),
                c(&["LLEN", "tx:l"]).queued(),
                // hashes
                c(&["HSET", "tx:h", "f1", "v1", "f2", "v2"]).queued(),
                c(&["HINCRBY", "tx:h", "n", "5"]).queued(),
                c(&["HINCRBYFLOAT", "tx:h", "fl", "1.25"]).queued(),
                c(&["HGETALL", "tx:h"]).queued(),
                c(&["HGET", "tx:h", "f2"]).queued(),
                c(&["HMGET", "tx:h", "f1", "nosuch"]).queued(),
                c(&["HGETALL", "tx:nohash"]).queued(),
                // sets
                c(&["SADD", "tx:set", "a", "b", "c", "a"]).queued(),
                c(&["SREM", "tx:set", "b"]).queued(),
                c(&["SMEMBERS", "tx:set"]).queued(),
                c(&["SISMEMBER", "tx:set", "a"]).queued(),
                c(&["SCARD", "tx:set"]).queued(),
                c(&["SMEMBERS", "tx:noset"]).queued(),
                // sorted sets
                c(&["ZADD", "tx:z", "1", "a", "2.5", "b", "-0.25", "c"]).queued(),
                c(&["ZINCRBY", "tx:z", "1.5", "a"]).queued(),
                c(&["ZRANGE", "tx:z", "0", "-1", "WITHSCORES"]).queued(),
                c(&["ZRANGE", "tx:z", "0", "-1"]).queued(),
                c(&["ZSCORE", "tx:z", "b"]).queued(),
                c(&["ZSCORE", "tx:z", "nosuch"]).queued(),
                c(&["ZRANK", "tx:z", "b"]).queued(),
                c(&["ZPOPMIN", "tx:z"]).queued(),
                // strings and keys
                c(&["INCRBYFLOAT", "tx:f", "1.5"]).queued(),
                c(&["MSET", "tx:m1", "1", "tx:m2", "2"]).queued(),
                c(&["MGET", "tx:m1", "tx:nosuch", "tx:m2", "tx:str"]).queued(),
                c(&["GET", "tx:str"]).queued(),
                c(&["SETRANGE", "tx:str", "1", "tring"]).queued(),
                c(&["GET", "tx:str"]).queued(),
                c(&["STRLEN", "tx:str"]).queued(),
                c(&["TYPE", "tx:z"]).queued(),
                c(&["EXISTS", "tx:l", "tx:h", "tx:set", "tx:nosuch"]).queued(),
                c(&["DEL", "tx:m1"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:str"]).is(&bulk("string")),
                c(&["LRANGE", "tx:l", "0", "-1"]),
                c(&["HGETALL", "tx:h"]),
                c(&["SMEMBERS", "tx:set"]),
                c(&["ZRANGE", "tx:z", "0", "-1", "WITHSCORES"]),
                c(&["GET", "tx:m1"]),
            ],
        ),
        script("many_commands_in_one_exec", many),
        script(
            "big_values_inside_exec",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["SET", "tx:big", &big]).queued(),
                c(&["GET", "tx:big"]).queued(),
                c(&["APPEND", "tx:big", &big_tail]).queued(),
                c(&["STRLEN", "tx:big"]).queued(),
                c(&["EXEC"]),
                c(&["GET", "tx:big"]),
                c(&["STRLEN", "tx:big"]).is(&int(300_000)),
            ],
        ),
        script(
            "back_to_back_transactions",
            vec![
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:a"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:1\r\n"),
                c(&["GET", "tx:a"]).is(&bulk("1")),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:a"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:2\r\n"),
                c(&["WATCH", "tx:a"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:a"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:3\r\n"),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:a"]).queued(),
                c(&["DISCARD"]).is(OK),
                c(&["WATCH", "tx:a"]).is(OK),
                other(&["INCR", "tx:a"]).is(&int(4)),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:a"]).queued(),
                c(&["EXEC"]).is23(NIL_EXEC2, NIL_EXEC3),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:a"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:5\r\n"),
                c(&["GET", "tx:a"]).is(&bulk("5")),
            ],
        ),
        script(
            "exec_abort_ends_the_watch",
            vec![
                c(&["SET", "tx:w", "1"]).is(OK),
                c(&["WATCH", "tx:w"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["INCR"]),
                c(&["EXEC"]).is(EXECABORT),
                other(&["SET", "tx:w", "5"]).is(OK),
                c(&["MULTI"]).is(OK),
                c(&["INCR", "tx:w"]).queued(),
                c(&["EXEC"]).is(b"*1\r\n:6\r\n"),
            ],
        ),
    ]
}

// ---------------------------------------------------------------------------
// Running scripts
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each command waits for the reply to the one before.
    StepByStep,
    /// Every run of client commands (up to the next "other" step) goes out
    /// in one write.
    Pipelined,
}

/// A raw client of `port` speaking `proto` (`HELLO 3` sent for RESP3).
#[track_caller]
fn connect_proto(port: u16, proto: u8) -> Conn {
    let mut c = Conn::connect(port);
    if proto == 3 {
        c.send_cmd(&["HELLO", "3"]);
        let hello = c.read_reply3_raw();
        assert!(
            hello.starts_with(b"%"),
            "HELLO 3 on port {port} did not answer a RESP3 map: {}",
            escape(&hello)
        );
    }
    c
}

fn request(args: &[Vec<u8>]) -> Vec<u8> {
    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    cmd_bytes(&args)
}

/// Runs `s` with the client under test on `port`, the other client on
/// `redis_port`; returns one reply per step.
fn run_script(s: &Script, port: u16, redis_port: u16, proto: u8, mode: Mode) -> Vec<Vec<u8>> {
    let mut client = connect_proto(port, proto);
    let mut other_conn: Option<Conn> = None;
    let mut replies = Vec::with_capacity(s.steps.len());
    let mut i = 0;
    while i < s.steps.len() {
        match s.steps[i].who {
            Who::Other => {
                let o = other_conn.get_or_insert_with(|| Conn::connect(redis_port));
                o.send(&request(&s.steps[i].args));
                replies.push(o.read_reply3_raw());
                i += 1;
            }
            Who::Client => {
                let end = match mode {
                    Mode::StepByStep => i + 1,
                    Mode::Pipelined => s.steps[i..]
                        .iter()
                        .position(|st| st.who == Who::Other)
                        .map_or(s.steps.len(), |n| i + n),
                };
                let batch: Vec<u8> = s.steps[i..end]
                    .iter()
                    .flat_map(|st| request(&st.args))
                    .collect();
                client.send(&batch);
                for _ in i..end {
                    replies.push(client.read_reply3_raw());
                }
                i = end;
            }
        }
    }
    replies
}

/// Checks the replies of the reference run (Redis itself) against the
/// steps' expectations: a failure is the corpus's fault.
#[track_caller]
fn check_expectations(s: &Script, proto: u8, replies: &[Vec<u8>]) {
    for (i, (st, got)) in s.steps.iter().zip(replies).enumerate() {
        if let Some((r2, r3)) = &st.expect {
            let want = if proto == 3 { r3 } else { r2 };
            assert!(
                got == want,
                "corpus script {:?} (RESP{proto}), step {i} `{}`: Redis itself answered {}, \
                 the script expects {}\n{}",
                s.name,
                show(&st.args),
                escape(got),
                escape(want),
                show_script(s, Some(i))
            );
        }
    }
}

/// The first difference between the reference replies and sidecache's,
/// described in full; `None` if they are identical.
fn compare(
    s: &Script,
    proto: u8,
    mode: Mode,
    reference: &[Vec<u8>],
    got: &[Vec<u8>],
) -> Option<String> {
    let i = (0..s.steps.len()).find(|&i| reference.get(i) != got.get(i))?;
    let none = b"(nothing)".to_vec();
    Some(format!(
        "script {:?} (RESP{proto}, {mode:?}): step {i} `{}` ({:?}) differs\n  \
         Redis:     {}\n  sidecache: {}\n{}",
        s.name,
        show(&s.steps[i].args),
        s.steps[i].who,
        escape(reference.get(i).unwrap_or(&none)),
        escape(got.get(i).unwrap_or(&none)),
        show_script(s, Some(i))
    ))
}

#[track_caller]
fn flushall(redis_port: u16) {
    Conn::connect(redis_port).roundtrip(&["FLUSHALL"], OK);
}

/// Runs the whole corpus directly and through sidecache; fails listing
/// every script whose replies differ.
fn differential(proto: u8, mode: Mode) {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    wait_caching(&redis, &mut Conn::connect(proxy.port()));
    let corpus = corpus();
    let mut failures = Vec::new();
    for s in &corpus {
        flushall(redis.port());
        let reference = run_script(s, redis.port(), redis.port(), proto, mode);
        check_expectations(s, proto, &reference);
        flushall(redis.port());
        let run = panic::catch_unwind(AssertUnwindSafe(|| {
            run_script(s, proxy.port(), redis.port(), proto, mode)
        }));
        match run {
            Ok(got) => failures.extend(compare(s, proto, mode, &reference, &got)),
            Err(p) => failures.push(format!(
                "script {:?} (RESP{proto}, {mode:?}) failed through sidecache: {}\n{}",
                s.name,
                panic_text(&*p),
                show_script(s, None)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scripts answered differently through sidecache than Redis:\n\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}

#[test]
fn same_replies_as_redis_resp2_step_by_step() {
    differential(2, Mode::StepByStep);
}

#[test]
fn same_replies_as_redis_resp2_pipelined() {
    differential(2, Mode::Pipelined);
}

#[test]
fn same_replies_as_redis_resp3_step_by_step() {
    differential(3, Mode::StepByStep);
}

#[test]
fn same_replies_as_redis_resp3_pipelined() {
    differential(3, Mode::Pipelined);
}

// ---------------------------------------------------------------------------
// GET inside MULTI is queued, never served from the cache
// ---------------------------------------------------------------------------

#[test]
fn get_inside_multi_is_queued_and_runs_in_redis() {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    wait_caching(&redis, &mut Conn::connect(proxy.port()));
    let k = "tx:queued-get";
    redis.set(k, "v1");
    let mut c = proxy.connect();
    c.roundtrip(&["GET", k], &bulk("v1"));
    let before = redis_get_calls(redis.port());
    c.roundtrip(&["GET", k], &bulk("v1"));
    if !direct_mode() {
        assert_eq!(
            redis_get_calls(redis.port()),
            before,
            "the second GET of {k} reached Redis: it was not cached"
        );
    }
    let before = redis_get_calls(redis.port());
    c.roundtrip(&["MULTI"], OK);
    c.roundtrip(&["GET", k], QUEUED);
    c.roundtrip(&["GET", k], QUEUED);
    redis.set(k, "v2");
    c.roundtrip(&["EXEC"], b"*2\r\n$2\r\nv2\r\n$2\r\nv2\r\n");
    assert_eq!(
        redis_get_calls(redis.port()) - before,
        2,
        "the GETs inside MULTI did not both run in Redis"
    );
    c.roundtrip(&["GET", k], &bulk("v2"));
}

// ---------------------------------------------------------------------------
// Read-your-writes through EXEC
// ---------------------------------------------------------------------------

/// What one read-your-writes round queues inside MULTI, what EXEC answers
/// and what the key holds afterwards.
fn ryw_round(i: usize, k: &str, old: &Option<String>, proto: u8) -> RywRound {
    let new = format!("value-{i}");
    let existed = i64::from(old.is_some());
    let (queued, exec, value): (Vec<Vec<String>>, Vec<u8>, Option<String>) = match i % 6 {
        0 => (
            vec![vec!["SET".into(), k.into(), new.clone()]],
            b"*1\r\n+OK\r\n".to_vec(),
            Some(new),
        ),
        1 => (
            vec![vec![
                "MSET".into(),
                "ryw:other".into(),
                "x".into(),
                k.into(),
                new.clone(),
            ]],
            b"*1\r\n+OK\r\n".to_vec(),
            Some(new),
        ),
        2 => (
            vec![vec![
                "SET".into(),
                k.into(),
                new.clone(),
                "EX".into(),
                "1000".into(),
            ]],
            b"*1\r\n+OK\r\n".to_vec(),
            Some(new),
        ),
        3 => (
            vec![vec!["DEL".into(), k.into()]],
            format!("*1\r\n:{existed}\r\n").into_bytes(),
            None,
        ),
        4 => (
            vec![
                vec!["DEL".into(), k.into()],
                vec!["SET".into(), k.into(), new.clone()],
                vec!["GET".into(), k.into()],
            ],
            [
                format!("*3\r\n:{existed}\r\n+OK\r\n").into_bytes(),
                bulk(&new),
            ]
            .concat(),
            Some(new),
        ),
        _ => (
            vec![vec!["SET".into(), k.into(), new.clone()]],
            b"*1\r\n+OK\r\n".to_vec(),
            Some(new),
        ),
    };
    RywRound {
        // The last kind of round WATCHes the key first (and GETs it while
        // watching, from Redis).
        watch: i % 6 == 5,
        queued,
        exec,
        value_reply: get_reply(&value, proto),
        value,
    }
}

struct RywRound {
    watch: bool,
    queued: Vec<Vec<String>>,
    exec: Vec<u8>,
    value: Option<String>,
    value_reply: Vec<u8>,
}

fn get_reply(v: &Option<String>, proto: u8) -> Vec<u8> {
    match (v, proto) {
        (Some(v), _) => bulk(v),
        (None, 3) => b"_\r\n".to_vec(),
        (None, _) => NIL.to_vec(),
    }
}

fn read_your_writes(proto: u8) {
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    wait_caching(&redis, &mut Conn::connect(proxy.port()));
    let mut w = connect_proto(proxy.port(), proto);
    let mut r = connect_proto(proxy.port(), proto);
    let k = "ryw:k";
    redis.set(k, "initial");
    let mut value = Some("initial".to_string());
    for i in 0..200 {
        let old_reply = get_reply(&value, proto);
        // Cache the value, through both clients.
        w.roundtrip(&["GET", k], &old_reply);
        w.roundtrip(&["GET", k], &old_reply);
        r.roundtrip(&["GET", k], &old_reply);
        let round = ryw_round(i, k, &value, proto);
        // Half of each kind of round in one write, half step by step.
        let pipelined = (i / 6) % 2 == 1;
        let mut requests: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
        if round.watch {
            requests.push((vec!["WATCH".into(), k.into()], OK.to_vec()));
            requests.push((vec!["GET".into(), k.into()], old_reply.clone()));
        }
        requests.push((vec!["MULTI".into()], OK.to_vec()));
        for q in &round.queued {
            requests.push((q.clone(), QUEUED.to_vec()));
        }
        requests.push((vec!["EXEC".into()], round.exec.clone()));
        requests.push((vec!["GET".into(), k.into()], round.value_reply.clone()));
        let context = |what: &str| {
            format!(
                "round {i} ({}, RESP{proto}), {what}",
                if pipelined {
                    "pipelined"
                } else {
                    "step by step"
                }
            )
        };
        if pipelined {
            let mut all = cmd(&["GET", k]);
            let mut want = old_reply.clone();
            for (args, reply) in &requests {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                all.extend(cmd(&args));
                want.extend_from_slice(reply);
            }
            w.send(&all);
            let got = w.read_exact_n(want.len());
            assert!(
                got == want,
                "{}:\n expected: {}\n      got: {}",
                context("the pipeline"),
                escape(&want),
                escape(&got)
            );
        } else {
            for (args, reply) in &requests {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                w.send_cmd(&args);
                let got = w.read_reply3_raw();
                assert!(
                    got == *reply,
                    "{}: `{}`\n expected: {}\n      got: {}",
                    context("step"),
                    args.join(" "),
                    escape(reply),
                    escape(&got)
                );
            }
        }
        // Everyone else reads the new value as soon as EXEC's reply came.
        r.send_cmd(&["GET", k]);
        let got = r.read_reply3_raw();
        assert!(
            got == round.value_reply,
            "{}: another client's GET after EXEC\n expected: {}\n      got: {}",
            context("after EXEC"),
            escape(&round.value_reply),
            escape(&got)
        );
        value = round.value;
    }
}

#[test]
fn read_your_writes_through_exec_resp2() {
    read_your_writes(2);
}

#[test]
fn read_your_writes_through_exec_resp3() {
    read_your_writes(3);
}

// ---------------------------------------------------------------------------
// Isolation: an open MULTI holds nobody else up, and takes in nothing else
// ---------------------------------------------------------------------------

/// Redis's clients in a MULTI (flag `x`), as (queued commands, last command).
fn clients_in_multi(redis_port: u16) -> Vec<(String, String)> {
    client_list(redis_port)
        .iter()
        .filter(|c| c.get("flags").is_some_and(|f| f.contains('x')))
        .map(|c| {
            (
                c.get("multi").cloned().unwrap_or_default(),
                c.get("cmd").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn an_open_multi_holds_up_no_other_client() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 200;
    let redis = RedisServer::start();
    let proxy = Sidecache::start(redis.port(), &[]);
    wait_caching(&redis, &mut Conn::connect(proxy.port()));
    let k = "iso:k";
    redis.set(k, "old");
    let mut a = proxy.connect();
    a.roundtrip(&["GET", k], &bulk("old"));
    a.roundtrip(&["MULTI"], OK);
    a.roundtrip(&["SET", k, "new"], QUEUED);
    assert_eq!(
        clients_in_multi(redis.port()),
        vec![("1".to_string(), "set".to_string())],
        "Redis should see exactly one client in a MULTI, with one queued SET"
    );

    let port = proxy.port();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut c = Conn::connect(port);
                let own = format!("iso:client:{t}");
                barrier.wait();
                for i in 0..ROUNDS {
                    let v = format!("{t}-{i}");
                    c.roundtrip(&["SET", &own, &v], OK);
                    c.roundtrip(&["GET", &own], &bulk(&v));
                    if i % 10 == 0 {
                        // The queued SET has not run.
                        c.roundtrip(&["GET", k], &bulk("old"));
                    }
                }
            })
        })
        .collect();
    let failed = join_clients(workers);
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} clients failed while another client's MULTI was open:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!(
        "{CLIENTS} clients x {ROUNDS} rounds with a MULTI open: {:?}",
        started.elapsed()
    );

    // Nothing of theirs went into the transaction.
    assert_eq!(
        clients_in_multi(redis.port()),
        vec![("1".to_string(), "set".to_string())],
        "after the other clients ran, Redis should still see one client in a MULTI, \
         with only its own queued SET"
    );
    a.roundtrip(&["EXEC"], b"*1\r\n+OK\r\n");
    assert_eq!(clients_in_multi(redis.port()), vec![]);
    a.roundtrip(&["GET", k], &bulk("new"));
    let mut b = proxy.connect();
    b.roundtrip(&["GET", k], &bulk("new"));
    for t in [0, CLIENTS - 1] {
        b.roundtrip(
            &["GET", &format!("iso:client:{t}")],
            &bulk(format!("{t}-{}", ROUNDS - 1)),
        );
    }
}
