//! The command policy: what sidecache does with each request.
//!
//! A request is cached (GET), answered here (PING, HELLO, CLIENT SETNAME…),
//! refused with an error because it would change or stall the backend
//! connection that every client shares, or forwarded unchanged. Pure: it
//! looks at argument bytes only and never touches a socket or the cache.
//! The README's command table mirrors this file.

use crate::client::ReplyMode;
use crate::pubsub::Kind;
use crate::resp::Protocol;

/// What to do with one request. Positions refer to the request's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET key`: serve from the cache, or forward and fill the cache.
    Get,
    /// Send to Redis unchanged.
    Forward,
    /// `PING` (+PONG) or `PING message` (the message as a bulk).
    Ping,
    /// `ECHO message`.
    Echo,
    /// `QUIT`: +OK, then close once every owed reply is sent.
    Quit,
    /// `SELECT n`: +OK for the database sidecache serves, refused for any other.
    Select(i64),
    /// `HELLO [2|3] [AUTH user pass] [SETNAME name]`: switch to `protocol`
    /// if given, answer in the connection's protocol; `setname` is the
    /// name's position, `auth` the user name's (the password follows it).
    Hello {
        protocol: Option<Protocol>,
        setname: Option<usize>,
        auth: Option<usize>,
    },
    /// `AUTH [user] password`: `user` is the user name's position if
    /// given; the password is the last argument. Checked by sidecache
    /// (`--requirepass`), never forwarded.
    Auth { user: Option<usize> },
    /// `CLIENT SETNAME name`.
    ClientSetName,
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`.
    ClientSetInfo(LibAttr),
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`, for a sidecache client id.
    ClientUnblock,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    ClientReply(ReplyMode),
    /// Answer with this error (without the leading `-`), connection kept.
    Error(String),
    /// `MULTI` or `WATCH`: the client needs a connection to Redis of its
    /// own until `EXEC`, `DISCARD` or `UNWATCH` ends the state.
    Transaction,
    /// A blocking command: it runs on a connection of the client's own,
    /// so that only the client waits. So do SCRIPT KILL and FUNCTION KILL,
    /// to reach Redis while a script stalls the shared connection.
    Blocking,
    /// `(P|S)SUBSCRIBE`, with the channels from argument 1 on.
    Subscribe(Kind),
    /// `(P|S)UNSUBSCRIBE`, from the given channels or from all of them.
    Unsubscribe(Kind),
    /// `RESET`: the connection back to its state when it opened.
    Reset,
    /// `INFO [section ...]`: sidecache's own, in Redis's format.
    Info,
}

/// The error that refuses `SELECT` of another database than `served`.
pub fn select_refused(served: u32) -> String {
    format!(
        "ERR 'select' is not supported by sidecache: only database {served} is served \
         (all clients share one connection to Redis)"
    )
}

/// The error that refuses MULTI when the client cannot have a connection
/// of its own; the commands up to EXEC or DISCARD are refused too.
pub fn multi_refused(reason: &str) -> String {
    format!("{reason}; the commands up to EXEC or DISCARD will not run")
}

/// What happens to a request sent after a refused MULTI, before its EXEC or DISCARD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InRefusedMulti {
    /// `EXEC`: the transaction is aborted, as Redis aborts one whose
    /// commands were refused; the connection leaves the transaction.
    Exec,
    /// `DISCARD`: +OK, and the connection leaves the transaction.
    Discard,
    /// `QUIT` still quits.
    Quit,
    /// Anything else does not run; answer with this error.
    NotRun(String),
}

/// Decides what to do with a request sent after a refused MULTI.
pub fn in_refused_multi(name: &[u8]) -> InRefusedMulti {
    let mut upper = [0u8; 16];
    match uppercase(name, &mut upper).unwrap_or_default() {
        b"EXEC" => InRefusedMulti::Exec,
        b"DISCARD" => InRefusedMulti::Discard,
        b"QUIT" => InRefusedMulti::Quit,
        b"MULTI" => InRefusedMulti::NotRun("ERR MULTI calls can not be nested".into()),
        _ => InRefusedMulti::NotRun(format!(
            "ERR '{}' did not run: sidecache refused the MULTI before it",
            String::from_utf8_lossy(name).to_ascii_lowercase()
        )),
    }
}

/// Whether a client that has not authenticated may send `name`: AUTH,
/// HELLO (which can carry credentials), PING and QUIT.
pub fn allowed_before_auth(name: &[u8]) -> bool {
    ["AUTH", "HELLO", "PING", "QUIT"]
        .iter()
        .any(|allowed| name.eq_ignore_ascii_case(allowed.as_bytes()))
}

