//! Property tests for `sidecache::resp`: encode random requests and replies,
//! feed them to the parser and the framer cut at random points, and check that
//! what comes out is what went in. Also: garbage never panics and never makes
//! the parser allocate by what the input declares rather than by what it holds.
//!
//! Deterministic: a fixed-seed xorshift, so a failure reproduces; each test
//! names its seed and iteration. The fuzz targets in tests/fuzz check the same
//! properties on inputs libFuzzer finds (scripts/fuzz); inputs that crashed
//! them are kept at the bottom as regression tests.

use sidecache::resp::{
    self, parse_value, split_inline, FrameError, Protocol, ProtocolError, ReplyFramer, Request,
    RequestParser, Value,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

// ---- allocation meter ---------------------------------------------------

/// The system allocator, counting the bytes live on each thread, so a test
/// can measure what one call allocated at its peak. Per thread, because the
/// test harness runs tests on several threads at once.
struct Meter;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to `System` unchanged; the counting touches
// only const-initialized thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns what it returned and the most bytes it had allocated
/// at once (on this thread), including what it returned.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

// ---- randomness ---------------------------------------------------------

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        // Half the time one of the bytes the protocol gives a meaning to.
        const SPECIAL: &[u8] = b"\r\n\0\"' \\*$\t\x0b\x0cx:+-_#,(=!%|~>?0123456789\x7f\x80\xff";
        if self.chance(2) {
            self.pick(SPECIAL)
        } else {
            self.next() as u8
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// Fewer than `max` bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }

    /// `len` bytes, cheaply: a random block repeated, with a few bytes changed.
    fn big_bytes(&mut self, len: usize) -> Vec<u8> {
        let block = self.bytes(251);
        let mut out: Vec<u8> = block.iter().copied().cycle().take(len).collect();
        for _ in 0..64 {
            let at = self.below(len.max(1));
            if let Some(b) = out.get_mut(at) {
                *b = self.byte();
            }
        }
        out
    }

    /// Sizes to cut `len` bytes into reads: one at a time up to all at once.
    fn cuts(&mut self, len: usize) -> Vec<usize> {
        let max = loop {
            let max = self.pick(&[1, 2, 5, 17, 100, 1000, 16_384, usize::MAX]);
            // A byte at a time through a megabyte takes too long for a unit test.
            if max >= 17 || len <= 20_000 {
                break max;
            }
        };
        let mut sizes = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = if max == usize::MAX {
                left
            } else {
                (1 + self.below(max)).min(left)
            };
            sizes.push(n);
            left -= n;
        }
        sizes
    }
}

// ---- requests: feeding the parser ---------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    Req {
        consumed: usize,
        inline: bool,
        args: Vec<Vec<u8>>,
    },
    Err(ProtocolError),
}

/// Checks what must hold of any complete request parsed from `buf`: it
/// consumed 1..=len bytes, a multibulk's arguments lie within them, and
/// `write_wire` gives a multibulk that parses back to the same arguments.
fn check_request(req: &Request, buf: &[u8]) -> Parsed {
    assert!(req.consumed > 0 && req.consumed <= buf.len());
    let base = buf.as_ptr() as usize;
    let args: Vec<Vec<u8>> = (0..req.argc())
        .map(|i| {
            let arg = req.arg(buf, i).expect("argument in range");
            if !req.is_inline() {
                let start = arg.as_ptr() as usize - base;
                assert!(start + arg.len() <= req.consumed);
            }
            arg.to_vec()
        })
        .collect();
    assert_eq!(req.arg(buf, req.argc()), None);

    let mut wire = Vec::new();
    req.write_wire(buf, &mut wire);
    if req.is_inline() {
        let mut expected = Vec::new();
        resp::command(&mut expected, &args);
        assert_eq!(wire, expected);
    } else {
        assert_eq!(wire, &buf[..req.consumed]);
    }
    let again = RequestParser::default()
        .parse(&wire)
        .expect("write_wire output parses")
        .expect("write_wire output is complete");
    assert_eq!(again.consumed, wire.len());
    assert!(!again.is_inline());
    assert_eq!(again.argc(), args.len());
    for (i, arg) in args.iter().enumerate() {
        assert_eq!(again.arg(&wire, i), Some(&arg[..]));
    }

    Parsed::Req {
        consumed: req.consumed,
        inline: req.is_inline(),
        args,
    }
}

