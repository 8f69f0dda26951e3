//! keys: which keys a request WRITES, learnt from the backing Redis itself.
//!
//! Owns the command table built from Redis's own `COMMAND` reply (fetched on
//! every connect) and the resolution of a request's arguments to the
//! positions of the keys it writes, so the cache can drop them
//! (read-your-writes).
//!
//! Must never: keep a hand-written list of write commands (the one narrow
//! exception, SORT's `STORE`, is explained at `Plan::SortStore`); answer
//! [`Writes::Nothing`] when in doubt (doubt is [`Writes::Everything`]);
//! allocate, do I/O or do more than O(key specs) work in
//! [`CommandTable::writes`], which runs for every forwarded request; panic on
//! any `COMMAND` reply or any request.
//!
//! # Rules
//!
//! Redis 7 entries (`[name, arity, flags, first, last, step, acl, tips,
//! key_specs, subcommands]`) are resolved with their key specs, mirroring
//! `getKeysUsingKeySpecs` in Redis 7.0's `db.c`:
//!
//! - `NOT_KEY` specs are skipped, as Redis does.
//! - A spec *writes* if its flags hold `RW`, `OW` or `RM`. A spec with no
//!   access flag at all (a module's auto-generated spec) or with
//!   `VARIABLE_FLAGS` also counts as writing unless the command is flagged
//!   `readonly`: its declared flags are not to be trusted.
//! - A command with at least one writing spec (with or without the `write`
//!   flag: EVAL, EVALSHA, FCALL and PFCOUNT have none) writes exactly the keys
//!   its writing specs find. A writing spec that is `unknown`, `INCOMPLETE`,
//!   malformed, or does not resolve on the request (numkeys not an integer or
//!   negative, positions out of range, zero keys from a keynum spec, as Redis
//!   itself rejects them) makes the answer [`Writes::Everything`]. A keyword
//!   spec whose keyword is absent finds no key, as in Redis. If the writing
//!   specs find no key at all the answer is [`Writes::Nothing`]
//!   (`GEORADIUS` without `STORE`): the specs are complete, so nothing else
//!   is written, whatever the `write` flag says.
//! - The rule "`write` flag but no key found → Everything" applies only to
//!   commands with NO writing spec, i.e. where the specs cannot name what is
//!   written:
//!   - no key spec at all (`FLUSHALL`, `FLUSHDB`, `SWAPDB`, `FUNCTION LOAD`,
//!     ...): [`Writes::Everything`];
//!   - key specs, all read-only (`XREADGROUP`, which changes its streams'
//!     consumer groups): every key its specs name counts as written. A command
//!     can only touch keys its specs declare (cluster routing depends on it),
//!     so this is exact for the cache; if those specs find nothing or do not
//!     resolve: [`Writes::Everything`].
//! - No `write` flag and no writing spec: [`Writes::Nothing`], after one
//!   hash lookup.
//! - Containers (`OBJECT`, `XGROUP`, `CONFIG`, ...) are looked up as Redis
//!   does: with two or more arguments, by the subcommand's own entry
//!   (`xgroup|create`). An unknown subcommand makes Redis answer an error,
//!   which writes nothing, so the answer is [`Writes::Nothing`]; it is
//!   [`Writes::Everything`] only if the container itself carries the `write`
//!   flag (none does in Redis 7), to stay on the safe side.
//!
//! Redis 6 entries (6 or 7 fields, no key specs) use the legacy range:
//! - `movablekeys` without `readonly` (EVAL, ZUNIONSTORE, GEORADIUS,
//!   MIGRATE, XREADGROUP...): [`Writes::Everything`], since the range does
//!   not say where the keys are (Redis 6.0 does not even flag EVAL as
//!   writing, so the `write` flag alone cannot be trusted here);
//! - neither `write` nor `may_replicate`: [`Writes::Nothing`];
//! - first key 0: `write` → [`Writes::Everything`]; `may_replicate` only
//!   (PUBLISH, SCRIPT) → [`Writes::Nothing`];
//! - otherwise keys `first..=last` by `step` (a negative `last` counts from
//!   the end); out of range → [`Writes::Everything`].
//!
//! A command missing from the table (a module loaded after `COMMAND` was
//! fetched, a typo, a name over [`MAX_NAME_LEN`] bytes) is
//! [`Writes::Everything`]. A malformed entry with a readable name resolves
//! to [`Writes::Everything`] as soon as any part the answer depends on
//! cannot be read; an entry without a readable name is skipped.

use std::collections::HashMap;

use crate::resp::Value;

/// Longest command or subcommand name looked up; longer names cannot be
/// known commands (Redis's longest is well under 40 bytes).
pub const MAX_NAME_LEN: usize = 64;

/// Which keys the forwarded requests write, per the backing Redis's `COMMAND`.
#[derive(Debug, Clone, Default)]
pub struct CommandTable {
    /// Lowercase name → what it writes.
    commands: HashMap<Box<[u8]>, Command>,
}

/// What a request writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Writes no key: a read, or a command that touches no data (PING, INFO, PUBLISH, GET, MGET...).
    Nothing,
    /// Writes exactly the keys reported through `on_key` (at least one).
    Keys,
    /// Writes keys it cannot name, or everything: the caller drops the whole cache.
    Everything,
}

#[derive(Debug, Clone)]
struct Command {
    plan: Plan,
    /// The `write` flag, consulted for an unknown subcommand of a container.
    write_flag: bool,
    /// A container's subcommands, by the lowercase name after the `|`.
    subcommands: HashMap<Box<[u8]>, Command>,
}

/// How a command's written keys are found, decided once when the table is built.
#[derive(Debug, Clone)]
enum Plan {
    Nothing,
    Everything,
    /// The keys these (resolvable) specs find; `if_none` when they find none.
    Specs {
        specs: Box<[Spec]>,
        if_none: Writes,
    },
    /// Redis 6: `first..=last` by `step`, `last` negative from the end.
    Legacy {
        first: i64,
        last: i64,
        step: i64,
    },
    /// SORT, whose written key (`STORE dest`) no key spec can locate: Redis
    /// 7.0 marks that spec `unknown` ("the keyword can appear anywhere") and
    /// uses a hand-written `sortGetKeys` itself, and Redis 6 flags SORT
    /// `movablekeys`. Rather than dropping the whole cache on every SORT,
    /// every argument that follows a `STORE` token (from position 3 on)
    /// counts as written: a superset of what SORT really writes, since its
    /// destination always follows a `STORE`. Used only when the table itself
    /// says SORT's written key cannot be located from its specs.
    SortStore,
}