/// The attributes `CLIENT SETINFO` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibAttr {
    Name,
    Version,
}

/// Decides what to do with a request of `argc` arguments (`argc >= 1`),
/// `arg(i)` being argument `i`, the command name first.
pub fn classify<'a>(argc: usize, arg: impl Fn(usize) -> &'a [u8]) -> Action {
    let mut upper = [0u8; 16];
    let Some(name) = uppercase(arg(0), &mut upper) else {
        return Action::Forward;
    };
    let arity_error = || wrong_arity(&String::from_utf8_lossy(arg(0)).to_ascii_lowercase());
    match name {
        b"GET" if argc == 2 => Action::Get,
        b"PING" if argc <= 2 => Action::Ping,
        b"ECHO" if argc == 2 => Action::Echo,
        b"SELECT" if argc == 2 => select(arg(1)),
        b"PING" | b"ECHO" | b"SELECT" => arity_error(),
        b"QUIT" => Action::Quit,
        b"HELLO" => hello(argc, &arg),
        b"CLIENT" => client(argc, &arg),
        // With the wrong arity Redis answers an error and keeps no state,
        // so the shared connection can carry it.
        b"MULTI" if argc == 1 => Action::Transaction,
        b"WATCH" if argc >= 2 => Action::Transaction,
        b"SUBSCRIBE" if argc >= 2 => Action::Subscribe(Kind::Channel),
        b"PSUBSCRIBE" if argc >= 2 => Action::Subscribe(Kind::Pattern),
        b"SSUBSCRIBE" if argc >= 2 => Action::Subscribe(Kind::Shard),
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" => arity_error(),
        b"UNSUBSCRIBE" => Action::Unsubscribe(Kind::Channel),
        b"PUNSUBSCRIBE" => Action::Unsubscribe(Kind::Pattern),
        b"SUNSUBSCRIBE" => Action::Unsubscribe(Kind::Shard),
        b"MONITOR" => refuse(arg(0), "it would take over the shared connection to Redis"),
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" => Action::Blocking,
        b"XREAD" | b"XREADGROUP" if has_block_option(argc, &arg) => Action::Blocking,
        b"SCRIPT" | b"FUNCTION" if argc == 2 && arg(1).eq_ignore_ascii_case(b"KILL") => {
            Action::Blocking
        }
        b"WAIT" | b"WAITAOF" => refuse(
            arg(0),
            "the writes it would wait for went over the connection to Redis that all clients share",
        ),
        b"AUTH" if argc == 2 => Action::Auth { user: None },
        b"AUTH" if argc == 3 => Action::Auth { user: Some(1) },
        b"AUTH" if argc > 3 => Action::Error("ERR syntax error".into()),
        b"AUTH" => arity_error(),
        b"RESET" if argc == 1 => Action::Reset,
        b"INFO" => Action::Info,
        b"RESET" => arity_error(),
        b"SYNC" | b"PSYNC" | b"REPLCONF" => refuse(arg(0), "replication is not proxied"),
        _ => Action::Forward,
    }
}

/// `name` uppercased into `buf`, or `None` when longer than any name we act on.
fn uppercase<'b>(name: &[u8], buf: &'b mut [u8; 16]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_uppercase();
    }
    Some(out)
}

fn wrong_arity(name: &str) -> Action {
    Action::Error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn refuse(name: &[u8], reason: &str) -> Action {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    Action::Error(format!(
        "ERR '{name}' is not supported by sidecache: {reason}"
    ))
}

fn select(db: &[u8]) -> Action {
    match std::str::from_utf8(db)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        None => Action::Error("ERR value is not an integer or out of range".into()),
        Some(n) => Action::Select(n),
    }
}

fn hello<'a>(argc: usize, arg: &impl Fn(usize) -> &'a [u8]) -> Action {
    let mut protocol = None;
    if argc >= 2 {
        let version = std::str::from_utf8(arg(1))
            .ok()
            .and_then(|s| s.parse::<i64>().ok());
        protocol = match version {
            None => {
                return Action::Error(
                    "ERR Protocol version is not an integer or out of range".into(),
                )
            }
            Some(2) => Some(Protocol::Resp2),
            Some(3) => Some(Protocol::Resp3),
            Some(_) => return Action::Error("NOPROTO unsupported protocol version".into()),
        };
    }
    let mut setname = None;
    let mut auth = None;
    let mut i = 2;
    while i < argc {
        let option = arg(i).to_ascii_uppercase();
        let remaining = argc - i - 1;
        match option.as_slice() {
            b"AUTH" if remaining >= 2 => {
                auth = Some(i + 1);
                i += 3;
            }
            b"SETNAME" if remaining >= 1 => {
                if let Some(error) = invalid_name(arg(i + 1), "Client names") {
                    return error;
                }
                setname = Some(i + 1);
                i += 2;
            }
            _ => {
                return Action::Error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(arg(i))
                ))
            }
        }
    }
    Action::Hello {
        protocol,
        setname,
        auth,
    }
}