fn outcome(result: Result<Option<Request>, ProtocolError>, buf: &[u8]) -> Option<Parsed> {
    match result {
        Ok(None) => None,
        Ok(Some(req)) => Some(check_request(&req, buf)),
        Err(e) => Some(Parsed::Err(e)),
    }
}

/// Parses `input` through one parser, arriving in reads of the given sizes,
/// the buffer drained as requests complete: every request until the input
/// runs out or one is refused.
fn parse_in_reads(input: &[u8], reads: &[usize]) -> Vec<Parsed> {
    let mut parser = RequestParser::default();
    let mut results = Vec::new();
    let mut buf = Vec::new();
    let mut fed = 0;
    let mut reads = reads.iter();
    loop {
        match outcome(parser.parse(&buf), &buf) {
            None => {
                let Some(&n) = reads.next() else {
                    assert_eq!(fed, input.len());
                    return results;
                };
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

fn parse_whole(input: &[u8]) -> Vec<Parsed> {
    let mut reads = vec![input.len()];
    reads.retain(|&n| n > 0);
    parse_in_reads(input, &reads)
}

// ---- requests: generators -----------------------------------------------

/// An argument: empty, protocol bytes only, mixed, binary, or large.
fn random_arg(rng: &mut Rng, allow_big: bool) -> Vec<u8> {
    match rng.below(12) {
        0 => Vec::new(),
        1 => (0..rng.below(12))
            .map(|_| rng.pick(b"\r\n\0\"'\\ \t"))
            .collect(),
        2..=6 => {
            let len = rng.below(40);
            rng.bytes(len)
        }
        7 => {
            let len = 1 + rng.below(12);
            (0..len).map(|_| rng.pick(b"abcXYZ019:_-.")).collect()
        }
        8 | 9 => (0..rng.below(400)).map(|_| rng.next() as u8).collect(),
        _ if allow_big && rng.chance(8) => {
            let len = 64 * 1024 + rng.below(1024 * 1024);
            rng.big_bytes(len)
        }
        _ => {
            let len = 1000 + rng.below(8000);
            rng.big_bytes(len)
        }
    }
}

fn random_args(rng: &mut Rng, allow_big: bool) -> Vec<Vec<u8>> {
    let n = if rng.chance(10) { 0 } else { 1 + rng.below(7) };
    (0..n).map(|_| random_arg(rng, allow_big)).collect()
}

/// The whitespace `sdssplitargs` skips, minus LF (which ends the line).
const SKIPPED: &[u8] = b" \t\r\x0b\x0c";

fn separator(rng: &mut Rng, first: bool) -> Vec<u8> {
    let mut sep = Vec::new();
    if !first {
        // Only these end a bare word; \v and \f would join it.
        sep.push(rng.pick(b" \t\r"));
    }
    for _ in 0..rng.below(3) {
        sep.push(rng.pick(SKIPPED));
    }
    sep
}

fn is_space(b: u8) -> bool {
    SKIPPED.contains(&b) || b == b'\n'
}

/// Writes `arg` the way `sdssplitargs` reads it back: bare, in single quotes,
/// or in double quotes with every escape it knows, each chosen at random
/// among those that fit.
fn quote_arg(arg: &[u8], rng: &mut Rng, line: &mut Vec<u8>) {
    let bare_ok = arg.first().is_some_and(|&b| !is_space(b) && b != b'*')
        && !arg
            .iter()
            .any(|&b| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b'"' | b'\''));
    let single_ok = !arg.contains(&b'\n') && arg.last() != Some(&b'\\');
    match rng.below(3) {
        0 if bare_ok => line.extend_from_slice(arg),
        1 if single_ok => {
            line.push(b'\'');
            for &b in arg {
                if b == b'\'' {
                    line.extend_from_slice(b"\\'");
                } else {
                    line.push(b);
                }
            }
            line.push(b'\'');
        }
        _ => {
            line.push(b'"');
            for &b in arg {
                let hex = |line: &mut Vec<u8>, upper: bool| {
                    let s = if upper {
                        format!("\\x{b:02X}")
                    } else {
                        format!("\\x{b:02x}")
                    };
                    line.extend_from_slice(s.as_bytes());
                };
                let named = match b {
                    b'\n' => Some(b'n'),
                    b'\r' => Some(b'r'),
                    b'\t' => Some(b't'),
                    0x08 => Some(b'b'),
                    0x07 => Some(b'a'),
                    b'"' | b'\\' => Some(b),
                    _ => None,
                };
                let must_escape = matches!(b, b'\n' | b'"' | b'\\');
                match rng.below(4) {
                    0 => hex(line, rng.chance(2)),
                    1 if named.is_some() => line.extend_from_slice(&[b'\\', named.unwrap_or(b)]),
                    // `\q` is `q`, except where the letter means something.
                    2 if !b"nrtbax\n".contains(&b) => line.extend_from_slice(&[b'\\', b]),
                    _ if must_escape => hex(line, false),
                    _ => line.push(b),
                }
            }
            line.push(b'"');
        }
    }
}

/// An inline command line for `args`, ending in LF or CRLF.
fn inline_line(args: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut line = separator(rng, true);
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            line.extend(separator(rng, false));
        }
        quote_arg(arg, rng, &mut line);
    }
    if rng.chance(3) {
        line.extend(separator(rng, false));
    }
    line.extend_from_slice(if rng.chance(2) { b"\r\n" } else { b"\n" });
    line
}

// ---- requests: properties -----------------------------------------------

#[test]
fn multibulk_commands_round_trip_at_random_splits() {
    let mut rng = Rng(0x6d75_6c74_6962_756c);
    let mut big_seen = 0;
    for iteration in 0..400 {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let args = random_args(&mut rng, iteration % 10 == 0);
            big_seen += args.iter().filter(|a| a.len() > 64 * 1024).count();
            let start = wire.len();
            resp::command(&mut wire, &args);
            expected.push(Parsed::Req {
                consumed: wire.len() - start,
                inline: false,
                args,
            });
        }
        assert_eq!(parse_whole(&wire), expected, "iteration {iteration} whole");
        for _ in 0..3 {
            let reads = rng.cuts(wire.len());
            assert_eq!(
                parse_in_reads(&wire, &reads),
                expected,
                "iteration {iteration}, reads {reads:?}"
            );
        }
    }
    assert!(big_seen > 0, "no large argument was generated");
}

