//! `RequestParser` on arbitrary client input, cut into arbitrary reads.
//!
//! Input: one control byte choosing the read sizes (see `Chunks`), then the
//! stream; a control byte with its top bit set also stretches the stream to
//! about 64 KB (see `stretch`), so that the line length limits are reached.
//! Checks: no panic; every complete request consumed 1..=buffer bytes,
//! its arguments lie inside what it consumed, and `write_wire` gives a
//! multibulk that parses back to the same arguments; a request parses the same
//! alone, and its strict prefixes are incomplete; and the stream parses the
//! same whole as when it arrives in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecache::resp::{split_inline, RequestParser};
use sidecache_fuzz::{outcome, parse_chunked, parse_whole, split_input, stretch, Chunks, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((control, stream)) = split_input(data) else {
        return;
    };
    let stretched;
    let stream = if control & 0x80 != 0 {
        stretched = stretch(stream);
        &stretched[..]
    } else {
        stream
    };
    let whole = parse_whole(stream);

    let mut rest = stream;
    let mut chunks = Chunks::new(control);
    for parsed in &whole {
        let Parsed::Req { consumed, .. } = parsed else {
            break;
        };
        let request = &rest[..*consumed];
        assert_eq!(
            outcome(RequestParser::default().parse(request), request).as_ref(),
            Some(parsed),
            "the request alone"
        );
        let cut = chunks.next_len() % consumed;
        assert_eq!(
            RequestParser::default().parse(&request[..cut]),
            Ok(None),
            "{request:?} cut at {cut}"
        );
        rest = &rest[*consumed..];
    }

    assert_eq!(
        parse_chunked(stream, &mut Chunks::new(control)),
        whole,
        "in pieces (control byte {control})"
    );

    // The inline splitter on its own, whatever the line holds.
    let _ = split_inline(stream);
});