fn client<'a>(argc: usize, arg: &impl Fn(usize) -> &'a [u8]) -> Action {
    if argc < 2 {
        return wrong_arity("client");
    }
    let sub = arg(1).to_ascii_uppercase();
    match sub.as_slice() {
        b"REPLY" if argc != 3 => return wrong_arity("client|reply"),
        b"UNBLOCK" if argc < 3 => return wrong_arity("client|unblock"),
        b"UNBLOCK" if argc > 4 => {
            return Action::Error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(arg(1))
            ))
        }
        _ => {}
    }
    if sub == b"UNBLOCK" {
        // Ids are sidecache's, and a blocked client's call runs on its own
        // connection to Redis: the server unblocks that one.
        let reason_ok = argc == 3
            || arg(3).eq_ignore_ascii_case(b"TIMEOUT")
            || arg(3).eq_ignore_ascii_case(b"ERROR");
        return match reason_ok {
            true => Action::ClientUnblock,
            false => Action::Error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR".into()),
        };
    }
    if sub == b"REPLY" && argc == 3 {
        let mode = arg(2).to_ascii_uppercase();
        return match mode.as_slice() {
            b"ON" => Action::ClientReply(ReplyMode::On),
            b"OFF" => Action::ClientReply(ReplyMode::Off),
            b"SKIP" => Action::ClientReply(ReplyMode::SkipNext),
            _ => Action::Error("ERR syntax error".into()),
        };
    }
    let expected_argc = match sub.as_slice() {
        b"SETNAME" => 3,
        b"GETNAME" | b"ID" => 2,
        b"SETINFO" => 4,
        _ => {
            let name = [b"client ", arg(1)].concat();
            let reason = match sub.as_slice() {
                b"KILL" | b"PAUSE" | b"UNPAUSE" => {
                    "it acts on other connections, and sidecache's clients are not Redis's"
                }
                b"NO-EVICT" | b"NO-TOUCH" => {
                    "it would change the connection to Redis that all clients share"
                }
                b"TRACKING" | b"CACHING" | b"GETREDIR" | b"TRACKINGINFO" => {
                    "sidecache's own connections to Redis use client tracking for its cache"
                }
                _ => "it would act on the connection to Redis that all clients share",
            };
            return refuse(&name, reason);
        }
    };
    if argc != expected_argc {
        let sub = String::from_utf8_lossy(&sub).to_ascii_lowercase();
        return wrong_arity(&format!("client|{sub}"));
    }
    match sub.as_slice() {
        b"SETNAME" => invalid_name(arg(2), "Client names").unwrap_or(Action::ClientSetName),
        b"GETNAME" => Action::ClientGetName,
        b"ID" => Action::ClientId,
        _ => setinfo(arg(2), arg(3)),
    }
}

fn setinfo(attr: &[u8], value: &[u8]) -> Action {
    let attr_upper = attr.to_ascii_uppercase();
    let (attr, what) = match attr_upper.as_slice() {
        b"LIB-NAME" => (LibAttr::Name, "lib-name"),
        b"LIB-VER" => (LibAttr::Version, "lib-ver"),
        _ => {
            return Action::Error(format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(attr)
            ))
        }
    };
    invalid_name(value, what).unwrap_or(Action::ClientSetInfo(attr))
}

/// Redis allows only printable ASCII without spaces in client names and library info.
fn invalid_name(value: &[u8], what: &str) -> Option<Action> {
    value.iter().any(|&c| !(b'!'..=b'~').contains(&c)).then(|| {
        Action::Error(format!(
            "ERR {what} cannot contain spaces, newlines or special characters."
        ))
    })
}

