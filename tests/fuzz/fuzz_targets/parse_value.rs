//! `parse_value` on arbitrary bytes, not only on what the framer framed: the
//! module promises never to panic on any input.
//!
//! Input: the bytes as they are. Checks: no panic; a decoded value whose
//! strings can be written as RESP lines re-encodes to a reply that frames
//! whole and decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecache::resp::{parse_value, Value};
use sidecache_fuzz::check_value_round_trip;

/// Whether every simple string and error fits on one RESP line.
fn one_line_strings(value: &Value) -> bool {
    match value {
        Value::Simple(s) | Value::Error(s) => !s.contains(&b'\n'),
        Value::Array(items) => items.iter().all(one_line_strings),
        Value::Integer(_) | Value::Bulk(_) | Value::Null => true,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse_value(data) {
        if one_line_strings(&value) {
            check_value_round_trip(&value);
        }
    }
});
