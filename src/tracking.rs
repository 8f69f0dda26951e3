//! Redis's client tracking, as seen from the invalidation connection: the
//! requests that set it up and what arrives on it.
//!
//! The data connection runs `CLIENT TRACKING ON REDIRECT <id>`, `<id>`
//! being the invalidation connection, which is subscribed to
//! `__redis__:invalidate`. Redis then publishes there, once, every key the
//! data connection read that has since changed (written by anyone, expired
//! or evicted), or a null when everything may have changed (FLUSHALL,
//! FLUSHDB, overflow of its tracking table). Pure: decodes, never acts.

use crate::resp::Value;

/// The channel Redis publishes invalidations on, for a RESP2 redirect.
pub const CHANNEL: &[u8] = b"__redis__:invalidate";

/// The names sidecache gives its own connections, so that they show in
/// `CLIENT LIST` for what they are.
pub const DATA_CONNECTION_NAME: &[u8] = b"sidecache-data";
pub const DATA_RESP3_CONNECTION_NAME: &[u8] = b"sidecache-data-resp3";
pub const INVALIDATION_CONNECTION_NAME: &[u8] = b"sidecache-invalidation";
/// A connection pinned to one client (a transaction, a blocking call).
pub const PINNED_CONNECTION_NAME: &[u8] = b"sidecache-pinned";
/// The connection that holds every client's subscriptions.
pub const PUBSUB_CONNECTION_NAME: &[u8] = b"sidecache-pubsub";

/// What one frame from the invalidation connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// These keys may have changed.
    Invalidate(Vec<Vec<u8>>),
    /// Anything may have changed.
    InvalidateAll,
    /// Not a message: the reply to one of sidecache's own requests on this connection.
    Reply(Value),
}

/// Sorts a decoded frame into an invalidation or a reply.
pub fn classify(frame: Value) -> Incoming {
    let is_message = matches!(
        frame.as_array(),
        Some([kind, channel, _])
            if kind.as_bytes() == Some(b"message") && channel.as_bytes() == Some(CHANNEL)
    );
    if !is_message {
        return Incoming::Reply(frame);
    }
    let Value::Array(mut parts) = frame else {
        unreachable!("checked above");
    };
    match parts.pop() {
        Some(Value::Array(keys)) => Incoming::Invalidate(
            keys.into_iter()
                .filter_map(|key| match key {
                    Value::Bulk(k) | Value::Simple(k) => Some(k),
                    _ => None,
                })
                .collect(),
        ),
        // A single key as a plain bulk (older Redis) is still one key.
        Some(Value::Bulk(key)) => Incoming::Invalidate(vec![key]),
        // A null, or anything we do not understand: assume the worst.
        _ => Incoming::InvalidateAll,
    }
}

/// Whether an error reply means Redis has no client tracking at all (too
/// old, or the CLIENT command renamed away), as opposed to a passing failure.
pub fn means_unsupported(error: &[u8]) -> bool {
    let error = String::from_utf8_lossy(error).to_ascii_lowercase();
    error.contains("unknown command") || error.contains("unknown subcommand")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::parse_value;

    fn incoming(frame: &[u8]) -> Incoming {
        classify(parse_value(frame).unwrap())
    }

    #[test]
    fn invalidation_of_keys() {
        let frame =
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$1\r\na\r\n$2\r\nbc\r\n";
        assert_eq!(
            incoming(frame),
            Incoming::Invalidate(vec![b"a".to_vec(), b"bc".to_vec()])
        );
    }

    #[test]
    fn null_invalidation_means_everything() {
        for null in [&b"*-1\r\n"[..], b"$-1\r\n"] {
            let frame = [
                &b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"[..],
                null,
            ]
            .concat();
            assert_eq!(incoming(&frame), Incoming::InvalidateAll);
        }
    }

    #[test]
    fn replies_are_not_messages() {
        let subscribed = b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n";
        assert!(matches!(incoming(subscribed), Incoming::Reply(_)));
        let pong = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert!(matches!(incoming(pong), Incoming::Reply(_)));
        assert_eq!(incoming(b":42\r\n"), Incoming::Reply(Value::Integer(42)));
        let other_channel = b"*3\r\n$7\r\nmessage\r\n$5\r\nnews!\r\n*0\r\n";
        assert!(matches!(incoming(other_channel), Incoming::Reply(_)));
    }

    #[test]
    fn unsupported_errors() {
        assert!(means_unsupported(
            b"ERR unknown command 'CLIENT', with args beginning with: 'ID' "
        ));
        assert!(means_unsupported(
            b"ERR Unknown subcommand or wrong number of arguments for 'TRACKING'. Try CLIENT HELP"
        ));
        assert!(!means_unsupported(
            b"ERR The client ID you want redirect to does not exist"
        ));
    }
}