/// XREAD and XREADGROUP block only with a BLOCK option, which comes before STREAMS.
fn has_block_option<'a>(argc: usize, arg: &impl Fn(usize) -> &'a [u8]) -> bool {
    (1..argc)
        .map(arg)
        .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
        .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(line: &str) -> Action {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        classify(args.len(), |i| args[i])
    }

    fn error_of(line: &str) -> String {
        match of(line) {
            Action::Error(e) => e,
            other => panic!("{line:?} should be an error, got {other:?}"),
        }
    }

    #[test]
    fn get_is_cached_in_any_case() {
        assert_eq!(of("GET k"), Action::Get);
        assert_eq!(of("get k"), Action::Get);
        assert_eq!(of("gEt k"), Action::Get);
        // Redis answers the arity error itself.
        assert_eq!(of("GET"), Action::Forward);
        assert_eq!(of("GET a b"), Action::Forward);
    }

    #[test]
    fn local_commands() {
        assert_eq!(of("PING"), Action::Ping);
        assert_eq!(of("ping hello"), Action::Ping);
        assert_eq!(
            error_of("PING a b"),
            "ERR wrong number of arguments for 'ping' command"
        );
        assert_eq!(of("ECHO x"), Action::Echo);
        assert_eq!(of("QUIT"), Action::Quit);
        assert_eq!(of("SELECT 0"), Action::Select(0));
        assert_eq!(of("select 3"), Action::Select(3));
        let hello = |protocol, setname| Action::Hello {
            protocol,
            setname,
            auth: None,
        };
        assert_eq!(of("HELLO"), hello(None, None));
        assert_eq!(of("HELLO 2"), hello(Some(Protocol::Resp2), None));
        assert_eq!(of("HELLO 3"), hello(Some(Protocol::Resp3), None));
        assert_eq!(
            of("HELLO 2 SETNAME me"),
            hello(Some(Protocol::Resp2), Some(3))
        );
        assert_eq!(
            of("HELLO 3 AUTH default secret SETNAME me"),
            Action::Hello {
                protocol: Some(Protocol::Resp3),
                setname: Some(6),
                auth: Some(3),
            }
        );
        assert_eq!(of("AUTH pw"), Action::Auth { user: None });
        assert_eq!(of("auth default pw"), Action::Auth { user: Some(1) });
        assert_eq!(error_of("AUTH a b c"), "ERR syntax error");
        assert_eq!(
            error_of("AUTH"),
            "ERR wrong number of arguments for 'auth' command"
        );
        assert_eq!(
            error_of("HELLO 3 AUTH default"),
            "ERR Syntax error in HELLO option 'AUTH'"
        );
        assert_eq!(of("CLIENT SETNAME me"), Action::ClientSetName);
        assert_eq!(of("client getname"), Action::ClientGetName);
        assert_eq!(of("CLIENT ID"), Action::ClientId);
        assert_eq!(of("CLIENT UNBLOCK 7"), Action::ClientUnblock);
        assert_eq!(of("client reply off"), Action::ClientReply(ReplyMode::Off));
        assert_eq!(
            of("CLIENT REPLY SKIP"),
            Action::ClientReply(ReplyMode::SkipNext)
        );
        assert_eq!(error_of("CLIENT REPLY maybe"), "ERR syntax error");
        assert_eq!(
            error_of("CLIENT REPLY ON OFF"),
            "ERR wrong number of arguments for 'client|reply' command"
        );
        assert_eq!(
            error_of("CLIENT UNBLOCK"),
            "ERR wrong number of arguments for 'client|unblock' command"
        );
        assert_eq!(
            error_of("CLIENT unblock 1 ERROR x"),
            "ERR unknown subcommand or wrong number of arguments for 'unblock'. Try CLIENT HELP."
        );
        assert_eq!(of("client unblock 7 error"), Action::ClientUnblock);
        assert_eq!(
            error_of("CLIENT UNBLOCK 7 never"),
            "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"
        );
        assert_eq!(
            of("CLIENT SETINFO lib-name redis-py"),
            Action::ClientSetInfo(LibAttr::Name)
        );
        assert_eq!(
            of("CLIENT SETINFO LIB-VER 8.1"),
            Action::ClientSetInfo(LibAttr::Version)
        );
    }

    #[test]
    fn local_command_errors_in_redis_words() {
        assert_eq!(
            error_of("ECHO"),
            "ERR wrong number of arguments for 'echo' command"
        );
        assert_eq!(
            error_of("select"),
            "ERR wrong number of arguments for 'select' command"
        );
        assert_eq!(error_of("HELLO 4"), "NOPROTO unsupported protocol version");
        assert_eq!(
            error_of("HELLO x"),
            "ERR Protocol version is not an integer or out of range"
        );
        assert_eq!(
            error_of("HELLO 2 BOGUS"),
            "ERR Syntax error in HELLO option 'BOGUS'"
        );
        assert_eq!(
            error_of("SELECT x"),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            error_of("CLIENT"),
            "ERR wrong number of arguments for 'client' command"
        );
        assert_eq!(
            error_of("CLIENT SETNAME"),
            "ERR wrong number of arguments for 'client|setname' command"
        );
        assert_eq!(
            error_of("CLIENT SETNAME a\tb"),
            "ERR Client names cannot contain spaces, newlines or special characters."
        );
        assert_eq!(
            error_of("CLIENT SETINFO color red"),
            "ERR Unrecognized option 'color'"
        );
    }

    #[test]
    fn refused_commands_name_themselves() {
        for line in [
            "MONITOR",
            "WAIT 1 0",
            "WAITAOF 1 0 0",
            "SYNC",
            "PSYNC ? -1",
            "REPLCONF listening-port 1",
            "CLIENT KILL ID 1",
            "CLIENT TRACKING ON",
        ] {
            let e = error_of(line);
            let name = line.split(' ').next().unwrap().to_ascii_lowercase();
            assert!(
                e.starts_with(&format!("ERR '{name}"))
                    && e.contains("' is not supported by sidecache: "),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn connection_state_commands() {
        assert_eq!(of("MULTI"), Action::Transaction);
        assert_eq!(of("watch a b"), Action::Transaction);
        // Redis answers the arity error and keeps no state.
        assert_eq!(of("MULTI x"), Action::Forward);
        assert_eq!(of("WATCH"), Action::Forward);
        for line in ["EXEC", "DISCARD", "UNWATCH"] {
            assert_eq!(of(line), Action::Forward, "{line} outside a transaction");
        }
        for line in [
            "BLPOP l 0",
            "BRPOP l 0",
            "BRPOPLPUSH a b 0",
            "BLMOVE a b LEFT RIGHT 0",
            "BLMPOP 0 1 l LEFT",
            "BZPOPMIN z 0",
            "BZPOPMAX z 0",
            "BZMPOP 0 1 z MIN",
            "XREAD BLOCK 0 STREAMS s $",
            "XREADGROUP GROUP g c BLOCK 0 STREAMS s >",
        ] {
            assert_eq!(of(line), Action::Blocking, "{line}");
        }
        assert_eq!(of("XREAD STREAMS s 0"), Action::Forward);
        assert_eq!(of("SCRIPT KILL"), Action::Blocking);
        assert_eq!(of("function kill"), Action::Blocking);
        assert_eq!(of("SCRIPT FLUSH"), Action::Forward);
        assert_eq!(of("SUBSCRIBE a b"), Action::Subscribe(Kind::Channel));
        assert_eq!(of("psubscribe a*"), Action::Subscribe(Kind::Pattern));
        assert_eq!(of("SSUBSCRIBE a"), Action::Subscribe(Kind::Shard));
        assert_eq!(of("UNSUBSCRIBE"), Action::Unsubscribe(Kind::Channel));
        assert_eq!(of("PUNSUBSCRIBE a*"), Action::Unsubscribe(Kind::Pattern));
        assert_eq!(of("SUNSUBSCRIBE"), Action::Unsubscribe(Kind::Shard));
        assert_eq!(
            error_of("SUBSCRIBE"),
            "ERR wrong number of arguments for 'subscribe' command"
        );
        assert_eq!(of("RESET"), Action::Reset);
        assert_eq!(of("info stats"), Action::Info);
    }

    #[test]
    fn after_a_refused_multi() {
        assert_eq!(in_refused_multi(b"exec"), InRefusedMulti::Exec);
        assert_eq!(in_refused_multi(b"DISCARD"), InRefusedMulti::Discard);
        assert_eq!(in_refused_multi(b"quit"), InRefusedMulti::Quit);
        assert_eq!(
            in_refused_multi(b"MULTI"),
            InRefusedMulti::NotRun("ERR MULTI calls can not be nested".into())
        );
        let InRefusedMulti::NotRun(e) = in_refused_multi(b"Set") else {
            panic!("SET must not run");
        };
        assert!(e.starts_with("ERR 'set' did not run: "), "{e}");
    }

    #[test]
    fn forwarded_commands() {
        for line in [
            "SET k v",
            "DEL k",
            "HGET h f",
            "INCR n",
            "COMMAND DOCS",
            "CONFIG GET save",
            "XREAD COUNT 1 STREAMS block 0",
            "NOSUCHCOMMAND",
            "AVERYVERYLONGCOMMANDNAMEINDEED",
        ] {
            assert_eq!(of(line), Action::Forward, "{line}");
        }
    }
}