#[test]
fn inline_lines_round_trip_at_random_splits() {
    let mut rng = Rng(0x696e_6c69_6e65_0001);
    for iteration in 0..2000 {
        let args: Vec<Vec<u8>> = random_args(&mut rng, false)
            .into_iter()
            .map(|mut a| {
                a.truncate(300);
                a
            })
            .collect();
        let line = inline_line(&args, &mut rng);

        let content = line.strip_suffix(b"\n").expect("ends in LF");
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        assert_eq!(
            split_inline(content),
            Ok(args.clone()),
            "iteration {iteration}: {line:?}"
        );

        let expected = vec![Parsed::Req {
            consumed: line.len(),
            inline: true,
            args: args.clone(),
        }];
        assert_eq!(
            parse_whole(&line),
            expected,
            "iteration {iteration}: {line:?}"
        );
        let reads = rng.cuts(line.len());
        assert_eq!(
            parse_in_reads(&line, &reads),
            expected,
            "iteration {iteration}: {line:?} in reads {reads:?}"
        );

        // Pipelined after and before a multibulk.
        let mut both = Vec::new();
        resp::command(&mut both, &args);
        let multibulk_len = both.len();
        both.extend_from_slice(&line);
        resp::command(&mut both, &args);
        let reads = rng.cuts(both.len());
        let parsed = parse_in_reads(&both, &reads);
        let consumed: Vec<usize> = parsed
            .iter()
            .map(|p| match p {
                Parsed::Req {
                    consumed, args: a, ..
                } if *a == args => *consumed,
                other => panic!("iteration {iteration}: {other:?}"),
            })
            .collect();
        assert_eq!(consumed, [multibulk_len, line.len(), multibulk_len]);
    }
}

