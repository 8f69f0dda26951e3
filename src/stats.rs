//! What sidecache counts, and `INFO` in Redis's format: `# Section` lines
//! and `field:value` lines, CRLF-separated, with Redis's own field names
//! where one exists (keyspace_hits, connected_clients, used_memory...), so
//! tools that read Redis's INFO, Prometheus's redis_exporter among them,
//! read sidecache's. Pure: the server fills in a [`Snapshot`].

/// Counters since start.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub connections_received: u64,
    pub rejected_connections: u64,
    pub commands_processed: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    /// GET misses that shared another GET's request instead of sending their own.
    pub coalesced_gets: u64,
    /// Keys invalidated by Redis's client tracking (a flush counts once).
    pub invalidations: u64,
    /// Connections to Redis lost (shared, invalidation, pinned, pub/sub).
    pub backend_reconnects: u64,
    /// Commands refused with an error by sidecache itself.
    pub refused_commands: u64,
    pub protocol_errors: u64,
}

/// Everything INFO reports, gathered by the server at the moment it asks.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub sidecache_version: &'static str,
    /// The backing Redis's version, once known.
    pub redis_version: Option<String>,
    pub process_id: u32,
    pub listen: String,
    pub tcp_port: u16,
    pub uptime_seconds: u64,
    pub connected_clients: usize,
    pub blocked_clients: usize,
    /// Clients whose reading is paused at a limit (unsent replies, pending requests).
    pub clients_waiting_on_backpressure: usize,
    pub pubsub_clients: usize,
    pub max_clients: usize,
    pub cache_bytes: usize,
    pub cache_entries: usize,
    pub max_memory: usize,
    pub rss_bytes: Option<u64>,
    pub evicted_keys: u64,
    pub expired_keys: u64,
    pub backend_address: String,
    /// `up`, `connecting`, `down` or `off`.
    pub backend_state: &'static str,
    /// `on`, `off` or `setting up`.
    pub tracking: &'static str,
    pub cache_serving: bool,
    pub requests_in_flight: usize,
    pub pinned_connections: usize,
}

const SECTIONS: [&str; 5] = ["server", "clients", "memory", "stats", "backend"];

/// The text of `INFO [section ...]`: all sections for none, `all`,
/// `everything` or `default`; unknown sections are left out, as Redis does.
pub fn info(snapshot: &Snapshot, requested: &[&[u8]]) -> String {
    let all = requested.is_empty()
        || requested.iter().any(|s| {
            ["all", "everything", "default"]
                .iter()
                .any(|a| s.eq_ignore_ascii_case(a.as_bytes()))
        });
    let mut out = String::new();
    for section in SECTIONS {
        let wanted = all
            || requested
                .iter()
                .any(|s| s.eq_ignore_ascii_case(section.as_bytes()));
        if !wanted {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        write_section(&mut out, section, snapshot);
    }
    out
}

/// Writes INFO lines.
struct Writer<'a>(&'a mut String);

impl Writer<'_> {
    fn header(&mut self, name: &str) {
        self.0.push_str("# ");
        self.0.push_str(name);
        self.0.push_str("\r\n");
    }

    fn field(&mut self, name: &str, value: impl std::fmt::Display) {
        use std::fmt::Write;
        let _ = write!(self.0, "{name}:{value}\r\n");
    }
}

