//! What the endpoint exposes: the figures of one traced process instance, cumulative since
//! attach, built by adding up the interval sections the session already computes (nothing is
//! read from the kernel a second time). Counters only grow; gauges are the latest value.

use std::collections::BTreeMap;

use lavtrace_common::syscalls::{LATENCY_BUCKETS, latency_bucket};

use crate::{
    fsync, gc, mmap::MmapSection, output::Sections, sched, storage::lavinmq::Kind, syscalls,
    tcp::TcpSection,
};

/// A latency histogram in the kernel's log2 buckets: bucket `i` holds durations of
/// `2^i ..= 2^(i+1)-1` ns (bucket 0: 0 and 1 ns), the last one is open-ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log2Histogram {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Log2Histogram {
    fn add(&mut self, count: u64, sum_ns: u64, buckets: &[u64; LATENCY_BUCKETS]) {
        self.count += count;
        self.sum_ns += sum_ns;
        for (o, b) in self.buckets.iter_mut().zip(buckets) {
            *o += b;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyscallSeries {
    pub calls: u64,
    pub errors: u64,
    pub latency: Log2Histogram,
}

/// A durability call's series: (syscall, file class, flags).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurabilityKey {
    pub syscall: &'static str,
    pub class: &'static str,
    pub flags: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DurabilitySeries {
    pub errors: u64,
    pub latency: Log2Histogram,
}

#[derive(Debug, Clone, Default)]
pub struct MapSeries {
    pub calls: u64,
    pub errors: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Tcp {
    /// Current connections per state (LISTEN: listening sockets).
    pub states: BTreeMap<String, u64>,
    /// (from, to) → transitions.
    pub transitions: BTreeMap<(String, String), u64>,
    pub opened: u64,
    pub closed: u64,
    /// Closed connections folded out of the connection table.
    pub evicted: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}

/// Mapping work on one queue's files (segments and ack files together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSeries {
    pub mmaps: u64,
    pub munmaps: u64,
    pub bytes_mapped: u64,
}

/// Queues with series of their own; the rest add up in one `(other)` series, so that a broker
/// with thousands of queues cannot blow up the scrape or Prometheus.
pub const MAX_QUEUE_SERIES: usize = 100;
pub const OTHER_QUEUES: &str = "(other)";

/// (vhost, queue) labels of a file's queue: names, else the hash marked `#` as in text.
fn queue_labels(q: &crate::storage::naming::QueueRef) -> (String, String) {
    let short = |h: &str| format!("#{}", h.get(..8).unwrap_or(h));
    (
        q.vhost.clone().unwrap_or_else(|| short(&q.vhost_hash)),
        q.name.clone().unwrap_or_else(|| short(&q.hash)),
    )
}

#[derive(Debug, Clone, Default)]
pub struct Mmap {
    pub syscalls: BTreeMap<&'static str, MapSeries>,
    /// Per (vhost, queue), at most MAX_QUEUE_SERIES of them plus `(other)`.
    pub queues: BTreeMap<(String, String), QueueSeries>,
    pub live_mappings: Option<u64>,
    pub max_map_count: Option<u64>,
}

/// The sched family's figures summed over the target's threads (no per-thread label: thread
/// ids are unbounded, and a thread's figures are in the JSON and text reports).
#[derive(Debug, Clone, Default)]
pub struct Sched {
    pub on_cpu_ns: u64,
    pub runq_ns: u64,
    pub sleep_ns: u64,
    pub blocked_ns: u64,
    pub voluntary: u64,
    pub involuntary: u64,
    pub runq_latency: Log2Histogram,
}

/// The gc family's stop-the-world pauses.
#[derive(Debug, Clone, Default)]
pub struct Gc {
    pub pause: Log2Histogram,
    pub stop: Log2Histogram,
}

/// The faults family's figures summed per kind of mapping (`segment`, `heap`...: a bounded
/// set; the files themselves are in the JSON and text reports).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// kind → (faults, major, write faults); major and write are None where the kernel
    /// cannot tell.
    pub by_kind: BTreeMap<String, (u64, Option<u64>, Option<u64>)>,
    pub throttled: u64,
    pub throttle_pause_ms: u64,
    pub stable_page_waits: u64,
}

/// The amqp family's figures summed over the target's connections (no per-connection label:
/// connections are unbounded; the JSON has each one). Methods are labelled by name from the
/// spec's table (at most 62 names per direction).
#[derive(Debug, Clone, Default)]
pub struct Amqp {
    /// (kind, count): published, confirmed, nacked, returned, delivered, acked, rejected.
    pub messages: BTreeMap<&'static str, u64>,
    /// (direction, method) → frames.
    pub methods: BTreeMap<(&'static str, &'static str), u64>,
    pub unsynced_bytes: u64,
    /// Connections in the latest window's report (open or closed in it).
    pub connections: u64,
    pub tls_not_parsed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    pub kernel_stats: bool,
    /// Program → (runs, run time ns).
    pub programs: BTreeMap<String, (u64, u64)>,
}

/// One traced process instance (a `--follow` restart starts a new one).
#[derive(Debug, Clone, Default)]
pub struct Instance {
    pub pid: u32,
    pub comm: String,
    pub intervals: u64,
    pub syscalls: Option<BTreeMap<String, SyscallSeries>>,
    pub durability: Option<BTreeMap<DurabilityKey, DurabilitySeries>>,
    pub mmap: Option<Mmap>,
    pub tcp: Option<Tcp>,
    pub sched: Option<Sched>,
    pub gc: Option<Gc>,
    pub faults: Option<Faults>,
    pub amqp: Option<Amqp>,
    pub lost: BTreeMap<&'static str, u64>,
    pub cost: Option<Cost>,
    /// The latest window's limits (gauges).
    pub limits: Option<crate::lavinmq::limits::Report>,
}

impl Instance {
    pub fn new(pid: u32, comm: &str) -> Instance {
        Instance {
            pid,
            comm: comm.to_string(),
            ..Instance::default()
        }
    }

    /// Adds one interval's sections (each holds what happened in that window only).
    pub fn add(&mut self, s: &Sections) {
        self.intervals += 1;
        if let Some(rows) = s.get::<syscalls::Section>().map(|x| &x.rows) {
            let all = self.syscalls.get_or_insert_default();
            for r in rows {
                let e = all.entry(r.name.clone()).or_default();
                e.calls += r.count;
                e.errors += r.errors;
                e.latency.add(r.count, r.total_ns, &r.buckets);
            }
        }
        if let Some(fsync::Section(rows)) = s.get() {
            let all = self.durability.get_or_insert_default();
            for r in rows {
                let key = DurabilityKey {
                    syscall: r.syscall,
                    class: class(r.kind),
                    flags: r.flags.clone(),
                };
                let mut buckets = [0; LATENCY_BUCKETS];
                for b in &r.histogram {
                    buckets[latency_bucket(b.lo_ns)] += b.count;
                }
                let e = all.entry(key).or_default();
                e.errors += r.errors;
                e.latency.add(r.count, r.total_ns, &buckets);
            }
        }
        if let Some(section) = s.get::<MmapSection>() {
            let m = self.mmap.get_or_insert_default();
            for r in &section.syscalls {
                let e = m.syscalls.entry(r.syscall).or_default();
                e.calls += r.count;
                e.errors += r.errors;
                e.bytes += r.bytes;
            }
            for f in &section.files {
                let Some(q) = &f.queue else { continue };
                let mut key = queue_labels(q);
                let named = m.queues.keys().filter(|k| k.1 != OTHER_QUEUES).count();
                if !m.queues.contains_key(&key) && named >= MAX_QUEUE_SERIES {
                    key = (OTHER_QUEUES.to_string(), OTHER_QUEUES.to_string());
                }
                let e = m.queues.entry(key).or_default();
                e.mmaps += f.mmaps;
                e.munmaps += f.munmaps;
                e.bytes_mapped += f.bytes;
            }
            m.live_mappings = section.live_mappings.or(m.live_mappings);
            m.max_map_count = section.max_map_count.or(m.max_map_count);
        }
        if let Some(section) = s.get::<sched::Section>() {
            let all = self.sched.get_or_insert_default();
            for r in &section.threads {
                all.on_cpu_ns += r.on_cpu_ns;
                all.runq_ns += r.runq_ns.total_ns;
                all.sleep_ns += r.sleep_ns;
                all.blocked_ns += r.blocked_ns;
                all.voluntary += r.switches_voluntary;
                all.involuntary += r.switches_involuntary;
                all.runq_latency
                    .add(r.runq_ns.count, r.runq_ns.total_ns, &r.runq_ns.buckets);
            }
        }
        if let Some(section) = s.get::<gc::Section>() {
            let g = self.gc.get_or_insert_default();
            let (p, st) = (&section.pause_ns, &section.stop_ns);
            g.pause.add(p.count, p.total_ns, &p.log2);
            g.stop.add(st.count, st.total_ns, &st.log2);
        }
        if let Some(section) = s.get::<crate::faults::FaultsSection>() {
            let all = self.faults.get_or_insert_default();
            for f in &section.files {
                let e = all.by_kind.entry(f.kind.clone()).or_default();
                e.0 += f.faults;
                e.1 = f.major.map(|m| e.1.unwrap_or(0) + m);
                e.2 = f.write_faults.map(|w| e.2.unwrap_or(0) + w);
            }
            for t in &section.writeback.throttle {
                all.throttled += t.count;
                all.throttle_pause_ms += t.pause_ms;
            }
            if let Some(w) = &section.writeback.stable_page_waits {
                all.stable_page_waits += w.iter().map(|r| r.count).sum::<u64>();
            }
        }
        if let Some(section) = s.get::<crate::amqp::AmqpSection>() {
            let a = self.amqp.get_or_insert_default();
            let t = &section.totals;
            for (kind, n) in [
                ("published", t.published),
                ("confirmed", t.confirmed),
                ("nacked", t.nacked),
                ("returned", t.returned),
                ("delivered", t.delivered),
                ("acked", t.acked),
                ("rejected", t.rejected),
            ] {
                *a.messages.entry(kind).or_default() += n;
            }
            for (dir, m) in [("in", &t.methods.inbound), ("out", &t.methods.outbound)] {
                for (name, n) in m {
                    *a.methods.entry((dir, *name)).or_default() += n;
                }
            }
            a.unsynced_bytes += t.unsynced_bytes;
            a.connections = section.connections.iter().filter(|c| c.open).count() as u64;
            a.tls_not_parsed = section.tls_not_parsed;
        }
        if let Some(section) = s.get::<TcpSection>() {
            let t = self.tcp.get_or_insert_default();
            // Every state is present, 0 when empty: a state's series must not vanish.
            t.states = TCP_STATES.iter().map(|s| (s.to_string(), 0)).collect();
            *t.states.entry("LISTEN".into()).or_default() += section.listening.len() as u64;
            for c in &section.connections {
                if c.open {
                    *t.states.entry(c.state.clone()).or_default() += 1;
                }
                // An interval's connection counters are those of its window.
                t.sent_bytes += c.bytes_sent;
                t.received_bytes += c.bytes_received;
                t.retransmits += c.retransmits;
                t.resets_sent += c.resets_sent;
                t.resets_received += c.resets_received;
            }
            for (pair, n) in &section.transitions {
                let (from, to) = pair.split_once("->").unwrap_or((pair.as_str(), ""));
                *t.transitions
                    .entry((from.to_string(), to.to_string()))
                    .or_default() += n;
            }
            t.opened += section.opened;
            t.closed += section.closed;
            t.evicted += section.evicted;
        }
        if let Some(l) = &s.limits {
            self.limits = Some(l.clone());
        }
        for (family, n) in &s.lost_events {
            *self.lost.entry(family).or_default() += n;
        }
        if let Some(o) = &s.overhead {
            let c = self.cost.get_or_insert_default();
            c.cpu_ns += o.lavtrace_cpu_ns;
            c.rss_bytes = o.lavtrace_rss_bytes;
            c.kernel_stats = o.kernel_stats;
            for p in &o.programs {
                let e = c.programs.entry(p.name.clone()).or_default();
                e.0 += p.runs;
                e.1 += p.run_time_ns;
            }
        }
    }
}

/// The states `ss` shows, as lavtrace names them.
pub const TCP_STATES: [&str; 11] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// The `file_class` label: the JSON `kind` names (a bounded set, unlike paths).
pub fn class(kind: Kind) -> &'static str {
    match kind {
        Kind::Segment => "segment",
        Kind::AckFile => "ack_file",
        Kind::Meta => "meta",
        Kind::Definitions => "definitions",
        Kind::DataDir => "data_dir",
        Kind::VhostDir => "vhost_dir",
        Kind::QueueDir => "queue_dir",
        Kind::File => "file",
        Kind::Anonymous => "anonymous",
        Kind::System => "system",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_series_are_bounded() {
        let file = |i: usize| crate::mmap::FileRow {
            path: format!("/d/v/q{i}/msgs.0000000001"),
            kind: Kind::Segment,
            mmaps: 1,
            munmaps: 0,
            mremaps: 0,
            madvises: 0,
            bytes: 4096,
            bytes_unmapped: 0,
            queue: Some(crate::storage::naming::QueueRef {
                vhost: Some("/".into()),
                vhost_hash: "42099b4af021e53fd8fd4e056c2568d7c2e3ffa8".into(),
                name: i.is_multiple_of(2).then(|| format!("q{i}")),
                hash: format!("{i:08}{:032}", 0),
            }),
            display: String::new(),
        };
        let section = MmapSection {
            syscalls: Vec::new(),
            kinds: Vec::new(),
            files: (0..MAX_QUEUE_SERIES + 5).map(file).collect(),
            live_mappings: None,
            max_map_count: None,
            map_count_warning: false,
            threads: None,
        };
        let mut i = Instance::new(1, "lavinmq");
        i.add(&Sections::default().with(section.clone()));
        i.add(&Sections::default().with(section));
        let q = &i.mmap.unwrap().queues;
        assert_eq!(q.len(), MAX_QUEUE_SERIES + 1);
        assert_eq!(q[&("/".into(), "q0".into())].mmaps, 2);
        assert_eq!(
            q[&("/".into(), format!("#{:08}", 1))].bytes_mapped,
            2 * 4096
        );
        let other = &q[&(OTHER_QUEUES.into(), OTHER_QUEUES.into())];
        assert_eq!(other.mmaps, 2 * 5);
    }

    #[test]
    fn class_names_are_the_json_kind_names() {
        for kind in [Kind::Segment, Kind::AckFile, Kind::DataDir, Kind::System] {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json.as_str(), Some(class(kind)));
        }
    }
}
