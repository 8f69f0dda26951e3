//! `ReplyFramer` on an arbitrary reply stream cut into arbitrary reads, and
//! `parse_value` on every reply it frames.
//!
//! Input: one control byte choosing the read sizes (see `Chunks`), then the
//! stream. Checks: no panic; every framed reply is 1..=buffer bytes, frames
//! the same alone, and its strict prefixes are incomplete; the stream frames
//! the same whole as in pieces; and a framed reply that `parse_value` decodes
//! re-encodes to a reply that frames whole and decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecache::resp::{parse_value, ReplyFramer};
use sidecache_fuzz::{check_value_round_trip, frame_chunked, frame_whole, split_input, Chunks};

fuzz_target!(|data: &[u8]| {
    let Some((control, stream)) = split_input(data) else {
        return;
    };
    let whole = frame_whole(stream);

    let mut rest = stream;
    let mut chunks = Chunks::new(control);
    for framed in &whole {
        let Ok(len) = *framed else {
            break;
        };
        let reply = &rest[..len];
        assert_eq!(ReplyFramer::default().frame(reply), Ok(Some(len)), "alone");
        let cut = chunks.next_len() % len;
        assert_eq!(
            ReplyFramer::default().frame(&reply[..cut]),
            Ok(None),
            "{reply:?} cut at {cut}"
        );
        if let Ok(value) = parse_value(reply) {
            check_value_round_trip(&value);
        }
        rest = &rest[len..];
    }

    assert_eq!(
        frame_chunked(stream, &mut Chunks::new(control)),
        whole,
        "in pieces (control byte {control})"
    );
});