/// A key spec that can be resolved (unknown and incomplete ones never reach here).
#[derive(Debug, Clone)]
struct Spec {
    begin: Begin,
    find: Find,
}

#[derive(Debug, Clone)]
enum Begin {
    /// The first key is at this argument position (>= 1).
    Index(i64),
    /// The first key follows this keyword, searched from `startfrom`
    /// (negative: backwards from the end).
    Keyword { keyword: Box<[u8]>, startfrom: i64 },
}

#[derive(Debug, Clone)]
enum Find {
    /// `lastkey` relative to the first key (negative: from the end of the
    /// arguments, or with `limit`, from the end of 1/limit of them).
    Range { lastkey: i64, step: i64, limit: i64 },
    /// The key count is argument `first + idx`; keys start at `first + firstkey`.
    Keynum { idx: i64, firstkey: i64, step: i64 },
}

/// A request the specs cannot resolve (a syntax error to Redis, but we cannot be sure).
struct Unresolvable;

impl CommandTable {
    /// Builds the table from the decoded reply to `COMMAND` (an array of command entries).
    pub fn from_command_reply(reply: &Value) -> Result<CommandTable, String> {
        let entries = match reply {
            Value::Array(entries) => entries,
            Value::Error(e) => {
                return Err(format!("COMMAND failed: {}", String::from_utf8_lossy(e)));
            }
            other => return Err(format!("COMMAND reply is not an array: {other:?}")),
        };
        let mut commands = HashMap::with_capacity(entries.len());
        for entry in entries {
            if let Some((name, command)) = parse_entry(entry, None) {
                commands.insert(name, command);
            }
        }
        Ok(CommandTable { commands })
    }

    /// Number of commands known (top level).
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The command's name as Redis spells it in errors (`get`,
    /// `client|list`), or `None` if Redis does not know the command.
    pub fn full_name<'a>(&self, argc: usize, arg: impl Fn(usize) -> &'a [u8]) -> Option<String> {
        let mut buf = [0u8; MAX_NAME_LEN];
        let name = lowercase(arg(0), &mut buf)?;
        let command = self.commands.get(name)?;
        let mut full = String::from_utf8_lossy(name).into_owned();
        if argc >= 2 && !command.subcommands.is_empty() {
            let mut buf = [0u8; MAX_NAME_LEN];
            if let Some(sub) =
                lowercase(arg(1), &mut buf).filter(|s| command.subcommands.contains_key(*s))
            {
                full.push('|');
                full.push_str(&String::from_utf8_lossy(sub));
            }
        }
        Some(full)
    }

    /// What the request writes; `argc >= 1`, `arg(0)` is the command name in any case.
    /// Each written key's argument position is passed to `on_key` (possibly more than once, any order).
    /// `on_key` is called only when the answer is [`Writes::Keys`].
    pub fn writes<'a>(
        &self,
        argc: usize,
        arg: impl Fn(usize) -> &'a [u8],
        mut on_key: impl FnMut(usize),
    ) -> Writes {
        if argc == 0 {
            // An empty request: Redis ignores it.
            return Writes::Nothing;
        }
        let mut buf = [0u8; MAX_NAME_LEN];
        let Some(command) = lowercase(arg(0), &mut buf).and_then(|name| self.commands.get(name))
        else {
            return Writes::Everything;
        };
        let command = if argc >= 2 && !command.subcommands.is_empty() {
            let mut buf = [0u8; MAX_NAME_LEN];
            match lowercase(arg(1), &mut buf).and_then(|sub| command.subcommands.get(sub)) {
                Some(sub) => sub,
                // Redis answers "unknown subcommand": nothing is written.
                None if command.write_flag => return Writes::Everything,
                None => return Writes::Nothing,
            }
        } else {
            command
        };
        command.plan.resolve(argc, &arg, &mut on_key)
    }
}

impl Plan {
    fn resolve<'a>(
        &self,
        argc: usize,
        arg: &impl Fn(usize) -> &'a [u8],
        on_key: &mut impl FnMut(usize),
    ) -> Writes {
        // Argument counts are bounded by the request parser (1M); anything
        // beyond i64 is not a request we can reason about.
        let Ok(argc_i) = i64::try_from(argc) else {
            return Writes::Everything;
        };
        match self {
            Plan::Nothing => Writes::Nothing,
            Plan::Everything => Writes::Everything,
            Plan::Specs { specs, if_none } => {
                // First pass: every spec must resolve before any key is
                // reported, so `on_key` is only called for `Keys`.
                let mut found = false;
                for spec in specs.iter() {
                    match spec.resolve(argc_i, arg) {
                        Err(Unresolvable) => return Writes::Everything,
                        Ok(range) => found |= range.is_some(),
                    }
                }
                if !found {
                    return *if_none;
                }
                for spec in specs.iter() {
                    if let Ok(Some((first, last, step))) = spec.resolve(argc_i, arg) {
                        emit(first, last, step, on_key);
                    }
                }
                Writes::Keys
            }
            Plan::Legacy { first, last, step } => {
                let last = if *last < 0 {
                    argc_i.checked_add(*last)
                } else {
                    Some(*last)
                };
                match last {
                    Some(last) if *first >= 1 && *first <= last && last < argc_i => {
                        emit(*first, last, *step, on_key);
                        Writes::Keys
                    }
                    _ => Writes::Everything,
                }
            }
            Plan::SortStore => {
                let stored = |p: &usize| arg(p - 1).eq_ignore_ascii_case(b"store");
                if !(3..argc).any(|p| stored(&p)) {
                    return Writes::Nothing;
                }
                (3..argc).filter(stored).for_each(on_key);
                Writes::Keys
            }
        }
    }
}

