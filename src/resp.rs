//! The Redis protocol, as bytes: an incremental request parser (RESP2
//! multibulk and inline commands), a reply framer that finds where one reply
//! ends (RESP2 and RESP3 types), and small encoders for replies made locally.
//!
//! Pure: no sockets, no clocks. It must never panic or allocate without bound
//! on any input; every limit mirrors the one Redis itself enforces.

use std::ops::Range;

/// Longest bulk argument Redis accepts (`proto-max-bulk-len`, 512 MB).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Longest inline line, and longest length header (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Most arguments in one multibulk request (Redis's classic 1M limit).
pub const MAX_MULTIBULK_LEN: usize = 1024 * 1024;

/// Argument slots reserved up front: the declared count is the client's word,
/// and a client may declare a million arguments and send none.
const INITIAL_ARGS: usize = 16;

/// Deepest nesting of aggregates the framer follows. Each level costs a
/// `usize` on the framer's stack and at least four bytes of input, so this
/// only caps a corrupt or hostile stream, never a real reply.
const MAX_REPLY_DEPTH: usize = 1_000_000;

/// Longest length header line in a reply (type byte excluded) before the
/// framer gives up waiting for its CRLF: `-9223372036854775808` is 20 bytes,
/// so anything much longer is garbage and waiting for more would only stall.
const MAX_REPLY_HEADER: usize = 32;

/// Input that breaks the protocol. The connection is answered with
/// `-ERR Protocol error: <reason>` and closed, as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// `*` header not a number, negative, or over `MAX_MULTIBULK_LEN`.
    InvalidMultibulkLength,
    /// `$` header not a number, negative, or over `MAX_BULK_LEN`.
    InvalidBulkLength,
    /// An argument of a multibulk did not start with `$`.
    ExpectedDollar(u8),
    /// An inline line longer than `MAX_INLINE_LEN` without a newline.
    TooBigInline,
    /// A `*` header line longer than `MAX_INLINE_LEN` without CRLF.
    TooBigMultibulkCount,
    /// A `$` header line longer than `MAX_INLINE_LEN` without CRLF.
    TooBigBulkCount,
    /// An inline line whose quotes do not close, or a closing quote not followed by a space.
    UnbalancedQuotes,
    /// The two bytes after a bulk argument's data were not CRLF.
    ExpectedCrlf,
}

impl ProtocolError {
    /// The reason as Redis words it, without the `Protocol error: ` prefix.
    pub fn reason(&self) -> String {
        match self {
            Self::InvalidMultibulkLength => "invalid multibulk length".to_owned(),
            Self::InvalidBulkLength => "invalid bulk length".to_owned(),
            Self::ExpectedDollar(byte) => {
                // Redis prints the raw byte with %c, then blanks CR and LF so
                // the error reply stays on one line.
                let shown = match byte {
                    b'\r' | b'\n' => ' ',
                    other => char::from(*other),
                };
                format!("expected '$', got '{shown}'")
            }
            Self::TooBigInline => "too big inline request".to_owned(),
            Self::TooBigMultibulkCount => "too big mbulk count string".to_owned(),
            Self::TooBigBulkCount => "too big bulk count string".to_owned(),
            Self::UnbalancedQuotes => "unbalanced quotes in request".to_owned(),
            Self::ExpectedCrlf => "expected CRLF after bulk argument".to_owned(),
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.reason())
    }
}

impl std::error::Error for ProtocolError {}

/// One complete request, borrowed positions into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// How many bytes at the start of the buffer this request occupied.
    pub consumed: usize,
    args: Args,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Args {
    /// Multibulk: each argument's byte range in the buffer.
    Ranges(Vec<Range<usize>>),
    /// Inline: arguments after unquoting, which need not be contiguous bytes of the input.
    Owned(Vec<Vec<u8>>),
}

impl Request {
    /// Number of arguments, the command name included. 0 for an empty inline line or `*0`.
    pub fn argc(&self) -> usize {
        match &self.args {
            Args::Ranges(ranges) => ranges.len(),
            Args::Owned(args) => args.len(),
        }
    }

    /// Argument `i` (0 is the command name), given the buffer this request was parsed from.
    pub fn arg<'a>(&'a self, buf: &'a [u8], i: usize) -> Option<&'a [u8]> {
        match &self.args {
            // `get` rather than indexing: a caller handing in the wrong buffer
            // gets `None`, not a panic.
            Args::Ranges(ranges) => ranges.get(i).and_then(|r| buf.get(r.clone())),
            Args::Owned(args) => args.get(i).map(Vec::as_slice),
        }
    }

    /// Whether it arrived as an inline command.
    pub fn is_inline(&self) -> bool {
        matches!(self.args, Args::Owned(_))
    }

    /// Appends the request as it goes to Redis: a multibulk exactly as it
    /// arrived; an inline command re-encoded as a multibulk (an inline line
    /// with a NUL byte would stall Redis's parser on a shared connection).
    pub fn write_wire(&self, buf: &[u8], out: &mut Vec<u8>) {
        match &self.args {
            Args::Ranges(_) => {
                if let Some(wire) = buf.get(..self.consumed) {
                    out.extend_from_slice(wire);
                }
            }
            Args::Owned(args) => command(out, args),
        }
    }
}

/// Resumable request parser for one client connection.
///
/// Call `parse` with the client's unconsumed input. `Ok(None)` means the
/// request is not complete yet: call again when more bytes have arrived (the
/// buffer may only have grown at its end). After `Ok(Some(req))` the caller
/// drops `req.consumed` bytes from the front and the parser starts afresh.
/// Work already done on a partial request is kept, so a large request that
/// arrives in many reads is not rescanned from its first byte each time.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Start of the first line or bulk not yet complete.
    pos: usize,
    /// The line starting at `pos` has no terminator before this offset, so a
    /// slow client trickling a long line is not rescanned on every read.
    scanned: usize,
    /// Whether the `*` header has been read.
    in_multibulk: bool,
    /// Bulk arguments still to come.
    remaining: usize,
    /// Length of the bulk whose `$` header has been read but whose data has not all arrived.
    bulk_len: Option<usize>,
    /// Arguments complete so far.
    ranges: Vec<Range<usize>>,
}

impl RequestParser {
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        let result = match buf.first() {
            None => Ok(None),
            Some(b'*') => self.parse_multibulk(buf),
            Some(_) => self.parse_inline(buf),
        };
        if !matches!(result, Ok(None)) {
            *self = Self::default();
        }
        result
    }

    fn parse_inline(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        // Redis only rejects a line when no newline has come within the
        // limit; rejecting a longer line that does end in one too makes the
        // outcome independent of how the bytes were split into reads.
        let newline = match scan_line(buf, 0, &mut self.scanned, MAX_INLINE_LEN, |b| b == b'\n') {
            Scan::Found(i) => i,
            Scan::Incomplete => return Ok(None),
            Scan::TooLong => return Err(ProtocolError::TooBigInline),
        };
        let mut line = buf.get(..newline).unwrap_or_default();
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let args = split_inline(line)?;
        Ok(Some(Request {
            consumed: newline + 1,
            args: Args::Owned(args),
        }))
    }

    fn parse_multibulk(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        if !self.in_multibulk {
            let cr = match header_line(buf, 0, &mut self.scanned) {
                Header::Line(cr) => cr,
                Header::Incomplete => return Ok(None),
                Header::TooLong => return Err(ProtocolError::TooBigMultibulkCount),
                Header::Malformed => return Err(ProtocolError::InvalidMultibulkLength),
            };
            let count = buf
                .get(1..cr)
                .and_then(parse_int)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= MAX_MULTIBULK_LEN)
                .ok_or(ProtocolError::InvalidMultibulkLength)?;
            self.pos = cr + 2;
            self.in_multibulk = true;
            self.remaining = count;
            self.ranges = Vec::with_capacity(count.min(INITIAL_ARGS));
        }

        while self.remaining > 0 {
            let len = match self.bulk_len {
                Some(len) => len,
                None => {
                    let len = match self.bulk_header(buf)? {
                        Some(len) => len,
                        None => return Ok(None),
                    };
                    self.bulk_len = Some(len);
                    len
                }
            };
            // Data is skipped by its declared length, never scanned: it may
            // hold CRLFs, and a large value arriving in many reads costs one
            // comparison per read.
            let data_end = self
                .pos
                .checked_add(len)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            let arg_end = data_end
                .checked_add(2)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            let Some(crlf) = buf.get(data_end..arg_end) else {
                return Ok(None);
            };
            if crlf != b"\r\n" {
                return Err(ProtocolError::ExpectedCrlf);
            }
            self.ranges.push(self.pos..data_end);
            self.pos = arg_end;
            self.bulk_len = None;
            self.remaining -= 1;
        }

        Ok(Some(Request {
            consumed: self.pos,
            args: Args::Ranges(std::mem::take(&mut self.ranges)),
        }))
    }

    /// Reads the `$<len>\r\n` header at `pos`, leaving `pos` after it.
    fn bulk_header(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let line = header_line(buf, self.pos, &mut self.scanned);
        let cr = match line {
            Header::Incomplete => return Ok(None),
            Header::TooLong => return Err(ProtocolError::TooBigBulkCount),
            Header::Line(cr) => Some(cr),
            Header::Malformed => None,
        };
        // Redis looks at the first byte only once the whole line is in, so a
        // wrong type byte and a bad length are told apart the same way here.
        match buf.get(self.pos) {
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedDollar(other)),
            None => return Ok(None),
        }
        let cr = cr.ok_or(ProtocolError::InvalidBulkLength)?;
        let len = buf
            .get(self.pos + 1..cr)
            .and_then(parse_int)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_BULK_LEN)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        self.pos = cr + 2;
        Ok(Some(len))
    }
}

