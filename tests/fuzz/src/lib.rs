//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target reads its input the same way: the first byte picks how the
//! rest is cut into reads (see [`Chunks`]), and the rest is the byte stream
//! itself, so libFuzzer mutates the split points and the bytes together.

use sidecache::resp::{
    self, FrameError, ProtocolError, ReplyFramer, Request, RequestParser, Value,
};

/// Splits an input into the control byte and the stream.
pub fn split_input(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&control, stream) = data.split_first()?;
    Some((control, stream))
}

/// Makes a stream long enough to reach the 64 KB line limits, which inputs
/// of libFuzzer's usual few KB never do: the bytes up to the first NUL, then
/// the byte before it repeated 65,520 to 65,551 times (the byte after it
/// picks the count), then the rest after the NUL. Without a NUL, unchanged.
pub fn stretch(stream: &[u8]) -> Vec<u8> {
    let Some(nul) = stream.iter().position(|&b| b == 0) else {
        return stream.to_vec();
    };
    let (head, tail) = (&stream[..nul], &stream[nul + 1..]);
    let fill = head.last().copied().unwrap_or(b'a');
    let count = 65_520 + usize::from(tail.first().copied().unwrap_or(0) % 32);
    let mut out = Vec::with_capacity(head.len() + count + tail.len());
    out.extend_from_slice(head);
    out.resize(head.len() + count, fill);
    out.extend_from_slice(tail);
    out
}

/// Read sizes derived from one control byte: its low bits choose the largest
/// read (1 byte at a time up to 4 KB), and it seeds a xorshift32 for the sizes.
pub struct Chunks {
    state: u32,
    max: usize,
}

impl Chunks {
    pub fn new(control: u8) -> Self {
        const MAX: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, 4096];
        Self {
            state: (u32::from(control) + 1).wrapping_mul(0x9e37_79b9),
            max: MAX[usize::from(control % 8)],
        }
    }

    /// Size of the next read, at least 1.
    pub fn next_len(&mut self) -> usize {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        1 + (x as usize) % self.max
    }
}

/// What one `RequestParser::parse` call that was not `Ok(None)` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Req {
        consumed: usize,
        inline: bool,
        args: Vec<Vec<u8>>,
    },
    Err(ProtocolError),
}

/// Checks what must hold of every complete request parsed from `buf`, and
/// returns its arguments.
pub fn check_request(req: &Request, buf: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        req.consumed > 0 && req.consumed <= buf.len(),
        "consumed {} of {}",
        req.consumed,
        buf.len()
    );
    let base = buf.as_ptr() as usize;
    let args: Vec<Vec<u8>> = (0..req.argc())
        .map(|i| {
            let arg = req.arg(buf, i).expect("argument in range");
            if !req.is_inline() {
                // A multibulk's arguments are slices of the request itself.
                let start = (arg.as_ptr() as usize)
                    .checked_sub(base)
                    .expect("argument inside the buffer");
                assert!(
                    start + arg.len() <= req.consumed,
                    "argument {i} at {start}+{} past consumed {}",
                    arg.len(),
                    req.consumed
                );
            }
            arg.to_vec()
        })
        .collect();
    assert_eq!(req.arg(buf, req.argc()), None);
    assert_eq!(req.arg(buf, usize::MAX), None);

    // What goes to Redis is a multibulk that parses back to the same arguments.
    let mut wire = Vec::new();
    req.write_wire(buf, &mut wire);
    if !req.is_inline() {
        assert_eq!(wire, &buf[..req.consumed]);
    }
    let again = RequestParser::default()
        .parse(&wire)
        .unwrap_or_else(|e| panic!("write_wire output {wire:?} refused: {e}"))
        .unwrap_or_else(|| panic!("write_wire output {wire:?} incomplete"));
    assert_eq!(again.consumed, wire.len());
    assert!(!again.is_inline());
    assert_eq!(args_of(&again, &wire), args);
    args
}

