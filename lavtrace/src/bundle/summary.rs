//! What the bundle's report needs from trace.json (the NDJSON `trace --format json` writes):
//! the figures that matter, per interval and for the whole run. Anything that does not parse
//! is counted and skipped.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Default, Serialize)]
pub struct TraceSummary {
    pub duration_ms: u64,
    pub syscalls: Vec<Latency>,
    pub durability: Vec<Durability>,
    pub timeline: Vec<Point>,
    pub lost_events: u64,
    pub live_mappings: Option<u64>,
    pub connections: usize,
    pub malformed_lines: u64,
}

/// One syscall's latency profile over the run.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub name: String,
    pub count: u64,
    pub errors: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// One durability row with its log2 histogram.
#[derive(Debug, Serialize)]
pub struct Durability {
    pub label: String,
    pub count: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// (lower bound ns, count)
    pub buckets: Vec<(u64, u64)>,
}

/// One interval.
#[derive(Debug, Serialize)]
pub struct Point {
    pub t_ms: u64,
    pub syscalls_per_s: f64,
    pub syncfs_p99_ns: u64,
    pub connections: usize,
    pub mappings: u64,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl TraceSummary {
    pub fn parse(ndjson: &str) -> TraceSummary {
        let mut s = TraceSummary::default();
        for line in ndjson.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(r) = serde_json::from_str::<Value>(line) else {
                s.malformed_lines += 1;
                continue;
            };
            match r["type"].as_str() {
                Some("interval") => s.timeline.push(point(&r)),
                Some("summary") => s.take_summary(&r),
                _ => {}
            }
        }
        s
    }

    fn take_summary(&mut self, r: &Value) {
        self.duration_ms = u(&r["duration_ms"]);
        let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
        self.syscalls = rows(&r["syscalls"])
            .iter()
            .map(|row| Latency {
                name: row["name"].as_str().unwrap_or("?").to_string(),
                count: u(&row["count"]),
                errors: u(&row["errors"]),
                avg_ns: u(&row["avg_ns"]),
                p50_ns: u(&row["p50_ns"]),
                p99_ns: u(&row["p99_ns"]),
                max_ns: u(&row["max_ns"]),
            })
            .collect();
        self.syscalls.sort_by_key(|s| std::cmp::Reverse(s.count));
        self.durability = rows(&r["fsync"])
            .iter()
            .map(|row| Durability {
                label: format!(
                    "{} {}",
                    row["syscall"].as_str().unwrap_or("?"),
                    row["path"].as_str().unwrap_or("?")
                ),
                count: u(&row["count"]),
                p99_ns: u(&row["p99_ns"]),
                max_ns: u(&row["max_ns"]),
                buckets: rows(&row["histogram"])
                    .iter()
                    .map(|b| (u(&b["lo_ns"]), u(&b["count"])))
                    .collect(),
            })
            .collect();
        self.lost_events = r["lost_events"]
            .as_object()
            .map_or(0, |m| m.values().map(u).sum());
        self.live_mappings = r["mmap"]["live_mappings"].as_u64();
        self.connections = r["tcp"]["connections"].as_array().map_or(0, Vec::len);
    }
}

fn point(r: &Value) -> Point {
    let window_ms = u(&r["window_ms"]).max(1);
    let calls: u64 = r["syscalls"]
        .as_array()
        .map_or(0, |rows| rows.iter().map(|row| u(&row["count"])).sum());
    let syncfs_p99_ns = r["fsync"].as_array().map_or(0, |rows| {
        rows.iter()
            .filter(|row| row["syscall"] == "syncfs")
            .map(|row| u(&row["p99_ns"]))
            .max()
            .unwrap_or(0)
    });
    Point {
        t_ms: u(&r["elapsed_ms"]),
        syscalls_per_s: calls as f64 * 1000.0 / window_ms as f64,
        syncfs_p99_ns,
        connections: r["tcp"]["connections"].as_array().map_or(0, Vec::len),
        mappings: u(&r["mmap"]["live_mappings"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_summary_are_read() {
        let nd = r#"{"type":"attached"}
{"type":"interval","elapsed_ms":1000,"window_ms":500,"syscalls":[{"name":"read","count":10},{"name":"write","count":5}],"fsync":[{"syscall":"syncfs","p99_ns":900},{"syscall":"fsync","p99_ns":5000}],"tcp":{"connections":[{},{}]},"mmap":{"live_mappings":40}}
not json
{"type":"summary","duration_ms":2000,"syscalls":[{"name":"read","count":10,"p99_ns":7},{"name":"futex","count":20}],"fsync":[{"syscall":"syncfs","path":"/d","count":3,"histogram":[{"lo_ns":512,"hi_ns":1023,"count":3}]}],"lost_events":{"fsync":1,"tcp":2},"mmap":{"live_mappings":41},"tcp":{"connections":[]}}
"#;
        let s = TraceSummary::parse(nd);
        assert_eq!(s.malformed_lines, 1);
        assert_eq!(s.timeline.len(), 1);
        assert_eq!(s.timeline[0].syscalls_per_s, 30.0);
        assert_eq!(s.timeline[0].syncfs_p99_ns, 900);
        assert_eq!(s.timeline[0].connections, 2);
        assert_eq!(s.syscalls[0].name, "futex");
        assert_eq!(s.durability[0].buckets, vec![(512, 3)]);
        assert_eq!(s.lost_events, 3);
        assert_eq!(s.live_mappings, Some(41));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::fuzz::config(500))]

        /// A cut or edited trace file: every line that is not JSON is counted, none panics.
        #[test]
        fn any_ndjson_is_read_or_counted(
            lines in prop::collection::vec(
                prop_oneof![
                    any::<String>(),
                    Just(r#"{"type":"summary","duration_ms":-1,"lost_events":"x"}"#.to_string()),
                    Just(r#"{"type":"interval","t":[],"syscalls":{}}"#.to_string()),
                    Just(r#"{"type":"interval"#.to_string()),
                    Just("[1,2]".to_string()),
                ],
                0..12,
            ),
        ) {
            let text = lines.join("\n");
            let s = TraceSummary::parse(&text);
            prop_assert!(s.malformed_lines <= lines.len() as u64);
        }
    }
}