/// Splits an inline line as Redis's `sdssplitargs` does.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        None,
        Double,
        Single,
    }

    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }

        let mut arg = Vec::new();
        let mut quote = Quote::None;
        loop {
            let Some(&c) = line.get(i) else {
                if quote == Quote::None {
                    break;
                }
                return Err(ProtocolError::UnbalancedQuotes);
            };
            match (quote, c) {
                (Quote::Double, b'\\') => {
                    let hex = match (line.get(i + 1), line.get(i + 2), line.get(i + 3)) {
                        (Some(b'x'), Some(&hi), Some(&lo)) => hex_digit(hi).zip(hex_digit(lo)),
                        _ => None,
                    };
                    if let Some((hi, lo)) = hex {
                        arg.push((hi << 4) | lo);
                        i += 4;
                    } else if let Some(&escaped) = line.get(i + 1) {
                        arg.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 2;
                    } else {
                        // A backslash ending the line escapes nothing; the
                        // quote is then unterminated.
                        arg.push(c);
                        i += 1;
                    }
                }
                (Quote::Single, b'\\') if line.get(i + 1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    i += 2;
                }
                (Quote::Double, b'"') | (Quote::Single, b'\'') => {
                    // `"foo"bar` is refused rather than guessed at.
                    if line.get(i + 1).copied().is_some_and(|b| !is_space(b)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                (Quote::Double | Quote::Single, _) => {
                    arg.push(c);
                    i += 1;
                }
                // Only these four end a bare word: sdssplitargs keeps \v and
                // \f inside a word although it skips them between words.
                (Quote::None, b' ' | b'\n' | b'\r' | b'\t') => break,
                (Quote::None, b'"') => {
                    quote = Quote::Double;
                    i += 1;
                }
                (Quote::None, b'\'') => {
                    quote = Quote::Single;
                    i += 1;
                }
                (Quote::None, _) => {
                    arg.push(c);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// C's `isspace` in the C locale, which sdssplitargs uses between words.
/// NUL is not among them: Redis never sees one inside a line (its `strchr`
/// stops there), and here it is kept as an ordinary byte of its word.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Redis's `string2ll`: an optional `-`, then digits with no leading zero
/// (`0` alone excepted), nothing else, no overflow.
pub(crate) fn parse_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        // Accumulating on the negative side reaches i64::MIN without overflow.
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

enum Scan {
    /// Offset of the first byte that ends the line.
    Found(usize),
    Incomplete,
    TooLong,
}

/// Looks for the first byte matching `ends` in the line starting at `start`,
/// whose content may be at most `max` bytes long.
///
/// Only the first `max + 1` bytes are ever searched, so the answer for a
/// longer line is `TooLong` whether or not a terminator lies beyond: the
/// outcome does not depend on how much of the line has arrived.
fn scan_line(
    buf: &[u8],
    start: usize,
    scanned: &mut usize,
    max: usize,
    ends: impl Fn(u8) -> bool,
) -> Scan {
    let window_end = buf.len().min(start.saturating_add(max).saturating_add(1));
    let from = (*scanned).max(start);
    if let Some(found) = buf
        .get(from..window_end)
        .and_then(|window| window.iter().position(|&b| ends(b)))
    {
        return Scan::Found(from + found);
    }
    *scanned = window_end.max(from);
    if buf.len().saturating_sub(start) > max {
        Scan::TooLong
    } else {
        Scan::Incomplete
    }
}

enum Header {
    /// Offset of the CR of a line that ends in CRLF.
    Line(usize),
    Incomplete,
    TooLong,
    /// A bare LF, or a CR followed by something other than LF.
    Malformed,
}

/// Finds the end of a `*` or `$` header line, which must end in CRLF.
fn header_line(buf: &[u8], start: usize, scanned: &mut usize) -> Header {
    // Stopping at a bare LF too, instead of waiting for a CR as Redis does,
    // refuses `*3\n` at once rather than after 64 KB of waiting.
    let i = match scan_line(buf, start, scanned, MAX_INLINE_LEN, |b| {
        b == b'\r' || b == b'\n'
    }) {
        Scan::Found(i) => i,
        Scan::Incomplete => return Header::Incomplete,
        Scan::TooLong => return Header::TooLong,
    };
    match (buf.get(i), buf.get(i + 1)) {
        (Some(b'\r'), Some(b'\n')) => Header::Line(i),
        (Some(b'\r'), None) => {
            // Look at this CR again once its LF may have arrived.
            *scanned = i;
            Header::Incomplete
        }
        _ => Header::Malformed,
    }
}

/// A reply stream from Redis that does not parse: the connection is out of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed reply from Redis: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// Resumable framer for a backend connection's reply stream.
///
/// `frame(buf)` returns the length of the complete reply at the start of
/// `buf`, or `Ok(None)` when more bytes are needed (call again once `buf` has
/// grown at its end). After `Ok(Some(len))` the caller drops `len` bytes and
/// the framer starts afresh. Knows every RESP2 and RESP3 type, nested to any
/// depth without recursion.
#[derive(Debug, Default)]
pub struct ReplyFramer {
    /// Start of the first value not yet complete (its type byte), or of the
    /// bulk body when `body` is set.
    pos: usize,
    /// The line starting at `pos` has no LF before this offset.
    scanned: usize,
    /// Values each open aggregate still owes, innermost last.
    stack: Vec<usize>,
    /// Length of the bulk body at `pos`, once its header has been read.
    body: Option<usize>,
}

impl ReplyFramer {
    pub fn frame(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let result = self.frame_inner(buf);
        if !matches!(result, Ok(None)) {
            self.pos = 0;
            self.scanned = 0;
            self.body = None;
            self.stack.clear();
            // Keep the stack's allocation for the next reply, unless one
            // freak reply made it large.
            if self.stack.capacity() > 64 {
                self.stack = Vec::new();
            }
        }
        result
    }

    fn frame_inner(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        loop {
            if let Some(len) = self.body {
                let data_end = self
                    .pos
                    .checked_add(len)
                    .ok_or(FrameError("bulk length too large"))?;
                let end = data_end
                    .checked_add(2)
                    .ok_or(FrameError("bulk length too large"))?;
                let Some(crlf) = buf.get(data_end..end) else {
                    return Ok(None);
                };
                if crlf != b"\r\n" {
                    return Err(FrameError("expected CRLF after bulk data"));
                }
                self.pos = end;
                self.body = None;
            } else {
                let Some(&kind) = buf.get(self.pos) else {
                    return Ok(None);
                };
                match kind {
                    // Simple string, error, integer, null, boolean, double, big number.
                    b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                        let Some(cr) = self.line(buf, usize::MAX)? else {
                            return Ok(None);
                        };
                        self.pos = cr + 2;
                    }
                    // Bulk string, verbatim string, blob error.
                    b'$' | b'=' | b'!' => {
                        let Some(len) = self.length(buf)? else {
                            return Ok(None);
                        };
                        match (kind, len) {
                            (b'$', -1) => {}
                            (_, len) => {
                                let len = usize::try_from(len)
                                    .map_err(|_| FrameError("invalid bulk length"))?;
                                self.body = Some(len);
                                continue;
                            }
                        }
                    }
                    // Array, set, push, map, attribute.
                    b'*' | b'~' | b'>' | b'%' | b'|' => {
                        let Some(count) = self.length(buf)? else {
                            return Ok(None);
                        };
                        if !(kind == b'*' && count == -1) {
                            let count = usize::try_from(count)
                                .map_err(|_| FrameError("invalid aggregate length"))?;
                            let owed = match kind {
                                b'%' => count.checked_mul(2),
                                // An attribute's pairs are followed by the
                                // reply they annotate, which belongs to the
                                // same value.
                                b'|' => count.checked_mul(2).and_then(|n| n.checked_add(1)),
                                _ => Some(count),
                            }
                            .ok_or(FrameError("invalid aggregate length"))?;
                            if owed > 0 {
                                if self.stack.len() >= MAX_REPLY_DEPTH {
                                    return Err(FrameError("reply nested too deep"));
                                }
                                self.stack.push(owed);
                                continue;
                            }
                        }
                    }
                    _ => return Err(FrameError("unknown reply type")),
                }
            }

            // One value is complete; it may complete its enclosing aggregates.
            loop {
                let Some(owed) = self.stack.last_mut() else {
                    return Ok(Some(self.pos));
                };
                *owed = owed.saturating_sub(1);
                if *owed > 0 {
                    break;
                }
                self.stack.pop();
            }
        }
    }

    /// Finds the CRLF ending the line whose type byte is at `pos`, and
    /// returns the offset of its CR.
    fn line(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
        let start = self.pos.saturating_add(1);
        match scan_line(buf, start, &mut self.scanned, max, |b| b == b'\n') {
            Scan::Found(lf) if lf > start && buf.get(lf - 1) == Some(&b'\r') => Ok(Some(lf - 1)),
            Scan::Found(_) => Err(FrameError("expected CRLF after reply line")),
            Scan::Incomplete => Ok(None),
            Scan::TooLong => Err(FrameError("length header too long")),
        }
    }

    /// Reads the length header at `pos`, leaving `pos` after it.
    fn length(&mut self, buf: &[u8]) -> Result<Option<i64>, FrameError> {
        let Some(cr) = self.line(buf, MAX_REPLY_HEADER)? else {
            return Ok(None);
        };
        let digits = buf.get(self.pos + 1..cr).unwrap_or_default();
        if digits == b"?" {
            return Err(FrameError("streamed replies are not supported"));
        }
        let len = parse_int(digits).ok_or(FrameError("invalid length"))?;
        self.pos = cr + 2;
        Ok(Some(len))
    }
}

/// The protocol a client speaks, chosen with HELLO: RESP2 until it says `HELLO 3`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// A nil: `$-1` in RESP2, `_` in RESP3.
pub fn null(out: &mut Vec<u8>, protocol: Protocol) {
    out.extend_from_slice(null_reply(protocol));
}

pub fn null_reply(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    }
}

/// A map of `n` pairs: `%<n>` in RESP3, a flat array of `2n` in RESP2.
pub fn map_header(out: &mut Vec<u8>, n: usize, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => array_header(out, 2 * n),
        Protocol::Resp3 => length_header(out, b'%', n),
    }
}

/// `+<s>\r\n`
pub fn simple(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'+');
    push_one_line(out, s);
    out.extend_from_slice(b"\r\n");
}

/// `-<msg>\r\n`; `msg` carries its own code, e.g. `ERR unknown command`.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    push_one_line(out, msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `:<n>\r\n`
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    push_decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// `$<len>\r\n<b>\r\n`
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + 16);
    length_header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `$-1\r\n`