fn write_section(out: &mut String, section: &str, s: &Snapshot) {
    let mut w = Writer(out);
    let c = &s.counters;
    match section {
        "server" => {
            w.header("Server");
            w.field(
                "redis_version",
                s.redis_version.as_deref().unwrap_or("0.0.0"),
            );
            w.field("sidecache_version", s.sidecache_version);
            w.field("redis_mode", "standalone");
            w.field("process_id", s.process_id);
            w.field("tcp_port", s.tcp_port);
            w.field("listen", &s.listen);
            w.field("uptime_in_seconds", s.uptime_seconds);
            w.field("uptime_in_days", s.uptime_seconds / 86_400);
        }
        "clients" => {
            w.header("Clients");
            w.field("connected_clients", s.connected_clients);
            w.field("blocked_clients", s.blocked_clients);
            w.field("pubsub_clients", s.pubsub_clients);
            w.field(
                "clients_waiting_on_backpressure",
                s.clients_waiting_on_backpressure,
            );
            w.field("maxclients", s.max_clients);
        }
        "memory" => {
            w.header("Memory");
            w.field("used_memory", s.cache_bytes);
            w.field("used_memory_human", human(s.cache_bytes as u64));
            if let Some(rss) = s.rss_bytes {
                w.field("used_memory_rss", rss);
                w.field("used_memory_rss_human", human(rss));
            }
            w.field("maxmemory", s.max_memory);
            w.field("maxmemory_human", human(s.max_memory as u64));
            w.field("cache_entries", s.cache_entries);
        }
        "stats" => {
            w.header("Stats");
            w.field("total_connections_received", c.connections_received);
            w.field("total_commands_processed", c.commands_processed);
            w.field("rejected_connections", c.rejected_connections);
            w.field("keyspace_hits", c.keyspace_hits);
            w.field("keyspace_misses", c.keyspace_misses);
            let lookups = c.keyspace_hits + c.keyspace_misses;
            let ratio = match lookups {
                0 => 0.0,
                n => c.keyspace_hits as f64 / n as f64,
            };
            w.field("cache_hit_ratio", format!("{ratio:.4}"));
            w.field("coalesced_gets", c.coalesced_gets);
            w.field("evicted_keys", s.evicted_keys);
            w.field("expired_keys", s.expired_keys);
            w.field("invalidations_received", c.invalidations);
            w.field("backend_reconnects", c.backend_reconnects);
            w.field("refused_commands", c.refused_commands);
            w.field("protocol_errors", c.protocol_errors);
        }
        _ => {
            w.header("Backend");
            w.field("backend_address", &s.backend_address);
            w.field("backend_state", s.backend_state);
            w.field("backend_tracking", s.tracking);
            w.field("cache_serving", u8::from(s.cache_serving));
            w.field("backend_requests_in_flight", s.requests_in_flight);
            w.field("pinned_connections", s.pinned_connections);
        }
    }
}

/// Redis's "human" sizes: 1.50K, 2.00M...
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes}B"),
        1024..=1_048_575 => format!("{:.2}K", b / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.2}M", b / 1_048_576.0),
        _ => format!("{:.2}G", b / 1_073_741_824.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            counters: Counters {
                keyspace_hits: 3,
                keyspace_misses: 1,
                ..Counters::default()
            },
            sidecache_version: "0.1.0",
            redis_version: Some("7.0.15".into()),
            connected_clients: 2,
            backend_state: "up",
            tracking: "on",
            ..Snapshot::default()
        }
    }

    #[test]
    fn sections_in_redis_format() {
        let text = info(&snapshot(), &[]);
        assert!(
            text.starts_with("# Server\r\nredis_version:7.0.15\r\n"),
            "{text}"
        );
        for header in [
            "# Clients\r\n",
            "# Memory\r\n",
            "# Stats\r\n",
            "# Backend\r\n",
        ] {
            assert!(
                text.contains(&format!("\r\n\r\n{header}")),
                "{header} in {text}"
            );
        }
        assert!(text.contains("\r\nkeyspace_hits:3\r\n"));
        assert!(text.contains("\r\nkeyspace_misses:1\r\n"));
        assert!(text.contains("\r\ncache_hit_ratio:0.7500\r\n"));
        assert!(text.contains("\r\nconnected_clients:2\r\n"));
        assert!(text.ends_with("\r\n") && !text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn one_section_or_none() {
        let text = info(&snapshot(), &[b"STATS"]);
        assert!(text.starts_with("# Stats\r\n"), "{text}");
        assert!(!text.contains("# Server"));
        assert_eq!(info(&snapshot(), &[b"keyspace"]), "");
        assert!(info(&snapshot(), &[b"everything"]).contains("# Backend"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(3 << 20), "3.00M");
    }
}
