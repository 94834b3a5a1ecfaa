//! What the bundle's report needs from trace.json (the NDJSON `trace --format json` writes):
//! the figures that matter, per interval and for the whole run. Anything that does not parse
//! is counted and skipped.

use std::collections::BTreeMap;

use lavtrace_common::syscalls::{LATENCY_BUCKETS, latency_bucket};
use serde::Serialize;
use serde_json::Value;

use crate::syscalls::stats;

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
    /// No summary record (a flight recorder dump holds intervals only): the latency figures
    /// are the intervals' merged, percentiles from their summed log2 buckets.
    pub merged: bool,
}

/// One syscall or durability row summed over intervals.
#[derive(Default)]
struct Merged {
    count: u64,
    errors: u64,
    total_ns: u64,
    max_ns: u64,
    buckets: [u64; LATENCY_BUCKETS],
}

impl Merged {
    fn add(&mut self, row: &Value) {
        self.count += u(&row["count"]);
        self.errors += u(&row["errors"]);
        self.total_ns += u(&row["total_ns"]);
        self.max_ns = self.max_ns.max(u(&row["max_ns"]));
        for (lo, n) in buckets(&row["histogram"]) {
            self.buckets[latency_bucket(lo)] += n;
        }
    }

    fn histogram(&self) -> Vec<(u64, u64)> {
        let first = self.buckets.iter().position(|&n| n > 0);
        let last = self.buckets.iter().rposition(|&n| n > 0);
        match (first, last) {
            (Some(a), Some(b)) => (a..=b)
                .map(|i| (stats::bucket_lower(i), self.buckets[i]))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn p(&self, q: f64) -> u64 {
        stats::percentile(&self.buckets, self.max_ns, q)
    }
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
    /// (lower bound ns, count) of the run's log2 buckets, lowest to highest non-empty.
    pub buckets: Vec<(u64, u64)>,
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
        let mut summary = false;
        let mut syscalls: BTreeMap<String, Merged> = BTreeMap::new();
        // Keyed by label, in the order first seen.
        let mut durability: Vec<(String, Merged)> = Vec::new();
        let (mut lost, mut first_ms, mut last_ms) = (0, None, 0);
        for line in ndjson.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(r) = serde_json::from_str::<Value>(line) else {
                s.malformed_lines += 1;
                continue;
            };
            match r["type"].as_str() {
                Some("interval") => {
                    s.timeline.push(point(&r));
                    if summary {
                        continue;
                    }
                    for row in r["syscalls"].as_array().into_iter().flatten() {
                        let name = row["name"].as_str().unwrap_or("?").to_string();
                        syscalls.entry(name).or_default().add(row);
                    }
                    for row in r["fsync"].as_array().into_iter().flatten() {
                        let label = durability_label(row);
                        match durability.iter_mut().find(|(l, _)| *l == label) {
                            Some((_, m)) => m.add(row),
                            None => {
                                let mut m = Merged::default();
                                m.add(row);
                                durability.push((label, m));
                            }
                        }
                    }
                    lost += lost_events(&r);
                    let end = u(&r["elapsed_ms"]);
                    first_ms.get_or_insert(end.saturating_sub(u(&r["window_ms"])));
                    last_ms = end;
                    s.live_mappings = r["mmap"]["live_mappings"].as_u64();
                    s.connections = r["tcp"]["connections"].as_array().map_or(0, Vec::len);
                }
                Some("summary") => {
                    summary = true;
                    s.take_summary(&r);
                }
                _ => {}
            }
        }
        if !summary && !s.timeline.is_empty() {
            s.merged = true;
            s.duration_ms = last_ms - first_ms.unwrap_or(0).min(last_ms);
            s.lost_events = lost;
            s.syscalls = syscalls
                .into_iter()
                .map(|(name, m)| Latency {
                    name,
                    count: m.count,
                    errors: m.errors,
                    avg_ns: m.total_ns.checked_div(m.count).unwrap_or(0),
                    p50_ns: m.p(0.5),
                    p99_ns: m.p(0.99),
                    max_ns: m.max_ns,
                    buckets: m.histogram(),
                })
                .collect();
            s.syscalls.sort_by_key(|s| std::cmp::Reverse(s.count));
            s.durability = durability
                .into_iter()
                .map(|(label, m)| Durability {
                    label,
                    count: m.count,
                    p99_ns: m.p(0.99),
                    max_ns: m.max_ns,
                    buckets: m.histogram(),
                })
                .collect();
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
                buckets: buckets(&row["histogram"]),
            })
            .collect();
        self.syscalls.sort_by_key(|s| std::cmp::Reverse(s.count));
        self.durability = rows(&r["fsync"])
            .iter()
            .map(|row| Durability {
                label: durability_label(row),
                count: u(&row["count"]),
                p99_ns: u(&row["p99_ns"]),
                max_ns: u(&row["max_ns"]),
                buckets: buckets(&row["histogram"]),
            })
            .collect();
        self.lost_events = lost_events(r);
        self.live_mappings = r["mmap"]["live_mappings"].as_u64();
        self.connections = r["tcp"]["connections"].as_array().map_or(0, Vec::len);
    }
}