pub fn null_bulk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*<n>\r\n`
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    length_header(out, b'*', n);
}

/// A request as a multibulk of the given arguments.
pub fn command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, arg.as_ref());
    }
}

/// A reply decoded into values, for the few replies sidecache reads itself
/// (its handshake, `COMMAND`, invalidation messages). Client traffic is
/// never decoded: it is framed and passed on as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+`, and RESP3's one-line types (`#`, `,`, `(`) as their text.
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    /// `$`, and RESP3's `=` and `!`.
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` and RESP3's `_`.
    Null,
    /// `*`, and RESP3's `~` and `>`; a `%` map as its 2n elements in order.
    Array(Vec<Value>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

/// Nesting deeper than any reply sidecache decodes itself.
const MAX_VALUE_DEPTH: usize = 32;

/// Decodes one complete reply, as found by [`ReplyFramer`].
pub fn parse_value(frame: &[u8]) -> Result<Value, FrameError> {
    let mut at = 0;
    let value = parse_value_at(frame, &mut at, 0)?;
    if at != frame.len() {
        return Err(FrameError("trailing bytes after the reply"));
    }
    Ok(value)
}

fn parse_value_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Value, FrameError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(FrameError("reply nested too deep"));
    }
    let rest = buf.get(*at..).unwrap_or_default();
    let line_len = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(FrameError("incomplete reply"))?;
    // A line of just CRLF has no type byte; `get` keeps that from panicking.
    let (kind, line) = match rest.get(..line_len) {
        Some([kind, line @ ..]) => (*kind, line),
        _ => return Err(FrameError("reply without a type")),
    };
    *at += line_len + 2;
    let length = || parse_int(line).ok_or(FrameError("invalid length"));
    match kind {
        b'+' | b'#' | b',' | b'(' => Ok(Value::Simple(line.to_vec())),
        b'-' => Ok(Value::Error(line.to_vec())),
        b':' => Ok(Value::Integer(length()?)),
        b'_' => Ok(Value::Null),
        b'$' | b'=' | b'!' => {
            let n = length()?;
            if n < 0 {
                return Ok(Value::Null);
            }
            let n = usize::try_from(n).map_err(|_| FrameError("invalid length"))?;
            let end = at.checked_add(n).ok_or(FrameError("invalid length"))?;
            let data = buf.get(*at..end).ok_or(FrameError("incomplete reply"))?;
            if buf.get(end..end + 2) != Some(b"\r\n") {
                return Err(FrameError("expected CRLF after bulk data"));
            }
            *at = end + 2;
            Ok(Value::Bulk(data.to_vec()))
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = length()?;
            if n < 0 {
                return Ok(Value::Null);
            }
            let count = if kind == b'%' { n.saturating_mul(2) } else { n };
            let count = usize::try_from(count).map_err(|_| FrameError("invalid length"))?;
            // Each element takes at least 3 bytes, so a count larger than
            // what is left cannot be honest; do not reserve for it.
            let mut items = Vec::with_capacity(count.min(buf.len() / 3));
            for _ in 0..count {
                items.push(parse_value_at(buf, at, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        _ => Err(FrameError("unknown reply type")),
    }
}

/// Copies a status or error text, blanking CR and LF as Redis does: either
/// would end the line early and leave the client out of step.
fn push_one_line(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().map(|&b| match b {
        b'\r' | b'\n' => b' ',
        b => b,
    }));
}

fn length_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    // usize is at most 64 bits on every supported target.
    push_decimal(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- helpers -------------------------------------------------------

    fn args_of(req: &Request, buf: &[u8]) -> Vec<Vec<u8>> {
        (0..req.argc())
            .map(|i| req.arg(buf, i).expect("argument in range").to_vec())
            .collect()
    }

    fn owned(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    fn parse_once(input: &[u8]) -> Result<Option<Request>, ProtocolError> {
        RequestParser::default().parse(input)
    }

    #[derive(Debug, PartialEq)]
    enum Parsed {
        Req {
            consumed: usize,
            inline: bool,
            args: Vec<Vec<u8>>,
        },
        Err(ProtocolError),
    }

    fn outcome(result: Result<Option<Request>, ProtocolError>, buf: &[u8]) -> Option<Parsed> {
        match result {
            Ok(None) => None,
            Ok(Some(req)) => Some(Parsed::Req {
                consumed: req.consumed,
                inline: req.is_inline(),
                args: args_of(&req, buf),
            }),
            Err(e) => Some(Parsed::Err(e)),
        }
    }

    /// Every request in `input`, handed over whole, until one is incomplete or an error.
    fn parse_whole(input: &[u8]) -> Vec<Parsed> {
        let mut parser = RequestParser::default();
        let mut results = Vec::new();
        let mut off = 0;
        loop {
            let rest = &input[off..];
            match outcome(parser.parse(rest), rest) {
                None => return results,
                Some(Parsed::Err(e)) => {
                    results.push(Parsed::Err(e));
                    return results;
                }
                Some(req @ Parsed::Req { consumed, .. }) => {
                    assert!(consumed > 0 && consumed <= rest.len());
                    off += consumed;
                    results.push(req);
                }
            }
        }
    }

    /// The same, with `input` arriving in random pieces through one parser,
    /// the caller's buffer drained as requests complete.
    fn parse_chunked(input: &[u8], rng: &mut Rng, max_chunk: usize) -> Vec<Parsed> {
        let mut parser = RequestParser::default();
        let mut results = Vec::new();
        let mut buf = Vec::new();
        let mut fed = 0;
        loop {
            match outcome(parser.parse(&buf), &buf) {
                None => {
                    if fed == input.len() {
                        return results;
                    }
                    let n = (1 + rng.below(max_chunk)).min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                Some(Parsed::Err(e)) => {
                    results.push(Parsed::Err(e));
                    return results;
                }
                Some(req @ Parsed::Req { consumed, .. }) => {
                    buf.drain(..consumed);
                    results.push(req);
                }
            }
        }
    }

    fn frame_whole(input: &[u8]) -> Vec<Result<usize, FrameError>> {
        let mut framer = ReplyFramer::default();
        let mut results = Vec::new();
        let mut off = 0;
        loop {
            match framer.frame(&input[off..]) {
                Ok(None) => return results,
                Ok(Some(len)) => {
                    assert!(len > 0 && len <= input.len() - off);
                    off += len;
                    results.push(Ok(len));
                }
                Err(e) => {
                    results.push(Err(e));
                    return results;
                }
            }
        }
    }

    fn frame_chunked(
        input: &[u8],
        rng: &mut Rng,
        max_chunk: usize,
    ) -> Vec<Result<usize, FrameError>> {
        let mut framer = ReplyFramer::default();
        let mut results = Vec::new();
        let mut buf = Vec::new();
        let mut fed = 0;
        loop {
            match framer.frame(&buf) {
                Ok(None) => {
                    if fed == input.len() {
                        return results;
                    }
                    let n = (1 + rng.below(max_chunk)).min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                Ok(Some(len)) => {
                    buf.drain(..len);
                    results.push(Ok(len));
                }
                Err(e) => {
                    results.push(Err(e));
                    return results;
                }
            }
        }
    }

    /// xorshift64: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }

        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    // ---- requests: the valid table --------------------------------------

    /// (wire bytes, arguments, inline?)
    fn valid_requests() -> Vec<(Vec<u8>, Vec<Vec<u8>>, bool)> {
        let mut table: Vec<(Vec<u8>, Vec<Vec<u8>>, bool)> = vec![
            (b"*1\r\n$4\r\nPING\r\n".to_vec(), owned(&[b"PING"]), false),
            (
                b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n".to_vec(),
                owned(&[b"GET", b"key"]),
                false,
            ),
            (
                b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec(),
                owned(&[b"SET", b"k", b""]),
                false,
            ),
            // Data holding CRLFs is skipped by length, not scanned.
            (
                b"*2\r\n$4\r\nECHO\r\n$6\r\na\r\nb\r\n\r\n".to_vec(),
                owned(&[b"ECHO", b"a\r\nb\r\n"]),
                false,
            ),
            (
                b"*2\r\n$4\r\nECHO\r\n$4\r\n\0\xff*$\r\n".to_vec(),
                owned(&[b"ECHO", b"\0\xff*$"]),
                false,
            ),
            (b"*0\r\n".to_vec(), vec![], false),
            (b"PING\r\n".to_vec(), owned(&[b"PING"]), true),
            (b"PING\n".to_vec(), owned(&[b"PING"]), true),
            (b"GET key\r\n".to_vec(), owned(&[b"GET", b"key"]), true),
            (
                b"  GET   key  \t\r\n".to_vec(),
                owned(&[b"GET", b"key"]),
                true,
            ),
            (
                b"SET \"a b\" 'c d'\r\n".to_vec(),
                owned(&[b"SET", b"a b", b"c d"]),
                true,
            ),
            (
                b"ECHO \"\\x41\"\r\n".to_vec(),
                owned(&[b"ECHO", b"A"]),
                true,
            ),
            (
                b"ECHO \"\\xfF\\x00\"\n".to_vec(),
                owned(&[b"ECHO", b"\xff\0"]),
                true,
            ),
            // Not two hex digits: `\x` is an ordinary escape of `x`.
            (
                b"ECHO \"\\x4g\"\n".to_vec(),
                owned(&[b"ECHO", b"x4g"]),
                true,
            ),
            (
                b"ECHO \"a\\nb\"\r\n".to_vec(),
                owned(&[b"ECHO", b"a\nb"]),
                true,
            ),
            (
                b"ECHO \"\\r\\t\\b\\a\\\\\\\"\\q\"\n".to_vec(),
                owned(&[b"ECHO", b"\r\t\x08\x07\\\"q"]),
                true,
            ),
            (
                b"ECHO 'it\\'s' 'a\\nb' '\"'\n".to_vec(),
                owned(&[b"ECHO", b"it's", b"a\\nb", b"\""]),
                true,
            ),
            (
                b"ECHO ab\"c d\" x\n".to_vec(),
                owned(&[b"ECHO", b"abc d", b"x"]),
                true,
            ),
            (
                b"ECHO \"\" ''\n".to_vec(),
                owned(&[b"ECHO", b"", b""]),
                true,
            ),
            (b"\"a\"\t'b'\r\n".to_vec(), owned(&[b"a", b"b"]), true),
            (b"ECHO a\0b\n".to_vec(), owned(&[b"ECHO", b"a\0b"]), true),
            (b"GET a\rb\n".to_vec(), owned(&[b"GET", b"a", b"b"]), true),
            // \v and \f are skipped between words but kept inside one.
            (
                b"\x0bGET a\x0b \x0cb\n".to_vec(),
                owned(&[b"GET", b"a\x0b", b"b"]),
                true,
            ),
            (b"\r\n".to_vec(), vec![], true),
            (b"\n".to_vec(), vec![], true),
            (b"   \t \r\n".to_vec(), vec![], true),
        ];

        let mut ten = b"*10\r\n".to_vec();
        let mut ten_args = Vec::new();
        for i in 0..10u8 {
            let arg = vec![b'a' + i; usize::from(i)];
            ten.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            ten.extend_from_slice(&arg);
            ten.extend_from_slice(b"\r\n");
            ten_args.push(arg);
        }
        table.push((ten, ten_args, false));

        let big = vec![b'\n'; 12345];
        let mut wire = Vec::new();
        command(&mut wire, &[&b"SET"[..], b"big", &big]);
        table.push((wire, owned(&[b"SET", b"big", &big]), false));
        table
    }

    fn check_full(input: &[u8], args: &[Vec<u8>], inline: bool) {
        let req = parse_once(input)
            .unwrap_or_else(|e| panic!("{input:?}: {e}"))
            .unwrap_or_else(|| panic!("{input:?}: incomplete"));
        assert_eq!(req.consumed, input.len(), "{input:?}");
        assert_eq!(req.is_inline(), inline, "{input:?}");
        assert_eq!(req.argc(), args.len(), "{input:?}");
        assert_eq!(args_of(&req, input), args, "{input:?}");
        assert_eq!(req.arg(input, args.len()), None);
    }

    #[test]
    fn valid_requests_parse_whole() {
        for (input, args, inline) in valid_requests() {
            check_full(&input, &args, inline);
        }
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_incomplete() {
        for (input, args, inline) in valid_requests() {
            // The 12 KB request is covered by the growth test; every prefix
            // on a fresh parser would be quadratic for nothing.
            if input.len() > 1000 {
                continue;
            }
            for cut in 0..input.len() {
                assert_eq!(
                    parse_once(&input[..cut]),
                    Ok(None),
                    "{input:?} cut at {cut}"
                );
                // Split in two: a prefix, then the whole.
                let mut parser = RequestParser::default();
                assert_eq!(parser.parse(&input[..cut]), Ok(None));
                let req = parser.parse(&input).unwrap().unwrap();
                assert_eq!(req.consumed, input.len());
                assert_eq!(req.is_inline(), inline);
                assert_eq!(args_of(&req, &input), args, "{input:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn valid_request_grown_byte_by_byte_through_one_parser() {
        for (input, args, inline) in valid_requests() {
            let mut parser = RequestParser::default();
            for cut in 0..input.len() {
                assert_eq!(parser.parse(&input[..cut]), Ok(None), "{input:?} at {cut}");
            }
            let req = parser.parse(&input).unwrap().unwrap();
            assert_eq!(req, parse_once(&input).unwrap().unwrap());
            assert_eq!(req.is_inline(), inline);
            assert_eq!(args_of(&req, &input), args);
            // And the parser is fresh again.
            check_full(&input, &args, inline);
            assert_eq!(parser.parse(&input).unwrap().unwrap(), req);
        }
    }

    #[test]
    fn empty_buffer_is_incomplete() {
        assert_eq!(parse_once(b""), Ok(None));
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let mut buf = Vec::new();
        buf.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
        buf.extend_from_slice(b"PING\r\n");
        buf.extend_from_slice(b"*0\r\n");
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(b"SET 'x y' \"1\"\n");
        buf.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$2\r\n\r\n\r\n");
        buf.extend_from_slice(b"*1\r\n$4\r\nPI"); // the next one, still arriving

        let expected: Vec<(Vec<Vec<u8>>, bool)> = vec![
            (owned(&[b"GET", b"a"]), false),
            (owned(&[b"PING"]), true),
            (vec![], false),
            (vec![], true),
            (owned(&[b"SET", b"x y", b"1"]), true),
            (owned(&[b"SET", b"b", b"\r\n"]), false),
        ];

        let mut parser = RequestParser::default();
        let mut off = 0;
        for (args, inline) in expected {
            let rest = &buf[off..];
            let req = parser.parse(rest).unwrap().unwrap();
            assert_eq!(args_of(&req, rest), args);
            assert_eq!(req.is_inline(), inline);
            off += req.consumed;
        }
        assert_eq!(parser.parse(&buf[off..]), Ok(None));
        buf.extend_from_slice(b"NG\r\n");
        let rest = &buf[off..];
        let req = parser.parse(rest).unwrap().unwrap();
        assert_eq!(args_of(&req, rest), owned(&[b"PING"]));
        assert_eq!(off + req.consumed, buf.len());
    }

    // ---- requests: errors -----------------------------------------------

    fn error_requests() -> Vec<(&'static [u8], ProtocolError)> {
        use ProtocolError::*;
        vec![
            (b"*abc\r\n", InvalidMultibulkLength),
            (b"*-1\r\n", InvalidMultibulkLength),
            (b"*-5\r\n", InvalidMultibulkLength),
            (b"*+1\r\n", InvalidMultibulkLength),
            (b"* 1\r\n", InvalidMultibulkLength),
            (b"*1 \r\n", InvalidMultibulkLength),
            (b"*\r\n", InvalidMultibulkLength),
            (b"*01\r\n", InvalidMultibulkLength),
            (b"*-0\r\n", InvalidMultibulkLength),
            (b"*3\n", InvalidMultibulkLength),
            (b"*3\rX", InvalidMultibulkLength),
            (b"*99999999999999999999\r\n", InvalidMultibulkLength),
            (b"*9223372036854775808\r\n", InvalidMultibulkLength),
            (b"*1048577\r\n", InvalidMultibulkLength),
            (b"*1\r\n$-1\r\n", InvalidBulkLength),
            (b"*1\r\n$abc\r\n", InvalidBulkLength),
            (b"*1\r\n$\r\n", InvalidBulkLength),
            (b"*1\r\n$01\r\n", InvalidBulkLength),
            (b"*1\r\n$-0\r\n", InvalidBulkLength),
            (b"*1\r\n$ 3\r\n", InvalidBulkLength),
            (b"*1\r\n$+3\r\n", InvalidBulkLength),
            (b"*1\r\n$3\n", InvalidBulkLength),
            (b"*1\r\n$3\rX", InvalidBulkLength),
            (b"*1\r\n$536870913\r\n", InvalidBulkLength),
            (b"*1\r\n$18446744073709551616\r\n", InvalidBulkLength),
            (b"*1\r\n:3\r\n", ExpectedDollar(b':')),
            (b"*1\r\n\r\n", ExpectedDollar(b'\r')),
            (b"*1\r\n\n", ExpectedDollar(b'\n')),
            (b"*1\r\nGET\n", ExpectedDollar(b'G')),
            (b"*2\r\n$1\r\na\r\nfoo\r\n", ExpectedDollar(b'f')),
            (b"*1\r\n$3\r\nfooXY", ExpectedCrlf),
            (b"*1\r\n$3\r\nfoo\rX", ExpectedCrlf),
            (b"*1\r\n$3\r\nfoo\n\r", ExpectedCrlf),
            (b"*1\r\n$3\r\nfoob\r\n", ExpectedCrlf),
            (b"*2\r\n$1\r\na\r\n$0\r\nX\r\n", ExpectedCrlf),
            (b"\"foo\r\n", UnbalancedQuotes),
            (b"'foo\n", UnbalancedQuotes),
            (b"GET \"foo\"bar\n", UnbalancedQuotes),
            (b"GET 'a'b\n", UnbalancedQuotes),
            (b"GET 'a'\"b\"\n", UnbalancedQuotes),
            (b"GET \"a\\\"\n", UnbalancedQuotes),
            (b"GET \"abc\\\n", UnbalancedQuotes),
            (b"GET 'abc\\'\n", UnbalancedQuotes),
            (b"GET \"a\"\0\n", UnbalancedQuotes),
        ]
    }

    #[test]
    fn malformed_requests_are_refused_at_every_split() {
        for (input, err) in error_requests() {
            assert_eq!(parse_once(input), Err(err), "{input:?}");
            // A prefix is either still incomplete or already the same error.
            for cut in 0..input.len() {
                match parse_once(&input[..cut]) {
                    Ok(None) => {}
                    other => assert_eq!(other, Err(err), "{input:?} cut at {cut}"),
                }
            }
            let mut parser = RequestParser::default();
            let mut result = Ok(None);
            for cut in 0..=input.len() {
                result = parser.parse(&input[..cut]);
                if result.is_err() {
                    break;
                }
                assert_eq!(result, Ok(None));
            }
            assert_eq!(result, Err(err), "{input:?} grown byte by byte");
        }
    }

    #[test]
    fn parser_starts_afresh_after_an_error() {
        let mut parser = RequestParser::default();
        assert_eq!(parser.parse(b"*2\r\n$3\r\nGET\r\n"), Ok(None));
        assert_eq!(
            parser.parse(b"*2\r\n$3\r\nGET\r\n:1\r\n"),
            Err(ProtocolError::ExpectedDollar(b':'))
        );
        assert_eq!(parser.pos, 0);
        assert!(!parser.in_multibulk);
        let req = parser.parse(b"PING\r\n").unwrap().unwrap();
        assert_eq!(req.arg(b"PING\r\n", 0), Some(&b"PING"[..]));
    }

    #[test]
    fn split_inline_follows_sdssplitargs() {
        let ok: Vec<(&[u8], Vec<Vec<u8>>)> = vec![
            (b"", vec![]),
            (b" \t\x0b\x0c\r\n ", vec![]),
            (b"a", owned(&[b"a"])),
            (b"a\tb\rc\nd", owned(&[b"a", b"b", b"c", b"d"])),
            (b"\"\"", owned(&[b""])),
            (b"\"a b\"", owned(&[b"a b"])),
            (b"'a \"b\" c'", owned(&[b"a \"b\" c"])),
            (b"'a\\tb'", owned(&[b"a\\tb"])),
            (b"\"\\x41\\x4a\\x4A\"", owned(&[b"AJJ"])),
            (b"\"\\x4\"", owned(&[b"x4"])),
            (b"\"\\x\"", owned(&[b"x"])),
            (b"\"a\"\x0b", owned(&[b"a"])),
            (b"x\"y\"", owned(&[b"xy"])),
            (b"x'y z'", owned(&[b"xy z"])),
            (b"a\0b", owned(&[b"a\0b"])),
            (b"\"\0\"", owned(&[b"\0"])),
            (b"\xff \xfe", owned(&[b"\xff", b"\xfe"])),
        ];
        for (line, args) in ok {
            assert_eq!(split_inline(line), Ok(args), "{line:?}");
        }
        for line in [
            &b"\""[..],
            b"'",
            b"\"a",
            b"'a",
            b"\"a\"b",
            b"'a'b",
            b"\"\\\"",
            b"\"\\",
            b"'\\'",
            b"x\"y",
        ] {
            assert_eq!(
                split_inline(line),
                Err(ProtocolError::UnbalancedQuotes),
                "{line:?}"
            );
        }
    }

    // ---- requests: limits -----------------------------------------------

    #[test]
    fn inline_line_length_limit() {
        let mut at_limit = vec![b'A'; MAX_INLINE_LEN];
        assert_eq!(parse_once(&at_limit), Ok(None));
        at_limit.push(b'\n');
        let req = parse_once(&at_limit).unwrap().unwrap();
        assert_eq!(req.consumed, MAX_INLINE_LEN + 1);
        assert_eq!(req.argc(), 1);

        // The CR counts towards the line, as in Redis's buffer check.
        let mut crlf = vec![b'A'; MAX_INLINE_LEN - 1];
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(parse_once(&crlf).unwrap().unwrap().argc(), 1);

        let over = vec![b'A'; MAX_INLINE_LEN + 1];
        assert_eq!(parse_once(&over), Err(ProtocolError::TooBigInline));
        let mut over_with_newline = over.clone();
        over_with_newline.push(b'\n');
        assert_eq!(
            parse_once(&over_with_newline),
            Err(ProtocolError::TooBigInline)
        );
        let mut crlf_over = vec![b'A'; MAX_INLINE_LEN];
        crlf_over.extend_from_slice(b"\r\n");
        assert_eq!(parse_once(&crlf_over), Err(ProtocolError::TooBigInline));
    }

    #[test]
    fn long_inline_line_is_not_rescanned() {
        let mut parser = RequestParser::default();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.extend_from_slice(&[b'x'; 1000]);
            assert_eq!(parser.parse(&buf), Ok(None));
            assert_eq!(parser.scanned, buf.len());
        }
        buf.push(b'\n');
        assert_eq!(parser.parse(&buf).unwrap().unwrap().consumed, 10_001);
        assert_eq!(parser.scanned, 0);
    }

    #[test]
    fn multibulk_header_length_limit() {
        let mut at_limit = b"*".to_vec();
        at_limit.resize(MAX_INLINE_LEN, b'1');
        assert_eq!(parse_once(&at_limit), Ok(None));
        // A header line that ends within the limit is judged as a number.
        let mut ended = at_limit.clone();
        ended.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_once(&ended),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        let mut over = at_limit.clone();
        over.push(b'1');
        assert_eq!(parse_once(&over), Err(ProtocolError::TooBigMultibulkCount));
        over.extend_from_slice(b"\r\n");
        assert_eq!(parse_once(&over), Err(ProtocolError::TooBigMultibulkCount));
    }

    #[test]
    fn bulk_header_length_limit() {
        let mut at_limit = b"*1\r\n$".to_vec();
        at_limit.resize(4 + MAX_INLINE_LEN, b'1');
        assert_eq!(parse_once(&at_limit), Ok(None));
        let mut ended = at_limit.clone();
        ended.extend_from_slice(b"\r\n");
        assert_eq!(parse_once(&ended), Err(ProtocolError::InvalidBulkLength));
        let mut over = at_limit.clone();
        over.push(b'1');
        assert_eq!(parse_once(&over), Err(ProtocolError::TooBigBulkCount));
        // Too long is told before what the line starts with, as in Redis.
        let mut not_dollar = b"*1\r\n".to_vec();
        not_dollar.resize(4 + MAX_INLINE_LEN + 1, b'x');
        assert_eq!(parse_once(&not_dollar), Err(ProtocolError::TooBigBulkCount));
    }

    #[test]
    fn multibulk_count_limit() {
        let mut parser = RequestParser::default();
        assert_eq!(parser.parse(b"*1048576\r\n"), Ok(None));
        assert_eq!(parser.remaining, MAX_MULTIBULK_LEN);
        // The declared count is not trusted for allocation.
        assert!(parser.ranges.capacity() <= INITIAL_ARGS);
        assert_eq!(
            parse_once(b"*1048577\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn bulk_length_limit() {
        let mut parser = RequestParser::default();
        assert_eq!(parser.parse(b"*1\r\n$536870912\r\n"), Ok(None));
        assert_eq!(parser.bulk_len, Some(MAX_BULK_LEN));
        assert_eq!(
            parse_once(b"*1\r\n$536870913\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn large_bulk_is_not_rescanned() {
        let value = vec![b'\r'; 100_000];
        let mut wire = Vec::new();
        command(&mut wire, &[&b"SET"[..], b"k", &value]);
        let header_end = wire.len() - value.len() - 2;

        let mut parser = RequestParser::default();
        let mut fed = header_end;
        assert_eq!(parser.parse(&wire[..fed]), Ok(None));
        assert_eq!(parser.pos, header_end);
        assert_eq!(parser.bulk_len, Some(value.len()));
        assert_eq!(parser.ranges.len(), 2);
        while fed < wire.len() - 1 {
            fed = (fed + 4096).min(wire.len() - 1);
            assert_eq!(parser.parse(&wire[..fed]), Ok(None));
            // Still waiting at the start of the data, with nothing redone.
            assert_eq!(parser.pos, header_end);
            assert_eq!(parser.ranges.len(), 2);
        }
        let req = parser.parse(&wire).unwrap().unwrap();
        assert_eq!(req.arg(&wire, 2), Some(&value[..]));
    }

    #[test]
    fn integers_parse_like_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"7"), Some(7));
        assert_eq!(parse_int(b"-7"), Some(-7));
        assert_eq!(parse_int(b"1234567890"), Some(1_234_567_890));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"00",
            b"-0",
            b"-01",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
            b"--1",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    // ---- requests: accessors and re-encoding ------------------------------

    #[test]
    fn write_wire_passes_multibulk_through_and_reencodes_inline() {
        let multi = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n";
        let req = parse_once(multi).unwrap().unwrap();
        let mut out = b"prefix".to_vec();
        req.write_wire(multi, &mut out);
        assert_eq!(out, b"prefix*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");

        let inline = b"SET \"a b\" c\r\n";
        let req = parse_once(inline).unwrap().unwrap();
        let mut out = Vec::new();
        req.write_wire(inline, &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\na b\r\n$1\r\nc\r\n");

        let nul = b"ECHO \"\\x00\"\n";
        let req = parse_once(nul).unwrap().unwrap();
        let mut out = Vec::new();
        req.write_wire(nul, &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nECHO\r\n$1\r\n\0\r\n");
    }

    #[test]
    fn arg_with_the_wrong_buffer_does_not_panic() {
        let wire = b"*1\r\n$4\r\nPING\r\n";
        let req = parse_once(wire).unwrap().unwrap();
        assert_eq!(req.arg(b"short", 0), None);
        assert_eq!(req.arg(wire, 1), None);
        let mut out = Vec::new();
        req.write_wire(b"short", &mut out);
    }

    // ---- errors' wording ------------------------------------------------

    #[test]
    fn reasons_are_worded_as_redis_words_them() {
        use ProtocolError::*;
        let cases = [
            (InvalidMultibulkLength, "invalid multibulk length"),
            (InvalidBulkLength, "invalid bulk length"),
            (ExpectedDollar(b':'), "expected '$', got ':'"),
            (ExpectedDollar(b'\r'), "expected '$', got ' '"),
            (ExpectedDollar(b'\n'), "expected '$', got ' '"),
            (TooBigInline, "too big inline request"),
            (TooBigMultibulkCount, "too big mbulk count string"),
            (TooBigBulkCount, "too big bulk count string"),
            (UnbalancedQuotes, "unbalanced quotes in request"),
            (ExpectedCrlf, "expected CRLF after bulk argument"),
        ];
        for (err, reason) in cases {
            assert_eq!(err.reason(), reason);
            assert_eq!(err.to_string(), format!("Protocol error: {reason}"));
        }
        assert_eq!(
            FrameError("unknown reply type").to_string(),
            "malformed reply from Redis: unknown reply type"
        );
    }

    // ---- replies --------------------------------------------------------

    fn valid_replies() -> Vec<Vec<u8>> {
        let mut table: Vec<Vec<u8>> = [
            &b"+OK\r\n"[..],
            b"+\r\n",
            b"-ERR unknown command 'FOO', with args beginning with: \r\n",
            b":0\r\n",
            b":-123\r\n",
            b"$3\r\nfoo\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"$8\r\n\r\n\r\n\r\n\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$3\r\nfoo\r\n$-1\r\n",
            b"*3\r\n:1\r\n*2\r\n+a\r\n*1\r\n$1\r\nb\r\n*0\r\n",
            b"*2\r\n*2\r\n*2\r\n:1\r\n:2\r\n:3\r\n*-1\r\n",
            b"_\r\n",
            b"#t\r\n",
            b"#f\r\n",
            b",1.23\r\n",
            b",-inf\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
            b"%0\r\n",
            b"~3\r\n+a\r\n+b\r\n+c\r\n",
            b">3\r\n$7\r\nmessage\r\n$7\r\nchannel\r\n$5\r\nhello\r\n",
            // The attribute example from the RESP3 spec: the reply it
            // annotates belongs to the same frame.
            b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n\
              *2\r\n:2039123\r\n:9543892\r\n",
            b"|0\r\n+OK\r\n",
            b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n:7\r\n",
            b"*3\r\n:1\r\n|1\r\n+ttl\r\n:3600\r\n:2\r\n:3\r\n",
            b"%1\r\n*2\r\n:1\r\n:2\r\n~1\r\n%1\r\n_\r\n#t\r\n",
        ]
        .iter()
        .map(|r| r.to_vec())
        .collect();

        let mut deep = Vec::new();
        for _ in 0..50 {
            deep.extend_from_slice(b"*2\r\n:1\r\n");
        }
        deep.extend_from_slice(b"$1\r\nx\r\n");
        table.push(deep);

        let mut big = Vec::new();
        bulk(&mut big, &vec![b'\n'; 5000]);
        table.push(big);
        table
    }

    #[test]
    fn valid_replies_frame_at_every_split() {
        for reply in valid_replies() {
            assert_eq!(
                ReplyFramer::default().frame(&reply),
                Ok(Some(reply.len())),
                "{reply:?}"
            );
            for cut in 0..reply.len() {
                let mut framer = ReplyFramer::default();
                assert_eq!(
                    framer.frame(&reply[..cut]),
                    Ok(None),
                    "{reply:?} cut at {cut}"
                );
                assert_eq!(
                    framer.frame(&reply),
                    Ok(Some(reply.len())),
                    "{reply:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn valid_reply_grown_byte_by_byte_through_one_framer() {
        for reply in valid_replies() {
            let mut framer = ReplyFramer::default();
            for cut in 0..reply.len() {
                assert_eq!(framer.frame(&reply[..cut]), Ok(None), "{reply:?} at {cut}");
            }
            assert_eq!(framer.frame(&reply), Ok(Some(reply.len())));
            assert_eq!(framer.pos, 0);
            assert!(framer.stack.is_empty());
            assert_eq!(framer.frame(&reply), Ok(Some(reply.len())));
        }
    }

    #[test]
    fn pipelined_replies_frame_one_after_another() {
        let replies = valid_replies();
        let stream: Vec<u8> = replies.concat();
        let expected: Vec<_> = replies.iter().map(|r| Ok(r.len())).collect();
        assert_eq!(frame_whole(&stream), expected);
        let mut rng = Rng(0x5eed);
        for max_chunk in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(frame_chunked(&stream, &mut rng, max_chunk), expected);
        }
    }

    #[test]
    fn nested_reply_is_not_rescanned() {
        let mut framer = ReplyFramer::default();
        let reply = b"*2\r\n*2\r\n$5\r\nhello\r\n:1\r\n:2\r\n";
        assert_eq!(framer.frame(&reply[..14]), Ok(None));
        assert_eq!(framer.stack, vec![2, 2]);
        assert_eq!(framer.body, Some(5));
        assert_eq!(framer.frame(&reply[..21]), Ok(None));
        assert_eq!(framer.stack, vec![2, 1]);
        assert_eq!(framer.frame(&reply[..]), Ok(Some(reply.len())));
    }

    fn error_replies() -> Vec<(&'static [u8], &'static str)> {
        vec![
            (b"X\r\n", "unknown reply type"),
            (b"\r\n", "unknown reply type"),
            (b";4\r\nabcd\r\n", "unknown reply type"),
            (b"*2\r\n:1\r\n@\r\n", "unknown reply type"),
            (b"$-2\r\n", "invalid bulk length"),
            (b"=-1\r\n", "invalid bulk length"),
            (b"!-1\r\n", "invalid bulk length"),
            (b"$abc\r\n", "invalid length"),
            (b"$\r\n", "invalid length"),
            (b"$01\r\n", "invalid length"),
            (b"*1x\r\n", "invalid length"),
            (b"$3\r\nfooXY", "expected CRLF after bulk data"),
            (b"$3\r\nfoo\n\n", "expected CRLF after bulk data"),
            (
                b"*2\r\n$1\r\na\r\n$1\r\nbc\r\n",
                "expected CRLF after bulk data",
            ),
            (b"*-2\r\n", "invalid aggregate length"),
            (b"%-1\r\n", "invalid aggregate length"),
            (b"~-1\r\n", "invalid aggregate length"),
            (b">-1\r\n", "invalid aggregate length"),
            (b"|-1\r\n", "invalid aggregate length"),
            (b"$?\r\n", "streamed replies are not supported"),
            (b"*?\r\n", "streamed replies are not supported"),
            (b"+OK\n", "expected CRLF after reply line"),
            (b"+\n", "expected CRLF after reply line"),
            (b"*1\n", "expected CRLF after reply line"),
            (
                b"$111111111111111111111111111111111111",
                "length header too long",
            ),
        ]
    }

    #[test]
    fn malformed_replies_are_refused_at_every_split() {
        for (reply, msg) in error_replies() {
            assert_eq!(
                ReplyFramer::default().frame(reply),
                Err(FrameError(msg)),
                "{reply:?}"
            );
            for cut in 0..reply.len() {
                match ReplyFramer::default().frame(&reply[..cut]) {
                    Ok(None) => {}
                    other => assert_eq!(other, Err(FrameError(msg)), "{reply:?} cut at {cut}"),
                }
            }
            let mut framer = ReplyFramer::default();
            let mut result = Ok(None);
            for cut in 0..=reply.len() {
                result = framer.frame(&reply[..cut]);
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(FrameError(msg)), "{reply:?} grown byte by byte");
            // Starts afresh.
            assert_eq!(framer.frame(b"+OK\r\n"), Ok(Some(5)));
        }
    }

    #[test]
    fn long_reply_lines_just_wait_for_their_crlf() {
        let mut line = b"-ERR ".to_vec();
        line.resize(200_000, b'e');
        let mut framer = ReplyFramer::default();
        assert_eq!(framer.frame(&line), Ok(None));
        assert_eq!(framer.scanned, line.len());
        line.extend_from_slice(b"\r\n");
        assert_eq!(framer.frame(&line), Ok(Some(line.len())));
    }

    #[test]
    fn huge_declared_lengths_wait_without_allocating() {
        let mut framer = ReplyFramer::default();
        assert_eq!(framer.frame(b"$9223372036854775807\r\nabc"), Ok(None));
        assert_eq!(
            ReplyFramer::default().frame(b"*9223372036854775807\r\n:1\r\n"),
            Ok(None)
        );
        let mut framer = ReplyFramer::default();
        assert_eq!(framer.frame(b"*9223372036854775807\r\n"), Ok(None));
        assert_eq!(framer.stack.capacity(), 4);
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let mut at_limit = b"*1\r\n".repeat(MAX_REPLY_DEPTH);
        at_limit.extend_from_slice(b":1\r\n");
        let mut framer = ReplyFramer::default();
        assert_eq!(framer.frame(&at_limit), Ok(Some(at_limit.len())));
        // The large stack is not kept around.
        assert_eq!(framer.stack.capacity(), 0);

        let over = b"*1\r\n".repeat(MAX_REPLY_DEPTH + 1);
        assert_eq!(
            ReplyFramer::default().frame(&over),
            Err(FrameError("reply nested too deep"))
        );
    }

    // ---- encoders -------------------------------------------------------

    #[test]
    fn encoders_write_exact_bytes() {
        let mut out = Vec::new();
        simple(&mut out, b"OK");
        error(&mut out, "ERR unknown command");
        integer(&mut out, 0);
        integer(&mut out, 42);
        integer(&mut out, -1);
        integer(&mut out, i64::MAX);
        integer(&mut out, i64::MIN);
        bulk(&mut out, b"");
        bulk(&mut out, b"a\r\nb");
        null_bulk(&mut out);
        array_header(&mut out, 0);
        array_header(&mut out, 1234);
        let expected: &[u8] = b"+OK\r\n-ERR unknown command\r\n:0\r\n:42\r\n:-1\r\n\
            :9223372036854775807\r\n:-9223372036854775808\r\n$0\r\n\r\n$4\r\na\r\nb\r\n\
            $-1\r\n*0\r\n*1234\r\n";
        assert_eq!(out, expected);

        let mut out = Vec::new();
        command(&mut out, &["SET", "k", "v"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        let mut out = Vec::new();
        command::<&[u8]>(&mut out, &[]);
        assert_eq!(out, b"*0\r\n");
    }

    #[test]
    fn line_encoders_keep_to_one_line() {
        let mut out = Vec::new();
        simple(&mut out, b"a\r\nb");
        error(&mut out, "ERR bad\nthing\r");
        assert_eq!(out, b"+a  b\r\n-ERR bad thing \r\n");
        assert_eq!(frame_whole(&out), vec![Ok(7), Ok(17)]);
    }

    #[test]
    fn encoded_replies_frame_and_commands_parse_back() {
        let mut out = Vec::new();
        array_header(&mut out, 5);
        simple(&mut out, b"PONG");
        error(&mut out, "ERR x");
        integer(&mut out, -7);
        bulk(&mut out, b"\r\n");
        null_bulk(&mut out);
        assert_eq!(ReplyFramer::default().frame(&out), Ok(Some(out.len())));

        let args = owned(&[b"SET", b"", b"\0\r\n\xff", b"*$"]);
        let mut wire = Vec::new();
        command(&mut wire, &args);
        let req = parse_once(&wire).unwrap().unwrap();
        assert_eq!(req.consumed, wire.len());
        assert_eq!(args_of(&req, &wire), args);
    }

    // ---- property-like: random and mutated input ------------------------

    /// An inline rendering of `args` that `split_inline` must undo.
    fn quote_inline(args: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        let mut line = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(rng.pick(&[&b" "[..], b"\t", b"  ", b" \x0b "]));
            }
            let bare = !arg.is_empty()
                && arg
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.*$".contains(b));
            let single_ok = arg.iter().all(|&b| b != b'\'' && b != b'\n' && b != b'\\');
            if bare && rng.below(2) == 0 {
                line.extend_from_slice(arg);
            } else if single_ok && rng.below(2) == 0 {
                line.push(b'\'');
                line.extend_from_slice(arg);
                line.push(b'\'');
            } else {
                line.push(b'"');
                for &b in arg {
                    match b {
                        b'"' | b'\\' => line.extend_from_slice(&[b'\\', b]),
                        b'\n' => line.extend_from_slice(b"\\n"),
                        b'\r' => line.extend_from_slice(b"\\r"),
                        0x20..=0x7e => line.push(b),
                        _ => line.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                    }
                }
                line.push(b'"');
            }
        }
        line.extend_from_slice(rng.pick(&[&b"\r\n"[..], b"\n", b" \r\n"]));
        line
    }

    fn random_args(rng: &mut Rng) -> Vec<Vec<u8>> {
        let words: [&[u8]; 8] = [
            b"GET", b"SET", b"key:1", b"", b"a b", b"it's", b"\"q\"", b"x",
        ];
        (0..rng.below(6))
            .map(|_| {
                if rng.below(3) == 0 {
                    rng.bytes(40)
                } else {
                    rng.pick(&words).to_vec()
                }
            })
            .collect()
    }

    fn random_reply(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) {
        let kinds = if depth >= 4 { 11 } else { 17 };
        match rng.below(kinds) {
            0 => simple(out, b"OK"),
            1 => error(out, "ERR something"),
            2 => integer(out, rng.next() as i64),
            3 => bulk(out, &rng.bytes(30)),
            4 => null_bulk(out),
            5 => out.extend_from_slice(b"_\r\n"),
            6 => out.extend_from_slice(b"#f\r\n"),
            7 => out.extend_from_slice(b",-1.5e10\r\n"),
            8 => out.extend_from_slice(b"(12345678901234567890123\r\n"),
            9 => out.extend_from_slice(b"=8\r\ntxt:a\r\nb\r\n"),
            10 => out.extend_from_slice(b"!3\r\nERR\r\n"),
            11 => out.extend_from_slice(b"*-1\r\n"),
            kind => {
                let n = rng.below(4);
                let (head, elements) = match kind {
                    12 => (b'*', n),
                    13 => (b'~', n),
                    14 => (b'>', n),
                    15 => (b'%', 2 * n),
                    _ => (b'|', 2 * n + 1),
                };
                length_header(out, head, n);
                for _ in 0..elements {
                    random_reply(rng, depth + 1, out);
                }
            }
        }
    }

    fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
        const INTERESTING: &[u8] = b"*$\r\n-0123456789 \"'\\x+:%|~>_#,(=!?\0\xff";
        let mut out = input.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = if out.is_empty() {
                0
            } else {
                rng.below(out.len())
            };
            let byte = if rng.below(2) == 0 {
                rng.pick(INTERESTING)
            } else {
                rng.next() as u8
            };
            match rng.below(5) {
                0 if !out.is_empty() => out[at] = byte,
                1 if !out.is_empty() => {
                    out.remove(at);
                }
                2 => out.insert(at, byte),
                3 => out.truncate(at),
                _ => {
                    let end = (at + rng.below(8)).min(out.len());
                    let piece = out[at..end].to_vec();
                    out.splice(at..at, piece);
                }
            }
        }
        out
    }

    fn random_noise(rng: &mut Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"3", b"-1", b"foo", b" ", b"\"",
            b"'", b"\\", b"\\x4", b"A", b"%", b"|", b"~", b">", b"+", b":", b"_", b"#t", b",",
            b"(", b"=", b"!", b"?", b"\0", b"\xff",
        ];
        let mut out = Vec::new();
        for _ in 0..rng.below(40) {
            if rng.below(8) == 0 {
                out.push(rng.next() as u8);
            } else {
                out.extend_from_slice(rng.pick(PIECES));
            }
        }
        out
    }

    fn assert_request_splits_agree(input: &[u8], rng: &mut Rng) -> Vec<Parsed> {
        let whole = parse_whole(input);
        for max_chunk in [1, 3, 16] {
            assert_eq!(
                parse_chunked(input, rng, max_chunk),
                whole,
                "{input:?} in pieces of up to {max_chunk}"
            );
        }
        whole
    }

    fn assert_reply_splits_agree(input: &[u8], rng: &mut Rng) -> Vec<Result<usize, FrameError>> {
        let whole = frame_whole(input);
        for max_chunk in [1, 3, 16] {
            assert_eq!(
                frame_chunked(input, rng, max_chunk),
                whole,
                "{input:?} in pieces of up to {max_chunk}"
            );
        }
        whole
    }

    #[test]
    fn random_valid_requests_parse_the_same_however_split() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..1500 {
            let args = random_args(&mut rng);
            let mut wire = Vec::new();
            command(&mut wire, &args);
            let parsed = assert_request_splits_agree(&wire, &mut rng);
            assert_eq!(
                parsed,
                vec![Parsed::Req {
                    consumed: wire.len(),
                    inline: false,
                    args: args.clone()
                }]
            );

            let line = quote_inline(&args, &mut rng);
            let parsed = assert_request_splits_agree(&line, &mut rng);
            assert_eq!(
                parsed,
                vec![Parsed::Req {
                    consumed: line.len(),
                    inline: true,
                    args: args.clone()
                }],
                "{line:?}"
            );

            // Both, pipelined.
            let mut both = wire.clone();
            both.extend_from_slice(&line);
            assert_eq!(assert_request_splits_agree(&both, &mut rng).len(), 2);
        }
    }

    #[test]
    fn random_and_mutated_requests_never_panic_and_agree_when_split() {
        let mut rng = Rng(0x0dd_ba11_cafe_f00d);
        let table: Vec<Vec<u8>> = valid_requests()
            .into_iter()
            .map(|(wire, _, _)| wire)
            .filter(|wire| wire.len() < 1000)
            .collect();
        let (mut incomplete, mut complete, mut refused) = (0, 0, 0);
        for _ in 0..3000 {
            let input = match rng.below(3) {
                0 => random_noise(&mut rng),
                1 => rng.bytes(64),
                _ => {
                    let base = &table[rng.below(table.len())];
                    mutate(base, &mut rng)
                }
            };
            match assert_request_splits_agree(&input, &mut rng).last() {
                None => incomplete += 1,
                Some(Parsed::Req { .. }) => complete += 1,
                Some(Parsed::Err(_)) => refused += 1,
            }
            let _ = split_inline(&input);
        }
        // The generators must keep reaching all three outcomes.
        assert!(incomplete > 300 && complete > 300 && refused > 300);
    }

    #[test]
    fn random_valid_replies_frame_the_same_however_split() {
        let mut rng = Rng(0xfeed_face_dead_beef);
        for _ in 0..1500 {
            let mut reply = Vec::new();
            random_reply(&mut rng, 0, &mut reply);
            assert_eq!(
                assert_reply_splits_agree(&reply, &mut rng),
                vec![Ok(reply.len())],
                "{reply:?}"
            );
        }
    }

    #[test]
    fn random_and_mutated_replies_never_panic_and_agree_when_split() {
        let mut rng = Rng(0x5151_7e57_0000_0001);
        let table = valid_replies();
        let (mut incomplete, mut complete, mut refused) = (0, 0, 0);
        for _ in 0..3000 {
            let input = match rng.below(4) {
                0 => random_noise(&mut rng),
                1 => rng.bytes(64),
                2 => {
                    let mut reply = Vec::new();
                    random_reply(&mut rng, 0, &mut reply);
                    mutate(&reply, &mut rng)
                }
                _ => {
                    let base = &table[rng.below(table.len())];
                    mutate(base, &mut rng)
                }
            };
            match assert_reply_splits_agree(&input, &mut rng).last() {
                None => incomplete += 1,
                Some(Ok(_)) => complete += 1,
                Some(Err(_)) => refused += 1,
            }
        }
        assert!(incomplete > 300 && complete > 200 && refused > 300);
    }

    #[test]
    fn values_decode() {
        let frame = b"*4\r\n+OK\r\n:-3\r\n$-1\r\n*2\r\n$3\r\nabc\r\n-ERR no\r\n";
        assert_eq!(
            parse_value(frame),
            Ok(Value::Array(vec![
                Value::Simple(b"OK".to_vec()),
                Value::Integer(-3),
                Value::Null,
                Value::Array(vec![
                    Value::Bulk(b"abc".to_vec()),
                    Value::Error(b"ERR no".to_vec())
                ]),
            ]))
        );
        assert_eq!(parse_value(b"*-1\r\n"), Ok(Value::Null));
        assert_eq!(parse_value(b"_\r\n"), Ok(Value::Null));
        assert_eq!(
            parse_value(b"%1\r\n+a\r\n:1\r\n"),
            Ok(Value::Array(vec![
                Value::Simple(b"a".to_vec()),
                Value::Integer(1)
            ]))
        );
        assert!(parse_value(b"*2\r\n:1\r\n").is_err());
        assert!(parse_value(b"$5\r\nab\r\n").is_err());
        assert!(parse_value(b":1\r\n:2\r\n").is_err());
        assert!(parse_value(b"*99999999999\r\n").is_err());
        let deep = "*1\r\n".repeat(100) + ":1\r\n";
        assert!(parse_value(deep.as_bytes()).is_err());
    }
}