/// Reports positions `first..=last` by `step`; all checked to be in range.
fn emit(first: i64, last: i64, step: i64, on_key: &mut impl FnMut(usize)) {
    let (Ok(first), Ok(last), Ok(step)) = (
        usize::try_from(first),
        usize::try_from(last),
        usize::try_from(step),
    ) else {
        return;
    };
    (first..=last).step_by(step.max(1)).for_each(on_key);
}

impl Spec {
    /// The `(first, last, step)` of the keys this spec finds, `None` when
    /// its keyword is absent. Mirrors `getKeysUsingKeySpecs`.
    fn resolve<'a>(
        &self,
        argc: i64,
        arg: &impl Fn(usize) -> &'a [u8],
    ) -> Result<Option<(i64, i64, i64)>, Unresolvable> {
        let at = |i: i64| usize::try_from(i).ok().map(arg);
        let mut first = match &self.begin {
            Begin::Index(pos) => *pos,
            Begin::Keyword { keyword, startfrom } => {
                // Forwards from `startfrom` up to (excluding) the last
                // argument, or backwards from `argc + startfrom` down to
                // (excluding) argument 1: a keyword in either excluded place
                // could not be followed by a key, or would be the command.
                let (start, end) = if *startfrom > 0 {
                    (*startfrom, argc - 1)
                } else {
                    (argc.saturating_add(*startfrom), 1)
                };
                let forwards = start <= end;
                let mut i = start;
                let mut found = None;
                while i != end && (1..argc).contains(&i) {
                    if at(i).is_some_and(|a| a.eq_ignore_ascii_case(keyword)) {
                        found = Some(i + 1);
                        break;
                    }
                    i = if forwards { i + 1 } else { i - 1 };
                }
                match found {
                    Some(first) => first,
                    None => return Ok(None),
                }
            }
        };
        let (last, step) = match &self.find {
            Find::Range {
                lastkey,
                step,
                limit,
            } => {
                let last = if *lastkey >= 0 {
                    first.checked_add(*lastkey)
                } else if *limit == 0 {
                    argc.checked_add(*lastkey)
                } else {
                    // Truncating division, as C does.
                    argc.checked_sub(first)
                        .and_then(|n| n.checked_div(*limit))
                        .and_then(|n| n.checked_add(*lastkey))
                        .and_then(|n| n.checked_add(first))
                };
                (last.ok_or(Unresolvable)?, *step)
            }
            Find::Keynum {
                idx,
                firstkey,
                step,
            } => {
                let numkeys_at = first.checked_add(*idx).ok_or(Unresolvable)?;
                if !(1..argc).contains(&numkeys_at) {
                    return Err(Unresolvable);
                }
                let numkeys = at(numkeys_at).and_then(parse_count).ok_or(Unresolvable)?;
                first = first.checked_add(*firstkey).ok_or(Unresolvable)?;
                let last = first
                    .checked_add(numkeys)
                    .and_then(|n| n.checked_sub(1))
                    .ok_or(Unresolvable)?;
                (last, *step)
            }
        };
        // Out of bounds, or no key at all: Redis calls the spec invalid.
        if first < 1 || first >= argc || last < first || last >= argc {
            return Err(Unresolvable);
        }
        Ok(Some((first, last, step)))
    }
}

/// A key count as Redis's `string2ll` reads it: `0`, or digits without a
/// leading zero or sign, fitting an i64. Negative counts are refused anyway.
fn parse_count(s: &[u8]) -> Option<i64> {
    crate::resp::parse_int(s).filter(|n| *n >= 0)
}

/// `name` in ASCII lowercase in `buf`, or `None` if longer than [`MAX_NAME_LEN`].
fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_lowercase();
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Reading the COMMAND reply
// ---------------------------------------------------------------------------

/// The command flags that matter here.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    write: bool,
    readonly: bool,
    movablekeys: bool,
    may_replicate: bool,
}

/// Reads an array of flag words (status or bulk strings, any case).
fn words(value: Option<&Value>) -> Option<impl Iterator<Item = &[u8]> + Clone> {
    let items = value?.as_array()?;
    if items.iter().any(|v| v.as_bytes().is_none()) {
        return None;
    }
    Some(items.iter().filter_map(Value::as_bytes))
}

fn has<'w>(words: &(impl Iterator<Item = &'w [u8]> + Clone), word: &[u8]) -> bool {
    words.clone().any(|w| w.eq_ignore_ascii_case(word))
}

fn parse_flags(value: Option<&Value>) -> Option<Flags> {
    let w = words(value)?;
    Some(Flags {
        write: has(&w, b"write"),
        readonly: has(&w, b"readonly"),
        movablekeys: has(&w, b"movablekeys"),
        may_replicate: has(&w, b"may_replicate"),
    })
}

/// The value of `field` in a flat array of field/value pairs (a RESP3 map
/// arrives flattened the same way).
fn field<'v>(pairs: &'v Value, name: &[u8]) -> Option<&'v Value> {
    pairs
        .as_array()?
        .chunks_exact(2)
        .find(|kv| {
            kv[0]
                .as_bytes()
                .is_some_and(|k| k.eq_ignore_ascii_case(name))
        })
        .map(|kv| &kv[1])
}

fn int_field(pairs: &Value, name: &[u8]) -> Option<i64> {
    field(pairs, name)?.as_integer()
}