/// A durability row's call and file (and flags: an msync MS_ASYNC is not an MS_SYNC).
fn durability_label(row: &Value) -> String {
    let mut label = format!(
        "{} {}",
        row["syscall"].as_str().unwrap_or("?"),
        row["path"].as_str().unwrap_or("?")
    );
    if let Some(flags) = row["flags"].as_str() {
        label.push_str(&format!(" ({flags})"));
    }
    label
}

fn lost_events(r: &Value) -> u64 {
    r["lost_events"]
        .as_object()
        .map_or(0, |m| m.values().map(u).sum())
}

/// A row's `histogram` as (lo_ns, count) pairs.
fn buckets(h: &Value) -> Vec<(u64, u64)> {
    h.as_array()
        .into_iter()
        .flatten()
        .map(|b| (u(&b["lo_ns"]), u(&b["count"])))
        .collect()
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
{"type":"summary","duration_ms":2000,"syscalls":[{"name":"read","count":10,"p99_ns":7,"histogram":[{"lo_ns":4,"hi_ns":7,"count":10}]},{"name":"futex","count":20}],"fsync":[{"syscall":"syncfs","path":"/d","count":3,"histogram":[{"lo_ns":512,"hi_ns":1023,"count":3}]}],"lost_events":{"fsync":1,"tcp":2},"mmap":{"live_mappings":41},"tcp":{"connections":[]}}
"#;
        let s = TraceSummary::parse(nd);
        assert_eq!(s.malformed_lines, 1);
        assert_eq!(s.timeline.len(), 1);
        assert_eq!(s.timeline[0].syscalls_per_s, 30.0);
        assert_eq!(s.timeline[0].syncfs_p99_ns, 900);
        assert_eq!(s.timeline[0].connections, 2);
        assert_eq!(s.syscalls[0].name, "futex");
        assert_eq!(s.syscalls[1].buckets, vec![(4, 10)]);
        assert!(s.syscalls[0].buckets.is_empty());
        assert_eq!(s.durability[0].buckets, vec![(512, 3)]);
        assert_eq!(s.lost_events, 3);
        assert_eq!(s.live_mappings, Some(41));
        assert!(!s.merged);
    }

    #[test]
    fn intervals_without_a_summary_are_merged() {
        // Two intervals of a dump: read in both, fsync of one file in both.
        let nd = r#"{"type":"interval","elapsed_ms":1200,"window_ms":200,"syscalls":[{"name":"read","count":3,"errors":1,"total_ns":3000,"max_ns":1500,"histogram":[{"lo_ns":512,"count":2},{"lo_ns":1024,"count":1}]}],"fsync":[{"syscall":"fsync","path":"/d/f","count":1,"max_ns":3000,"histogram":[{"lo_ns":2048,"count":1}]}],"lost_events":{"fsync":2}}
{"type":"interval","elapsed_ms":1400,"window_ms":200,"syscalls":[{"name":"read","count":1,"total_ns":5000,"max_ns":5000,"histogram":[{"lo_ns":4096,"count":1}]},{"name":"futex","count":9,"histogram":[{"lo_ns":0,"count":9}]}],"fsync":[{"syscall":"fsync","path":"/d/f","count":1,"max_ns":300000000,"histogram":[{"lo_ns":268435456,"count":1}]}],"lost_events":{"fsync":1},"mmap":{"live_mappings":7}}
"#;
        let s = TraceSummary::parse(nd);
        assert!(s.merged);
        assert_eq!(s.duration_ms, 400);
        assert_eq!(s.lost_events, 3);
        assert_eq!(s.live_mappings, Some(7));
        assert_eq!(s.syscalls[0].name, "futex");
        let read = &s.syscalls[1];
        assert_eq!(
            (read.count, read.errors, read.avg_ns, read.max_ns),
            (4, 1, 2000, 5000)
        );
        assert_eq!(
            read.buckets,
            vec![(512, 2), (1024, 1), (2048, 0), (4096, 1)]
        );
        // The 4th of 4 calls: in the 4096 bucket, capped at the max.
        assert_eq!(read.p99_ns, 5000);
        assert_eq!(s.durability.len(), 1);
        let f = &s.durability[0];
        assert_eq!(
            (f.label.as_str(), f.count, f.max_ns),
            ("fsync /d/f", 2, 300_000_000)
        );
        assert_eq!(f.buckets.first(), Some(&(2048, 1)));
        assert_eq!(f.buckets.last(), Some(&(268_435_456, 1)));
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
