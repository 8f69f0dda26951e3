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
        todo!()
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
        todo!()
    }

    /// Argument `i` (0 is the command name), given the buffer this request was parsed from.
    pub fn arg<'a>(&'a self, buf: &'a [u8], i: usize) -> Option<&'a [u8]> {
        todo!()
    }

    /// Whether it arrived as an inline command.
    pub fn is_inline(&self) -> bool {
        todo!()
    }

    /// Appends the request as it goes to Redis: a multibulk exactly as it
    /// arrived; an inline command re-encoded as a multibulk (an inline line
    /// with a NUL byte would stall Redis's parser on a shared connection).
    pub fn write_wire(&self, buf: &[u8], out: &mut Vec<u8>) {
        todo!()
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
pub struct RequestParser {}

impl RequestParser {
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        todo!()
    }
}

/// Splits an inline line as Redis's `sdssplitargs` does.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    todo!()
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
pub struct ReplyFramer {}

impl ReplyFramer {
    pub fn frame(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        todo!()
    }
}

/// `+<s>\r\n`
pub fn simple(out: &mut Vec<u8>, s: &[u8]) {
    todo!()
}

/// `-<msg>\r\n`; `msg` carries its own code, e.g. `ERR unknown command`.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    todo!()
}

/// `:<n>\r\n`
pub fn integer(out: &mut Vec<u8>, n: i64) {
    todo!()
}

/// `$<len>\r\n<b>\r\n`
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    todo!()
}

/// `$-1\r\n`
pub fn null_bulk(out: &mut Vec<u8>) {
    todo!()
}

/// `*<n>\r\n`
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    todo!()
}

/// A request as a multibulk of the given arguments.
pub fn command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    todo!()
}