/// One command entry (`parent` set for a subcommand). `None` when it has
/// no usable name, so it cannot be looked up anyway.
fn parse_entry(entry: &Value, parent: Option<&[u8]>) -> Option<(Box<[u8]>, Command)> {
    let items = entry.as_array()?;
    let full = items.first()?.as_bytes()?.to_ascii_lowercase();
    // A subcommand is looked up by the part after `container|`.
    let name = match parent {
        Some(parent) => match full.strip_prefix(parent).and_then(|s| s.strip_prefix(b"|")) {
            Some(sub) => sub.to_vec(),
            None => match full.iter().position(|&b| b == b'|') {
                Some(bar) => full[bar + 1..].to_vec(),
                None => full.clone(),
            },
        },
        None => full.clone(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }

    let flags = parse_flags(items.get(2));
    let plan = match flags {
        None => Plan::Everything,
        Some(flags) => match items.get(8) {
            Some(specs) => plan_from_specs(flags, specs, parent.is_none() && full == b"sort"),
            None => plan_from_range(flags, items, parent.is_none() && full == b"sort"),
        },
    };

    // Only one level of subcommands, as in Redis; deeper ones are ignored.
    let mut subcommands = HashMap::new();
    if parent.is_none() {
        if let Some(subs) = items.get(9).and_then(Value::as_array) {
            for sub in subs {
                if let Some((sub_name, command)) = parse_entry(sub, Some(&full)) {
                    subcommands.insert(sub_name, command);
                }
            }
        }
    }

    let command = Command {
        plan,
        // Unreadable flags: assume the worst.
        write_flag: flags.is_none_or(|f| f.write),
        subcommands,
    };
    Some((name.into_boxed_slice(), command))
}

/// A key spec as read: `None` for its parts that cannot be resolved
/// (`unknown`, `INCOMPLETE`, malformed).
struct RawSpec {
    not_key: bool,
    writes: bool,
    spec: Option<Spec>,
}

fn parse_spec(value: &Value, command: Flags) -> RawSpec {
    let Some(flags) = words(field(value, b"flags")) else {
        // Unreadable: assume it writes keys we cannot find.
        return RawSpec {
            not_key: false,
            writes: true,
            spec: None,
        };
    };
    let access_known = [&b"RW"[..], b"RO", b"OW", b"RM"]
        .iter()
        .any(|f| has(&flags, f));
    let writes = has(&flags, b"RW")
        || has(&flags, b"OW")
        || has(&flags, b"RM")
        || (!command.readonly && (!access_known || has(&flags, b"variable_flags")));
    let spec = if has(&flags, b"incomplete") {
        None
    } else {
        parse_begin(field(value, b"begin_search"))
            .zip(parse_find(field(value, b"find_keys")))
            .map(|(begin, find)| Spec { begin, find })
    };
    RawSpec {
        not_key: has(&flags, b"not_key"),
        writes,
        spec,
    }
}

fn parse_begin(value: Option<&Value>) -> Option<Begin> {
    let value = value?;
    let kind = field(value, b"type")?.as_bytes()?;
    let spec = field(value, b"spec")?;
    if kind.eq_ignore_ascii_case(b"index") {
        let pos = int_field(spec, b"index")?;
        (pos >= 1).then_some(Begin::Index(pos))
    } else if kind.eq_ignore_ascii_case(b"keyword") {
        let keyword = field(spec, b"keyword")?.as_bytes()?;
        let startfrom = int_field(spec, b"startfrom")?;
        Some(Begin::Keyword {
            keyword: keyword.into(),
            startfrom,
        })
    } else {
        // "unknown", or a kind this version does not know.
        None
    }
}

fn parse_find(value: Option<&Value>) -> Option<Find> {
    let value = value?;
    let kind = field(value, b"type")?.as_bytes()?;
    let spec = field(value, b"spec")?;
    if kind.eq_ignore_ascii_case(b"range") {
        let lastkey = int_field(spec, b"lastkey")?;
        let step = int_field(spec, b"keystep")?;
        let limit = int_field(spec, b"limit").unwrap_or(0);
        // Redis only defines a limit for lastkey -1.
        let sane = step >= 1 && limit >= 0 && (limit == 0 || lastkey == -1);
        sane.then_some(Find::Range {
            lastkey,
            step,
            limit,
        })
    } else if kind.eq_ignore_ascii_case(b"keynum") {
        let idx = int_field(spec, b"keynumidx")?;
        let firstkey = int_field(spec, b"firstkey")?;
        let step = int_field(spec, b"keystep")?;
        (idx >= 0 && step >= 1).then_some(Find::Keynum {
            idx,
            firstkey,
            step,
        })
    } else {
        None
    }
}

/// Redis 7: the plan from the key specs (see the module docs for the rules).
fn plan_from_specs(flags: Flags, specs: &Value, is_sort: bool) -> Plan {
    let Some(raw) = specs.as_array() else {
        return Plan::Everything;
    };
    let mut writing = Vec::new();
    let mut writing_broken = false;
    let mut named = Vec::new();
    let mut named_broken = false;
    for spec in raw.iter().map(|s| parse_spec(s, flags)) {
        if spec.not_key {
            continue;
        }
        match &spec.spec {
            Some(s) => named.push(s.clone()),
            None => named_broken = true,
        }
        if spec.writes {
            match spec.spec {
                Some(s) => writing.push(s),
                None => writing_broken = true,
            }
        }
    }

    if writing_broken {
        // A written key no spec can locate.
        if is_sort {
            Plan::SortStore
        } else {
            Plan::Everything
        }
    } else if !writing.is_empty() {
        // The writing specs are complete: what they do not find is not written.
        Plan::Specs {
            specs: writing.into_boxed_slice(),
            if_none: Writes::Nothing,
        }
    } else if !flags.write {
        Plan::Nothing
    } else if named.is_empty() || named_broken {
        // Writes, and no spec says where: FLUSHALL, SWAPDB, FUNCTION LOAD...
        Plan::Everything
    } else {
        // Writes, and only read-only specs (XREADGROUP): a command touches
        // only keys its specs declare, so those are what it writes.
        Plan::Specs {
            specs: named.into_boxed_slice(),
            if_none: Writes::Everything,
        }
    }
}

/// Redis 6: the plan from the legacy `first, last, step` triple.
fn plan_from_range(flags: Flags, items: &[Value], is_sort: bool) -> Plan {
    if flags.movablekeys && !flags.readonly {
        return if is_sort {
            Plan::SortStore
        } else {
            Plan::Everything
        };
    }
    if !flags.write && !flags.may_replicate {
        return Plan::Nothing;
    }
    let int = |i: usize| items.get(i).and_then(Value::as_integer);
    let (Some(first), Some(last), Some(step)) = (int(3), int(4), int(5)) else {
        return Plan::Everything;
    };
    if first == 0 {
        return if flags.write {
            Plan::Everything
        } else {
            // may_replicate without keys: PUBLISH, SCRIPT.
            Plan::Nothing
        };
    }
    if first < 0 || step < 1 {
        return Plan::Everything;
    }
    Plan::Legacy { first, last, step }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::parse_value;

    // RESP builders, shaped exactly like Redis 7.0.15's `COMMAND` reply (the
    // raw SET entry below checks the shape byte for byte).
    fn b(s: &str) -> String {
        format!("${}\r\n{s}\r\n", s.len())
    }
    fn st(s: &str) -> String {
        format!("+{s}\r\n")
    }
    fn i(n: i64) -> String {
        format!(":{n}\r\n")
    }
    fn a(items: &[String]) -> String {
        format!("*{}\r\n{}", items.len(), items.concat())
    }
    fn statuses(words: &[&str]) -> String {
        a(&words.iter().map(|w| st(w)).collect::<Vec<_>>())
    }
    fn index(n: i64) -> String {
        a(&[b("type"), b("index"), b("spec"), a(&[b("index"), i(n)])])
    }
    fn keyword(k: &str, startfrom: i64) -> String {
        let spec = a(&[b("keyword"), b(k), b("startfrom"), i(startfrom)]);
        a(&[b("type"), b("keyword"), b("spec"), spec])
    }
    fn unknown() -> String {
        a(&[b("type"), b("unknown"), b("spec"), a(&[])])
    }
    fn range(lastkey: i64, keystep: i64, limit: i64) -> String {
        let spec = a(&[
            b("lastkey"),
            i(lastkey),
            b("keystep"),
            i(keystep),
            b("limit"),
            i(limit),
        ]);
        a(&[b("type"), b("range"), b("spec"), spec])
    }
    fn keynum(idx: i64, firstkey: i64, keystep: i64) -> String {
        let spec = a(&[
            b("keynumidx"),
            i(idx),
            b("firstkey"),
            i(firstkey),
            b("keystep"),
            i(keystep),
        ]);
        a(&[b("type"), b("keynum"), b("spec"), spec])
    }
    fn spec(notes: Option<&str>, flags: &[&str], begin: String, find: String) -> String {
        let mut kv = Vec::new();
        if let Some(n) = notes {
            kv.extend([b("notes"), b(n)]);
        }
        kv.extend([
            b("flags"),
            statuses(flags),
            b("begin_search"),
            begin,
            b("find_keys"),
            find,
        ]);
        a(&kv)
    }
    #[allow(clippy::too_many_arguments)]
    fn entry(
        name: &str,
        arity: i64,
        flags: &[&str],
        (first, last, step): (i64, i64, i64),
        acl: &[&str],
        tips: &[&str],
        specs: &[String],
        subs: &[String],
    ) -> String {
        a(&[
            b(name),
            i(arity),
            statuses(flags),
            i(first),
            i(last),
            i(step),
            statuses(acl),
            a(&tips.iter().map(|t| b(t)).collect::<Vec<_>>()),
            a(specs),
            a(subs),
        ])
    }

    /// `COMMAND INFO set` from Redis 7.0.15, verbatim.
    const RAW_SET: &str =
        "*10\r\n$3\r\nset\r\n:-3\r\n*2\r\n+write\r\n+denyoom\r\n:1\r\n:1\r\n:1\r\n\
        *3\r\n+@write\r\n+@string\r\n+@slow\r\n*0\r\n*1\r\n*8\r\n$5\r\nnotes\r\n\
        $48\r\nRW and ACCESS due to the optional `GET` argument\r\n$5\r\nflags\r\n\
        *4\r\n+RW\r\n+access\r\n+update\r\n+variable_flags\r\n$12\r\nbegin_search\r\n\
        *4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n\
        $9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n\
        *6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n";

    fn set7() -> String {
        let notes = "RW and ACCESS due to the optional `GET` argument";
        let flags = ["RW", "access", "update", "variable_flags"];
        entry(
            "set",
            -3,
            &["write", "denyoom"],
            (1, 1, 1),
            &["@write", "@string", "@slow"],
            &[],
            &[spec(Some(notes), &flags, index(1), range(0, 1, 0))],
            &[],
        )
    }

    fn ro_index1(name: &str, arity: i64, flags: &[&str]) -> String {
        entry(
            name,
            arity,
            flags,
            (1, 1, 1),
            &["@read"],
            &[],
            &[spec(None, &["RO", "access"], index(1), range(0, 1, 0))],
            &[],
        )
    }

    /// A COMMAND reply modelled on Redis 7.0.15, plus one Redis 6 entry.
    fn reply() -> String {
        let entries = [
            RAW_SET.to_owned(),
            ro_index1("get", 2, &["readonly", "fast"]),
            entry(
                "mget",
                -2,
                &["readonly", "fast"],
                (1, -1, 1),
                &["@read"],
                &["request_policy:multi_shard"],
                &[spec(None, &["RO", "access"], index(1), range(-1, 1, 0))],
                &[],
            ),
            entry(
                "mset",
                -3,
                &["write", "denyoom"],
                (1, -1, 2),
                &["@write", "@string", "@slow"],
                &["request_policy:multi_shard", "response_policy:all_succeeded"],
                &[spec(None, &["OW", "update"], index(1), range(-1, 2, 0))],
                &[],
            ),
            entry(
                "rename",
                3,
                &["write"],
                (1, 2, 1),
                &["@keyspace", "@write", "@slow"],
                &[],
                &[
                    spec(None, &["RW", "access", "delete"], index(1), range(0, 1, 0)),
                    spec(None, &["OW", "update"], index(2), range(0, 1, 0)),
                ],
                &[],
            ),
            entry(
                "eval",
                -3,
                &[
                    "noscript",
                    "stale",
                    "skip_monitor",
                    "no_mandatory_keys",
                    "movablekeys",
                ],
                (0, 0, 0),
                &["@slow", "@scripting"],
                &[],
                &[spec(
                    Some("We cannot tell how the keys will be used so we assume the worst, RW and UPDATE"),
                    &["RW", "access", "update"],
                    index(2),
                    keynum(0, 1, 1),
                )],
                &[],
            ),
            entry(
                "sort",
                -2,
                &["write", "denyoom", "movablekeys"],
                (1, 1, 1),
                &["@write", "@set", "@sortedset", "@list", "@slow", "@dangerous"],
                &[],
                &[
                    spec(None, &["RO", "access"], index(1), range(0, 1, 0)),
                    spec(Some("For the optional BY/GET keyword."), &["RO", "access"], unknown(), unknown()),
                    spec(Some("For the optional STORE keyword."), &["OW", "update"], unknown(), unknown()),
                ],
                &[],
            ),
            entry(
                "flushall",
                -1,
                &["write"],
                (0, 0, 0),
                &["@keyspace", "@write", "@slow", "@dangerous"],
                &["request_policy:all_shards", "response_policy:all_succeeded"],
                &[],
                &[],
            ),
            entry(
                "georadius",
                -6,
                &["write", "denyoom", "movablekeys"],
                (1, 1, 1),
                &["@write", "@geo", "@slow"],
                &[],
                &[
                    spec(None, &["RO", "access"], index(1), range(0, 1, 0)),
                    spec(None, &["OW", "update"], keyword("STORE", 6), range(0, 1, 0)),
                    spec(None, &["OW", "update"], keyword("STOREDIST", 6), range(0, 1, 0)),
                ],
                &[],
            ),
            entry(
                "xreadgroup",
                -7,
                &["write", "blocking", "movablekeys"],
                (0, 0, 0),
                &["@write", "@stream", "@slow", "@blocking"],
                &[],
                &[spec(None, &["RO", "access"], keyword("STREAMS", 4), range(-1, 1, 2))],
                &[],
            ),
            entry(
                "migrate",
                -6,
                &["write", "movablekeys"],
                (3, 3, 1),
                &["@keyspace", "@write", "@slow", "@dangerous"],
                &["nondeterministic_output"],
                &[
                    spec(None, &["RW", "access", "delete"], index(3), range(0, 1, 0)),
                    spec(
                        None,
                        &["RW", "access", "delete", "incomplete"],
                        keyword("KEYS", -2),
                        range(-1, 1, 0),
                    ),
                ],
                &[],
            ),
            entry(
                "pfcount",
                -2,
                &["readonly"],
                (1, -1, 1),
                &["@read", "@hyperloglog", "@slow"],
                &[],
                &[spec(
                    Some("RW because it may change the internal representation of the key"),
                    &["RW", "access"],
                    index(1),
                    range(-1, 1, 0),
                )],
                &[],
            ),
            entry(
                "spublish",
                3,
                &["pubsub", "loading", "stale", "fast"],
                (1, 1, 1),
                &["@pubsub", "@fast"],
                &[],
                &[spec(None, &["not_key"], index(1), range(0, 1, 0))],
                &[],
            ),
            entry(
                "xgroup",
                -2,
                &[],
                (0, 0, 0),
                &["@slow"],
                &[],
                &[],
                &[
                    entry(
                        "xgroup|create",
                        -5,
                        &["write", "denyoom"],
                        (2, 2, 1),
                        &["@write", "@stream", "@slow"],
                        &[],
                        &[spec(None, &["RW", "insert"], index(2), range(0, 1, 0))],
                        &[],
                    ),
                    entry(
                        "xgroup|help",
                        2,
                        &["loading", "stale"],
                        (0, 0, 0),
                        &["@stream", "@slow"],
                        &[],
                        &[],
                        &[],
                    ),
                ],
            ),
            entry(
                "object",
                -2,
                &[],
                (0, 0, 0),
                &["@slow"],
                &[],
                &[],
                &[entry(
                    "object|encoding",
                    3,
                    &["readonly"],
                    (2, 2, 1),
                    &["@keyspace", "@read", "@slow"],
                    &["nondeterministic_output"],
                    &[spec(None, &["RO"], index(2), range(0, 1, 0))],
                    &[],
                )],
            ),
            // Redis 6.2 style: 7 fields, no key specs.
            a(&[
                b("lpush"),
                i(-3),
                statuses(&["write", "denyoom", "fast"]),
                i(1),
                i(1),
                i(1),
                statuses(&["@write", "@list", "@fast"]),
            ]),
            // Redis 6.0 style: 6 fields.
            a(&[
                b("msetnx"),
                i(-3),
                statuses(&["write", "denyoom"]),
                i(1),
                i(-1),
                i(2),
            ]),
            a(&[
                b("zunionstore"),
                i(-4),
                statuses(&["write", "denyoom", "movablekeys"]),
                i(0),
                i(0),
                i(0),
                statuses(&["@write"]),
            ]),
            a(&[
                b("publish"),
                i(3),
                statuses(&["pubsub", "loading", "stale", "fast", "may_replicate"]),
                i(0),
                i(0),
                i(0),
                statuses(&["@pubsub"]),
            ]),
            a(&[
                b("evalsha"),
                i(-3),
                statuses(&["noscript", "skip_monitor", "may_replicate", "movablekeys"]),
                i(0),
                i(0),
                i(0),
                statuses(&["@scripting"]),
            ]),
            a(&[
                b("flushdb"),
                i(-1),
                statuses(&["write"]),
                i(0),
                i(0),
                i(0),
                statuses(&["@keyspace"]),
            ]),
        ];
        a(&entries)
    }

    fn table() -> CommandTable {
        let value = parse_value(reply().as_bytes()).unwrap();
        CommandTable::from_command_reply(&value).unwrap()
    }

    /// Resolves `cmd` (space separated) to its answer and the written keys, sorted.
    fn resolve(t: &CommandTable, cmd: &str) -> (Writes, Vec<String>) {
        let args: Vec<&str> = cmd.split(' ').collect();
        let mut keys = Vec::new();
        let w = t.writes(
            args.len(),
            |i| args[i].as_bytes(),
            |p| keys.push(args[p].to_owned()),
        );
        keys.sort();
        keys.dedup();
        (w, keys)
    }

    #[track_caller]
    fn keys(t: &CommandTable, cmd: &str, want: &[&str]) {
        assert_eq!(
            resolve(t, cmd),
            (Writes::Keys, want.iter().map(|s| s.to_string()).collect()),
            "{cmd}"
        );
    }

    #[track_caller]
    fn nothing(t: &CommandTable, cmd: &str) {
        assert_eq!(resolve(t, cmd), (Writes::Nothing, vec![]), "{cmd}");
    }

    #[track_caller]
    fn everything(t: &CommandTable, cmd: &str) {
        assert_eq!(resolve(t, cmd), (Writes::Everything, vec![]), "{cmd}");
    }

    #[test]
    fn builder_matches_real_output() {
        assert_eq!(set7(), RAW_SET);
    }

    #[test]
    fn counts_top_level_commands() {
        let t = table();
        assert_eq!(t.len(), 21);
        assert!(!t.is_empty());
        assert!(CommandTable::default().is_empty());
    }

    #[test]
    fn strings() {
        let t = table();
        keys(&t, "SET k v", &["k"]);
        keys(&t, "set k v GET", &["k"]);
        keys(&t, "SeT k v EX 10 NX", &["k"]);
        nothing(&t, "GET k");
        nothing(&t, "get k");
        nothing(&t, "MGET a b c");
        keys(&t, "MSET a 1 b 2 c 3", &["a", "b", "c"]);
        // Odd arity: Redis's range still ends at the last argument.
        keys(&t, "MSET a 1 b", &["a", "b"]);
        keys(&t, "RENAME from to", &["from", "to"]);
        // Out of range on a fixed-arity command: unresolvable.
        everything(&t, "RENAME from");
    }

    #[test]
    fn scripts() {
        let t = table();
        keys(&t, "EVAL return 2 k1 k2 a1", &["k1", "k2"]);
        keys(&t, "eval return 1 k1", &["k1"]);
        // Zero keys: Redis calls the spec invalid (and the script may touch anything).
        everything(&t, "EVAL return 0");
        everything(&t, "EVAL return 0 a1");
        everything(&t, "EVAL return x k1");
        everything(&t, "EVAL return -1 k1");
        everything(&t, "EVAL return +1 k1");
        everything(&t, "EVAL return 01 k1");
        everything(&t, "EVAL return 3 k1 k2");
        everything(&t, "EVAL return 99999999999999999999 k1");
        everything(&t, "EVAL return");
    }

    #[test]
    fn sort_store() {
        let t = table();
        nothing(&t, "SORT k");
        nothing(&t, "SORT k LIMIT 0 10 ALPHA DESC");
        keys(&t, "SORT k STORE d", &["d"]);
        keys(&t, "sort k BY w_* GET # store d", &["d"]);
        keys(&t, "SORT k STORE d1 STORE d2", &["d1", "d2"]);
        // STORE as the last argument has no key after it.
        nothing(&t, "SORT k STORE");
        // The sort key named "store" is read, not written.
        nothing(&t, "SORT store");
    }

    #[test]
    fn keyword_specs() {
        let t = table();
        nothing(&t, "GEORADIUS k 0 0 1 km");
        nothing(&t, "GEORADIUS k 0 0 1 km WITHDIST");
        keys(&t, "GEORADIUS k 0 0 1 km STORE d", &["d"]);
        keys(&t, "GEORADIUS k 0 0 1 km storedist d", &["d"]);
        keys(&t, "GEORADIUS k 0 0 1 km STORE d STOREDIST e", &["d", "e"]);
        // The search starts at 6: a "STORE" key or member before it is not the keyword.
        nothing(&t, "GEORADIUS STORE 0 0 1 km");
        // Nor is a STORE in the last place.
        nothing(&t, "GEORADIUS k 0 0 1 km ASC STORE");
    }

    #[test]
    fn write_flag_without_writing_spec() {
        let t = table();
        everything(&t, "FLUSHALL");
        everything(&t, "flushall ASYNC");
        // Read-only specs on a writing command: its keys are what it writes.
        keys(
            &t,
            "XREADGROUP GROUP g c COUNT 1 STREAMS s1 s2 > >",
            &["s1", "s2"],
        );
        keys(&t, "XREADGROUP GROUP g c STREAMS s1 >", &["s1"]);
        everything(&t, "XREADGROUP GROUP g c COUNT 1 s1 >");
    }

    #[test]
    fn incomplete_and_not_key_specs() {
        let t = table();
        everything(&t, "MIGRATE h 6379 k 0 5000");
        everything(&t, "MIGRATE h 6379 \"\" 0 5000 KEYS a b");
        // PFCOUNT is readonly but its spec is RW.
        keys(&t, "PFCOUNT h1 h2", &["h1", "h2"]);
        nothing(&t, "SPUBLISH channel message");
    }

    #[test]
    fn subcommands() {
        let t = table();
        keys(&t, "XGROUP CREATE s g $", &["s"]);
        keys(&t, "xgroup create s g $ MKSTREAM", &["s"]);
        nothing(&t, "XGROUP HELP");
        // Unknown subcommand of a container without the write flag: an error.
        nothing(&t, "XGROUP NOSUCH s");
        nothing(&t, "XGROUP");
        nothing(&t, "OBJECT ENCODING k");
        nothing(&t, "object encoding k");
        let long = format!("XGROUP {} s", "x".repeat(MAX_NAME_LEN + 1));
        nothing(&t, &long);
    }

    #[test]
    fn redis6_entries() {
        let t = table();
        keys(&t, "LPUSH l a b c", &["l"]);
        keys(&t, "MSETNX a 1 b 2", &["a", "b"]);
        everything(&t, "LPUSH");
        everything(&t, "ZUNIONSTORE d 2 a b");
        everything(&t, "EVALSHA abc 1 k");
        nothing(&t, "PUBLISH ch msg");
        everything(&t, "FLUSHDB");
    }

    #[test]
    fn unknown_commands_and_case() {
        let t = table();
        everything(&t, "NOSUCHCOMMAND k");
        everything(&t, "HSET h f v");
        let long = "S".repeat(MAX_NAME_LEN + 1);
        everything(&t, &long);
        keys(&t, "sEt k v", &["k"]);
        nothing(&t, "gEt k");
        let empty = CommandTable::default();
        everything(&empty, "GET k");
        assert_eq!(empty.writes(0, |_| b"", |_| {}), Writes::Nothing);
    }

    #[test]
    fn on_key_only_for_keys() {
        let t = table();
        let args = ["RENAME", "a"];
        let mut called = false;
        let w = t.writes(2, |i| args[i].as_bytes(), |_| called = true);
        assert_eq!(w, Writes::Everything);
        assert!(!called);
    }

    #[test]
    fn rejects_non_arrays() {
        assert!(CommandTable::from_command_reply(&Value::Error(b"ERR nope".to_vec())).is_err());
        assert!(CommandTable::from_command_reply(&Value::Null).is_err());
        assert!(CommandTable::from_command_reply(&Value::Integer(3)).is_err());
        let empty = CommandTable::from_command_reply(&Value::Array(vec![])).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn malformed_entries() {
        let bad_flags = a(&[b("w1"), i(-2), i(7), i(1), i(1), i(1)]);
        let bad_spec = entry(
            "w2",
            -2,
            &["readonly"],
            (1, 1, 1),
            &[],
            &[],
            &[a(&[b("flags"), i(3)])],
            &[],
        );
        let bad_ro_spec = entry(
            "r3",
            -2,
            &["readonly"],
            (1, 1, 1),
            &[],
            &[],
            &[spec(None, &["RO"], a(&[b("type")]), range(0, 1, 0))],
            &[],
        );
        let bad_w_spec = entry(
            "w4",
            -2,
            &[],
            (1, 1, 1),
            &[],
            &[],
            &[spec(None, &["OW"], index(1), range(0, 0, 0))],
            &[],
        );
        let zero_step = a(&[b("w5"), i(-2), statuses(&["write"]), i(1), i(1), i(0)]);
        let module = entry(
            "mod.write",
            -2,
            &["write"],
            (1, 1, 1),
            &[],
            &[],
            &[spec(None, &["variable_flags"], index(1), range(0, 1, 0))],
            &[],
        );
        let module_ro = entry(
            "mod.read",
            -2,
            &["readonly"],
            (1, 1, 1),
            &[],
            &[],
            &[spec(None, &["variable_flags"], index(1), range(0, 1, 0))],
            &[],
        );
        let specs_not_array = a(&[
            b("w6"),
            i(2),
            statuses(&[]),
            i(1),
            i(1),
            i(1),
            a(&[]),
            a(&[]),
            i(0),
        ]);
        let reply = a(&[
            bad_flags,
            bad_spec,
            bad_ro_spec,
            bad_w_spec,
            zero_step,
            module,
            module_ro,
            specs_not_array,
            i(5),
            a(&[]),
            a(&[i(1)]),
            "_\r\n".to_owned(),
            b(""),
        ]);
        let t = CommandTable::from_command_reply(&parse_value(reply.as_bytes()).unwrap()).unwrap();
        assert_eq!(t.len(), 8);
        everything(&t, "W1 k");
        everything(&t, "W2 k");
        nothing(&t, "R3 k");
        everything(&t, "W4 k");
        everything(&t, "W5 k");
        keys(&t, "MOD.WRITE k", &["k"]);
        nothing(&t, "MOD.READ k");
        everything(&t, "W6 k");
    }

    #[test]
    fn resp3_shapes() {
        // RESP3: flags as a set, specs as maps (decoded to flat pairs).
        let reply =
            "*1\r\n*10\r\n$3\r\ndel\r\n:-2\r\n~1\r\n+write\r\n:1\r\n:-1\r\n:1\r\n~0\r\n*0\r\n\
            *1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RM\r\n+delete\r\n$12\r\nbegin_search\r\n\
            %2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n%1\r\n$5\r\nindex\r\n:1\r\n\
            $9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n\
            %3\r\n$7\r\nlastkey\r\n:-1\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n";
        let t = CommandTable::from_command_reply(&parse_value(reply.as_bytes()).unwrap()).unwrap();
        keys(&t, "DEL a b c", &["a", "b", "c"]);
    }

    #[test]
    fn spec_resolution_edges() {
        let arg_list = ["CMD", "a", "KW", "b", "c", "KW", "d"];
        let run = |begin: Begin, find: Find| {
            Spec { begin, find }
                .resolve(arg_list.len() as i64, &|i| arg_list[i].as_bytes())
                .map_err(|_| ())
        };
        let kw = |startfrom| Begin::Keyword {
            keyword: b"kw"[..].into(),
            startfrom,
        };
        let one = Find::Range {
            lastkey: 0,
            step: 1,
            limit: 0,
        };
        // Forwards finds the first KW, backwards the last.
        assert_eq!(run(kw(1), one.clone()), Ok(Some((3, 3, 1))));
        assert_eq!(run(kw(-1), one.clone()), Ok(Some((6, 6, 1))));
        assert_eq!(run(kw(-3), one.clone()), Ok(Some((3, 3, 1))));
        // Forwards from past the last KW, or startfrom 0: not found.
        assert_eq!(run(kw(6), one.clone()), Ok(None));
        assert_eq!(run(kw(0), one.clone()), Ok(None));
        assert_eq!(run(kw(100), one.clone()), Ok(None));
        assert_eq!(run(kw(i64::MIN), one.clone()), Ok(None));
        // lastkey -1 with limit 2: half of what follows.
        let half = Find::Range {
            lastkey: -1,
            step: 1,
            limit: 2,
        };
        assert_eq!(run(Begin::Index(1), half), Ok(Some((1, 3, 1))));
        let to_end = Find::Range {
            lastkey: -2,
            step: 2,
            limit: 0,
        };
        assert_eq!(run(Begin::Index(1), to_end), Ok(Some((1, 5, 2))));
        assert_eq!(run(Begin::Index(7), one.clone()), Err(()));
        let huge = Find::Range {
            lastkey: i64::MAX,
            step: 1,
            limit: 0,
        };
        assert_eq!(run(Begin::Index(2), huge), Err(()));
        let bad_idx = Find::Keynum {
            idx: 10,
            firstkey: 1,
            step: 1,
        };
        assert_eq!(run(Begin::Index(1), bad_idx), Err(()));
    }

    #[test]
    fn parse_count_is_strict() {
        assert_eq!(parse_count(b"0"), Some(0));
        assert_eq!(parse_count(b"12"), Some(12));
        assert_eq!(parse_count(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"00",
            b"01",
            b"+1",
            b"-1",
            b"1x",
            b" 1",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
    }
}