pub fn args_of(req: &Request, buf: &[u8]) -> Vec<Vec<u8>> {
    (0..req.argc())
        .map(|i| req.arg(buf, i).expect("argument in range").to_vec())
        .collect()
}

pub fn outcome(result: Result<Option<Request>, ProtocolError>, buf: &[u8]) -> Option<Parsed> {
    match result {
        Ok(None) => None,
        Ok(Some(req)) => {
            let args = check_request(&req, buf);
            Some(Parsed::Req {
                consumed: req.consumed,
                inline: req.is_inline(),
                args,
            })
        }
        Err(e) => Some(Parsed::Err(e)),
    }
}

/// Every request in `input` handed over whole, until one is incomplete or refused.
pub fn parse_whole(input: &[u8]) -> Vec<Parsed> {
    let mut parser = RequestParser::default();
    let mut results = Vec::new();
    let mut rest = input;
    loop {
        match outcome(parser.parse(rest), rest) {
            None => return results,
            Some(Parsed::Err(e)) => {
                results.push(Parsed::Err(e));
                return results;
            }
            Some(req @ Parsed::Req { consumed, .. }) => {
                rest = &rest[consumed..];
                results.push(req);
            }
        }
    }
}

/// The same through one parser, `input` arriving in reads sized by `chunks`
/// and the buffer drained as requests complete, as `client.rs` does.
pub fn parse_chunked(input: &[u8], chunks: &mut Chunks) -> Vec<Parsed> {
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
                let n = chunks.next_len().min(input.len() - fed);
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

/// Every reply in `input` handed over whole, until one is incomplete or refused.
pub fn frame_whole(input: &[u8]) -> Vec<Result<usize, FrameError>> {
    let mut framer = ReplyFramer::default();
    let mut results = Vec::new();
    let mut rest = input;
    loop {
        match framer.frame(rest) {
            Ok(None) => return results,
            Ok(Some(len)) => {
                assert!(
                    len > 0 && len <= rest.len(),
                    "framed {len} of {}",
                    rest.len()
                );
                rest = &rest[len..];
                results.push(Ok(len));
            }
            Err(e) => {
                results.push(Err(e));
                return results;
            }
        }
    }
}

/// The same through one framer, `input` arriving in reads sized by `chunks`.
pub fn frame_chunked(input: &[u8], chunks: &mut Chunks) -> Vec<Result<usize, FrameError>> {
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
                let n = chunks.next_len().min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(Some(len)) => {
                assert!(len > 0 && len <= buf.len(), "framed {len} of {}", buf.len());
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

/// A canonical RESP encoding of a decoded value: `+`, `-`, `:`, `$`, `_`, `*`.
pub fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Simple(s) => {
            out.push(b'+');
            out.extend_from_slice(s);
            out.extend_from_slice(b"\r\n");
        }
        Value::Error(s) => {
            out.push(b'-');
            out.extend_from_slice(s);
            out.extend_from_slice(b"\r\n");
        }
        Value::Integer(n) => resp::integer(out, *n),
        Value::Bulk(b) => resp::bulk(out, b),
        Value::Null => out.extend_from_slice(b"_\r\n"),
        Value::Array(items) => {
            resp::array_header(out, items.len());
            for item in items {
                encode_value(item, out);
            }
        }
    }
}

/// A value that `parse_value` decoded must encode to a reply that the framer
/// frames whole and that decodes back to the same value.
pub fn check_value_round_trip(value: &Value) {
    let mut encoded = Vec::new();
    encode_value(value, &mut encoded);
    assert_eq!(
        ReplyFramer::default().frame(&encoded),
        Ok(Some(encoded.len())),
        "re-encoded {value:?} as {encoded:?}"
    );
    assert_eq!(
        resp::parse_value(&encoded).as_ref(),
        Ok(value),
        "re-encoded as {encoded:?}"
    );
}