// ---- replies: generators ------------------------------------------------

/// A random reply of any RESP2 or RESP3 type, and what `parse_value` makes
/// of it: `None` when it holds an attribute, which `parse_value` does not decode.
fn random_reply(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) -> Option<Value> {
    // One-line text: anything but LF. A CR is fine, even last.
    let line_text = |rng: &mut Rng| -> Vec<u8> {
        let len = rng.below(30);
        rng.bytes(len).into_iter().filter(|&b| b != b'\n').collect()
    };
    let aggregates = depth < 5 && rng.chance(depth + 1);
    let kind = if aggregates {
        rng.below(26)
    } else {
        rng.below(17)
    };
    match kind {
        0 => {
            let text = line_text(rng);
            out.push(b'+');
            out.extend_from_slice(&text);
            out.extend_from_slice(b"\r\n");
            Some(Value::Simple(text))
        }
        1 => {
            // The library's encoder blanks CR and LF.
            let text = rng.some_bytes(30);
            resp::simple(out, &text);
            let blanked = text
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                .collect();
            Some(Value::Simple(blanked))
        }
        2 => {
            let mut text = b"ERR ".to_vec();
            text.extend(line_text(rng));
            out.push(b'-');
            out.extend_from_slice(&text);
            out.extend_from_slice(b"\r\n");
            Some(Value::Error(text))
        }
        3 => {
            let n = match rng.below(4) {
                0 => rng.pick(&[0, 1, -1, i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1]),
                1 => rng.below(1000) as i64 - 500,
                _ => rng.next() as i64,
            };
            if rng.chance(2) {
                resp::integer(out, n);
            } else {
                out.extend_from_slice(format!(":{n}\r\n").as_bytes());
            }
            Some(Value::Integer(n))
        }
        4 | 5 => {
            let data = if rng.chance(40) {
                let len = 20_000 + rng.below(200_000);
                rng.big_bytes(len)
            } else {
                let len = rng.below(50);
                rng.bytes(len)
            };
            if rng.chance(2) {
                resp::bulk(out, &data);
            } else {
                out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            Some(Value::Bulk(data))
        }
        6 => {
            match rng.below(4) {
                0 => resp::null_bulk(out),
                1 => resp::null(out, Protocol::Resp2),
                2 => resp::null(out, Protocol::Resp3),
                _ => out.extend_from_slice(b"*-1\r\n"),
            }
            Some(Value::Null)
        }
        7 => {
            let b = rng.pick(b"tf");
            out.extend_from_slice(&[b'#', b, b'\r', b'\n']);
            Some(Value::Simple(vec![b]))
        }
        8 => {
            let text = match rng.below(3) {
                0 => rng
                    .pick(&["inf", "-inf", "nan", "0", "-0", "1.5", "-1.5e10", "1e-300"])
                    .to_owned(),
                1 => format!("{}", f64::from_bits(rng.next())),
                _ => format!("{:e}", rng.next() as f64 / 7.0),
            };
            out.extend_from_slice(format!(",{text}\r\n").as_bytes());
            Some(Value::Simple(text.into_bytes()))
        }
        9 => {
            let mut digits: Vec<u8> = (0..1 + rng.below(60))
                .map(|_| b'0' + rng.below(10) as u8)
                .collect();
            if rng.chance(2) {
                digits.insert(0, b'-');
            }
            out.push(b'(');
            out.extend_from_slice(&digits);
            out.extend_from_slice(b"\r\n");
            Some(Value::Simple(digits))
        }
        10 | 11 => {
            // Verbatim string: the format and a colon are part of the data.
            let mut data = rng.pick(&[&b"txt:"[..], b"mkd:"]).to_vec();
            data.extend(rng.some_bytes(40));
            out.extend_from_slice(format!("={}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            Some(Value::Bulk(data))
        }
        12 => {
            // Blob error.
            let mut data = b"SYNTAX ".to_vec();
            data.extend(rng.some_bytes(40));
            out.extend_from_slice(format!("!{}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            Some(Value::Bulk(data))
        }
        13..=16 => {
            // A long flat array now and then.
            let n = if rng.chance(30) {
                1000 + rng.below(3000)
            } else {
                0
            };
            resp::array_header(out, n);
            let items = (0..n)
                .map(|i| {
                    resp::integer(out, i as i64);
                    Value::Integer(i as i64)
                })
                .collect();
            Some(Value::Array(items))
        }
        kind => {
            let n = rng.below(5);
            let (elements, attribute) = match kind {
                17..=19 => {
                    if rng.chance(2) {
                        resp::array_header(out, n);
                    } else {
                        out.extend_from_slice(format!("*{n}\r\n").as_bytes());
                    }
                    (n, false)
                }
                20 => {
                    out.extend_from_slice(format!("~{n}\r\n").as_bytes());
                    (n, false)
                }
                21 => {
                    out.extend_from_slice(format!(">{n}\r\n").as_bytes());
                    (n, false)
                }
                22 | 23 => {
                    let protocol = rng.pick(&[Protocol::Resp2, Protocol::Resp3]);
                    resp::map_header(out, n, protocol);
                    (2 * n, false)
                }
                24 => {
                    out.extend_from_slice(format!("%{n}\r\n").as_bytes());
                    (2 * n, false)
                }
                _ => {
                    // An attribute: n pairs, then the reply they annotate.
                    out.extend_from_slice(format!("|{n}\r\n").as_bytes());
                    (2 * n + 1, true)
                }
            };
            let items: Vec<Option<Value>> = (0..elements)
                .map(|_| random_reply(rng, depth + 1, out))
                .collect();
            if attribute {
                None
            } else {
                items
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Value::Array)
            }
        }
    }
}

// ---- replies: feeding the framer ----------------------------------------

fn frame_in_reads(input: &[u8], reads: &[usize]) -> Vec<Result<usize, FrameError>> {
    let mut framer = ReplyFramer::default();
    let mut results = Vec::new();
    let mut buf = Vec::new();
    let mut fed = 0;
    let mut reads = reads.iter();
    loop {
        match framer.frame(&buf) {
            Ok(None) => {
                let Some(&n) = reads.next() else {
                    assert_eq!(fed, input.len());
                    return results;
                };
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(Some(len)) => {
                assert!(len > 0 && len <= buf.len());
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

fn frame_whole(input: &[u8]) -> Vec<Result<usize, FrameError>> {
    let mut reads = vec![input.len()];
    reads.retain(|&n| n > 0);
    frame_in_reads(input, &reads)
}

// ---- replies: properties ------------------------------------------------

#[test]
fn random_replies_frame_to_their_length_and_decode_at_random_splits() {
    let mut rng = Rng(0x7265_706c_6965_7301);
    let (mut decoded, mut attributes) = (0, 0);
    for iteration in 0..1500 {
        let mut stream = Vec::new();
        let mut replies = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let start = stream.len();
            let value = random_reply(&mut rng, 0, &mut stream);
            replies.push((start..stream.len(), value));
        }
        let lengths: Vec<Result<usize, FrameError>> =
            replies.iter().map(|(range, _)| Ok(range.len())).collect();

        assert_eq!(frame_whole(&stream), lengths, "iteration {iteration}");
        for _ in 0..2 {
            let reads = rng.cuts(stream.len());
            assert_eq!(
                frame_in_reads(&stream, &reads),
                lengths,
                "iteration {iteration}, reads {reads:?}"
            );
        }

        for (range, value) in &replies {
            let reply = &stream[range.clone()];
            // A reply needs no byte past its end, and any cut short of it waits.
            assert_eq!(ReplyFramer::default().frame(reply), Ok(Some(reply.len())));
            let cut = rng.below(reply.len());
            assert_eq!(
                ReplyFramer::default().frame(&reply[..cut]),
                Ok(None),
                "iteration {iteration}: {reply:?} cut at {cut}"
            );
            match value {
                Some(value) => {
                    decoded += 1;
                    assert_eq!(
                        parse_value(reply).as_ref(),
                        Ok(value),
                        "iteration {iteration}: {:?}",
                        String::from_utf8_lossy(reply)
                    );
                }
                None => attributes += 1,
            }
        }
    }
    assert!(decoded > 1500 && attributes > 50, "{decoded} {attributes}");
}

// ---- garbage ------------------------------------------------------------

/// Valid requests and replies, mutated, and plain noise.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"*",
        b"$",
        b"\r\n",
        b"\r",
        b"\n",
        b"0",
        b"1",
        b"3",
        b"-1",
        b"-",
        b"?",
        b"GET",
        b" ",
        b"\"",
        b"'",
        b"\\",
        b"\\x4",
        b"\\xfF",
        b"+",
        b":",
        b"_",
        b"#t",
        b",",
        b"(",
        b"=",
        b"!",
        b"%",
        b"|",
        b"~",
        b">",
        b"\0",
        b"\xff",
        b"1048576",
        b"9223372036854775807",
        b"99999999999999999999",
    ];
    let mut input = Vec::new();
    match rng.below(4) {
        0 => {
            for _ in 0..rng.below(40) {
                input.extend_from_slice(rng.pick(PIECES));
            }
        }
        1 => input = rng.some_bytes(100),
        2 => {
            for _ in 0..1 + rng.below(3) {
                let args = random_args(rng, false);
                if rng.chance(2) {
                    resp::command(&mut input, &args);
                } else {
                    let args: Vec<Vec<u8>> = args.into_iter().take(3).collect();
                    input.extend(inline_line(&args, rng));
                }
            }
        }
        _ => {
            for _ in 0..1 + rng.below(3) {
                random_reply(rng, 2, &mut input);
            }
        }
    }
    // Mutate: overwrite, insert, delete, duplicate.
    for _ in 0..rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(4) {
            0 if at < input.len() => input[at] = rng.byte(),
            1 => {
                let piece = rng.pick(PIECES);
                input.splice(at..at, piece.iter().copied());
            }
            2 => {
                let end = (at + rng.below(6)).min(input.len());
                input.drain(at..end);
            }
            _ => {
                let end = (at + rng.below(12)).min(input.len());
                let piece = input[at..end].to_vec();
                input.splice(at..at, piece);
            }
        }
    }
    input
}

#[test]
fn garbage_never_panics_and_parses_the_same_however_split() {
    let mut rng = Rng(0x6761_7262_6167_6501);
    let (mut requests, mut refused, mut replies, mut bad_replies) = (0, 0, 0, 0);
    for iteration in 0..4000 {
        let input = garbage(&mut rng);

        let whole = parse_whole(&input);
        requests += whole
            .iter()
            .filter(|p| matches!(p, Parsed::Req { .. }))
            .count();
        refused += whole.iter().filter(|p| matches!(p, Parsed::Err(_))).count();
        let reads = rng.cuts(input.len());
        assert_eq!(
            parse_in_reads(&input, &reads),
            whole,
            "iteration {iteration}: {input:?} in reads {reads:?}"
        );
        let _ = split_inline(&input);

        let framed = frame_whole(&input);
        let reads = rng.cuts(input.len());
        assert_eq!(
            frame_in_reads(&input, &reads),
            framed,
            "iteration {iteration}: {input:?} in reads {reads:?}"
        );
        let mut rest = &input[..];
        for result in &framed {
            let Ok(len) = *result else {
                bad_replies += 1;
                break;
            };
            replies += 1;
            // Decoding a framed reply may fail (attributes, deep nesting,
            // non-numeric integers) but not panic.
            let _ = parse_value(&rest[..len]);
            rest = &rest[len..];
        }
    }
    // The generator must keep reaching both outcomes of both.
    assert!(
        requests > 1000 && refused > 500 && replies > 1000 && bad_replies > 500,
        "{requests} {refused} {replies} {bad_replies}"
    );
}

// ---- bounded memory and time for what the input only declares -----------

#[test]
fn huge_declared_request_lengths_allocate_little() {
    let cases: &[&[u8]] = &[
        b"*1048576\r\n",
        b"*1048576\r\n$536870912\r\n",
        b"*1048576\r\n$536870912\r\nabc",
        b"*1\r\n$536870912\r\n",
        b"*2\r\n$3\r\nGET\r\n$536870912\r\nxyz",
    ];
    for input in cases {
        let mut parser = RequestParser::default();
        // Repeated calls on the same bytes, as when a read brings nothing new.
        for _ in 0..1000 {
            let (result, peak) = peak_alloc(|| parser.parse(input));
            assert_eq!(result, Ok(None), "{input:?}");
            assert!(peak <= 1024, "{input:?}: {peak} bytes");
        }
        let (result, peak) = peak_alloc(|| RequestParser::default().parse(input));
        assert_eq!(result, Ok(None), "{input:?}");
        assert!(peak <= 1024, "{input:?}: {peak} bytes");
    }

    // A million arguments declared, a thousand sent: memory follows what came.
    let mut input = b"*1048576\r\n".to_vec();
    for i in 0..1000 {
        input.extend_from_slice(format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
    }
    let (_, peak) = peak_alloc(|| {
        let mut parser = RequestParser::default();
        for end in 0..=input.len() {
            assert_eq!(parser.parse(&input[..end]), Ok(None));
        }
    });
    assert!(
        peak <= 4 * input.len(),
        "{peak} bytes for {} bytes",
        input.len()
    );
    let (result, peak) = peak_alloc(|| RequestParser::default().parse(&input));
    assert_eq!(result, Ok(None));
    assert!(
        peak <= 4 * input.len(),
        "{peak} bytes for {} bytes",
        input.len()
    );
}

#[test]
fn huge_declared_reply_lengths_allocate_little() {
    let cases: &[&[u8]] = &[
        b"*9223372036854775807\r\n",
        b"*9223372036854775807\r\n:1\r\n",
        b"%4611686018427387903\r\n+a\r\n",
        b"|4611686018427387903\r\n",
        b"$9223372036854775807\r\nabc",
        b"=9223372036854775807\r\n",
        b"*1048576\r\n*1048576\r\n*1048576\r\n",
    ];
    for input in cases {
        let mut framer = ReplyFramer::default();
        for _ in 0..1000 {
            let (result, peak) = peak_alloc(|| framer.frame(input));
            assert_eq!(result, Ok(None), "{input:?}");
            assert!(peak <= 1024, "{input:?}: {peak} bytes");
        }
        // Incomplete, so a decode fails, and must not reserve by the count.
        let (result, peak) = peak_alloc(|| parse_value(input));
        assert!(result.is_err(), "{input:?}");
        assert!(peak <= 64 * input.len() + 1024, "{input:?}: {peak} bytes");
    }

    // Deep nesting: the framer's stack grows with the bytes that came.
    let deep = b"*2\r\n".repeat(10_000);
    let (result, peak) = peak_alloc(|| ReplyFramer::default().frame(&deep));
    assert_eq!(result, Ok(None));
    assert!(peak <= 8 * deep.len(), "{peak} bytes for {}", deep.len());
}

#[test]
fn inline_lines_allocate_in_proportion_to_their_length() {
    let mut rng = Rng(0x616c_6c6f_6301);
    for _ in 0..200 {
        let len = rng.below(60_000);
        let line: Vec<u8> = (0..len).map(|_| rng.pick(b"a a\"b\" 'c'\t\\x")).collect();
        let (_, peak) = peak_alloc(|| split_inline(&line));
        assert!(peak <= 64 * len + 1024, "{peak} bytes for {len}");
    }
}

/// Feeds `input` one byte more at a time, as a slow client would, and
/// returns how long it took. A parser that rescanned a line from its start on
/// every call would take time quadratic in the line's length.
fn trickle<T>(input: &[u8], mut call: impl FnMut(&[u8]) -> T) -> (Duration, T) {
    let start = Instant::now();
    let mut last = None;
    for end in 1..=input.len() {
        last = Some(call(&input[..end]));
    }
    (start.elapsed(), last.expect("non-empty input"))
}

#[test]
fn trickled_long_lines_take_linear_time() {
    // Generous: linear work takes milliseconds here; the quadratic kind,
    // seconds even in an optimized build.
    let limit = Duration::from_secs(3);

    let mut line = vec![b'a'; 60_000];
    line.push(b'\n');
    let mut parser = RequestParser::default();
    let (took, last) = trickle(&line, |buf| {
        parser.parse(buf).map(|r| r.map(|r| r.consumed))
    });
    assert_eq!(last, Ok(Some(line.len())));
    assert!(took < limit, "inline line: {took:?}");

    // A bulk length line of zeros, never a valid number, is refused only
    // when its CRLF comes; until then each call must look at new bytes only.
    let mut header = b"*1\r\n$".to_vec();
    header.resize(60_000, b'0');
    let mut parser = RequestParser::default();
    let (took, last) = trickle(&header, |buf| parser.parse(buf));
    assert_eq!(last, Ok(None));
    assert!(took < limit, "bulk header: {took:?}");

    let mut reply = b"-ERR ".to_vec();
    reply.resize(200_000, b'e');
    reply.extend_from_slice(b"\r\n");
    let mut framer = ReplyFramer::default();
    let (took, last) = trickle(&reply, |buf| framer.frame(buf));
    assert_eq!(last, Ok(Some(reply.len())));
    assert!(took < limit, "reply line: {took:?}");

    // A huge declared count, asked again and again with nothing new.
    let start = Instant::now();
    let mut parser = RequestParser::default();
    for _ in 0..100_000 {
        assert_eq!(parser.parse(b"*1048576\r\n"), Ok(None));
    }
    assert!(start.elapsed() < limit, "{:?}", start.elapsed());
}

// ---- regressions: inputs the fuzz targets found -------------------------

/// tests/fuzz, target `parse_value`: a line with no type byte, where `rest`
/// starts with CRLF, sliced `rest[1..0]` and panicked. Only reachable with
/// input the framer would have refused, but the module promises no panic on
/// any input.
#[test]
fn regression_parse_value_line_without_type_byte() {
    for input in [
        &b"\r\n"[..],
        b"\r\n\r\n",
        b"*1\r\n\r\n",
        b"%1\r\n+a\r\n\r\n",
        b"*2\r\n:1\r\n\r\n:2\r\n",
    ] {
        assert!(parse_value(input).is_err(), "{input:?}");
    }
    // And a little of the same on random bytes rich in CRLFs.
    let mut rng = Rng(0x7061_7273_6501);
    for _ in 0..5000 {
        let input = garbage(&mut rng);
        let _ = parse_value(&input);
    }
}
