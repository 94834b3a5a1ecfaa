//! The exposition: every `lavtrace_*` family written from the current `Instance` at scrape
//! time, through prometheus-client's `Collector` (the kernel's log2 buckets are already
//! counted, so histograms are written as they are rather than re-observed).
//!
//! Series are labelled with the target's `comm` only: a broker restart (new pid) continues
//! the same series (a counter reset, which `rate()` handles) instead of starting new ones.
//! The pid is in `lavtrace_target_info`. Which host is Prometheus's own `instance` target
//! label, set in its scrape config; an exposed `instance` label would clash with it.

use std::sync::{Arc, Mutex};

use lavtrace_common::syscalls::LATENCY_BUCKETS;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use super::model::{Instance, Log2Histogram};

type Labels = Vec<(&'static str, String)>;

enum Value<'a> {
    Counter(u64),
    Seconds(f64),
    Gauge(u64),
    Histogram(&'a Log2Histogram),
    /// An OpenMetrics info sample: its labels are the data, the value is always 1.
    Info,
}

/// The collector registered once; the session swaps in each interval's figures.
#[derive(Debug, Clone, Default)]
pub struct Current(pub Arc<Mutex<Option<Instance>>>);

impl Current {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instance>> {
        // A panic elsewhere must not take the endpoint down with it: the data is plain counters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collector for Current {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match &*self.lock() {
            Some(i) => encode(&mut enc, i),
            None => Ok(()),
        }
    }
}

/// Upper bounds (`le`, seconds) of the log2 buckets: bucket `i` holds whole nanoseconds
/// below `2^(i+1)`; the last is open-ended.
pub fn upper_bounds() -> [f64; LATENCY_BUCKETS] {
    std::array::from_fn(|i| {
        if i + 1 == LATENCY_BUCKETS {
            f64::INFINITY
        } else {
            (1u64 << (i + 1)) as f64 / 1e9
        }
    })
}

struct Writer<'e, 'a> {
    enc: &'e mut DescriptorEncoder<'a>,
    /// `comm`, on every series.
    base: Labels,
}

impl Writer<'_, '_> {
    fn family<'v>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        series: impl IntoIterator<Item = (Labels, Value<'v>)>,
    ) -> Result<(), std::fmt::Error> {
        let mut series = series.into_iter().peekable();
        let kind = match series.peek().map(|(_, v)| v) {
            Some(Value::Counter(_) | Value::Seconds(_)) => MetricType::Counter,
            Some(Value::Gauge(_)) => MetricType::Gauge,
            Some(Value::Histogram(_)) => MetricType::Histogram,
            Some(Value::Info) => MetricType::Info,
            None => return Ok(()),
        };
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, value) in series {
            let mut all = self.base.clone();
            all.extend(labels);
            match value {
                Value::Info => m.encode_info(&all)?,
                Value::Counter(n) => m
                    .encode_family(&all)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?,
                Value::Seconds(s) => m
                    .encode_family(&all)?
                    .encode_counter::<NoLabelSet, _, f64>(&s, None)?,
                Value::Gauge(n) => m.encode_family(&all)?.encode_gauge(&(n as i64))?,
                Value::Histogram(h) => {
                    let buckets: Vec<(f64, u64)> =
                        upper_bounds().into_iter().zip(h.buckets).collect();
                    m.encode_family(&all)?.encode_histogram::<NoLabelSet>(
                        h.sum_ns as f64 / 1e9,
                        h.count,
                        &buckets,
                        None,
                    )?
                }
            }
        }
        Ok(())
    }
}

fn one(v: Value<'_>) -> Option<(Labels, Value<'_>)> {
    Some((Vec::new(), v))
}

fn encode(enc: &mut DescriptorEncoder, i: &Instance) -> Result<(), std::fmt::Error> {
    let mut w = Writer {
        enc,
        base: vec![("comm", i.comm.clone())],
    };
    w.family(
        "lavtrace_target",
        "The process traced now: its pid changes when the broker restarts, its series do not.",
        None,
        Some((vec![("pid", i.pid.to_string())], Value::Info)),
    )?;
    w.family(
        "lavtrace_intervals",
        "Intervals reported since attach (the figures below are as of the last one).",
        None,
        one(Value::Counter(i.intervals)),
    )?;
    if let Some(all) = &i.syscalls {
        let by = |f: fn(&super::model::SyscallSeries) -> Value<'_>| {
            all.iter()
                .map(move |(name, s)| (vec![("syscall", name.clone())], f(s)))
        };
        w.family(
            "lavtrace_syscalls",
            "Syscalls of the target that returned (entry seen after attach).",
            None,
            by(|s| Value::Counter(s.calls)),
        )?;
        w.family(
            "lavtrace_syscall_errors",
            "Syscalls that returned an error (-4095..-1).",
            None,
            by(|s| Value::Counter(s.errors)),
        )?;
        w.family(
            "lavtrace_syscall_latency",
            "Syscall latency, entry to return (the kernel's log2 buckets).",
            Some(Unit::Seconds),
            by(|s| Value::Histogram(&s.latency)),
        )?;
    }
    if let Some(all) = &i.durability {
        let labels = |k: &super::model::DurabilityKey| {
            let mut l = vec![
                ("syscall", k.syscall.to_string()),
                ("file_class", k.class.to_string()),
            ];
            if let Some(flags) = &k.flags {
                l.push(("flags", flags.clone()));
            }
            l
        };
        w.family(
            "lavtrace_durability_call_latency",
            "Durability calls (fsync, fdatasync, syncfs, sync, sync_file_range, msync) by \
             file class: latency.",
            Some(Unit::Seconds),
            all.iter()
                .map(|(k, s)| (labels(k), Value::Histogram(&s.latency))),
        )?;
        w.family(
            "lavtrace_durability_call_errors",
            "Durability calls that returned an error.",
            None,
            all.iter()
                .map(|(k, s)| (labels(k), Value::Counter(s.errors))),
        )?;
    }
    if let Some(m) = &i.mmap {
        let by = |f: fn(&super::model::MapSeries) -> u64| {
            m.syscalls
                .iter()
                .map(move |(name, s)| (vec![("syscall", name.to_string())], Value::Counter(f(s))))
        };
        w.family(
            "lavtrace_mmap_calls",
            "Mapping calls (mmap, munmap, mremap, madvise, brk).",
            None,
            by(|s| s.calls),
        )?;
        w.family(
            "lavtrace_mmap_errors",
            "Mapping calls that failed.",
            None,
            by(|s| s.errors),
        )?;
        w.family(
            "lavtrace_mmap",
            "Bytes of successful mapping calls (lengths; mremap: new length; brk: distance moved).",
            Some(Unit::Bytes),
            by(|s| s.bytes),
        )?;
        let per_queue = |f: fn(&super::model::QueueSeries) -> u64| {
            m.queues.iter().map(move |((vhost, queue), s)| {
                (
                    vec![("vhost", vhost.clone()), ("queue", queue.clone())],
                    Value::Counter(f(s)),
                )
            })
        };
        w.family(
            "lavtrace_queue_mmaps",
            "mmap calls on a queue's segment and ack files (at most 100 queues, then \
             vhost=queue=\"(other)\").",
            None,
            per_queue(|s| s.mmaps),
        )?;
        w.family(
            "lavtrace_queue_munmaps",
            "munmap calls on a queue's files.",
            None,
            per_queue(|s| s.munmaps),
        )?;
        w.family(
            "lavtrace_queue_mapped",
            "Bytes mapped from a queue's files (mmap lengths, mremap growth).",
            Some(Unit::Bytes),
            per_queue(|s| s.bytes_mapped),
        )?;
        w.family(
            "lavtrace_live_mappings",
            "Mappings of the target (lines of /proc/PID/maps), what vm.max_map_count limits.",
            None,
            m.live_mappings.and_then(|n| one(Value::Gauge(n))),
        )?;
        w.family(
            // Not `_count`: that suffix belongs to histograms and summaries (promtool says so).
            "lavtrace_vm_max_map_limit",
            "The kernel's vm.max_map_count: the limit of lavtrace_live_mappings.",
            None,
            m.max_map_count.and_then(|n| one(Value::Gauge(n))),
        )?;
    }
    if let Some(r) = &i.limits {
        limits(&mut w, r, i.mmap.is_none())?;
    }
    if let Some(a) = &i.amqp {
        w.family(
            "lavtrace_amqp_messages",
            "AMQP messages of the target's connections by kind (amqp family): published, \
             confirmed, nacked, returned (by the broker), delivered (deliver and get-ok), acked, \
             rejected (by consumers); a multiple ack counts the tags it covers.",
            None,
            a.messages
                .iter()
                .map(|(k, &n)| (vec![("kind", k.to_string())], Value::Counter(n))),
        )?;
        w.family(
            "lavtrace_amqp_methods",
            "AMQP method frames of the target's connections, by direction (in: client to \
             broker) and method name.",
            None,
            a.methods.iter().map(|((d, m), &n)| {
                (
                    vec![("direction", d.to_string()), ("method", m.to_string())],
                    Value::Counter(n),
                )
            }),
        )?;
        w.family(
            "lavtrace_amqp_unsynced",
            "Bytes of the target's AMQP connections not parsed: before a connection was in \
             sync (open before attach, or after a desync), or past the walk's bound.",
            Some(Unit::Bytes),
            one(Value::Counter(a.unsynced_bytes)),
        )?;
        w.family(
            "lavtrace_amqp_connections",
            "AMQP connections of the target open now (amqp family).",
            None,
            one(Value::Gauge(a.connections)),
        )?;
        w.family(
            "lavtrace_amqp_tls_connections",
            "Connections of the target on the AMQPS port (5671): TLS, not parsed.",
            None,
            one(Value::Gauge(a.tls_not_parsed)),
        )?;
    }
    if let Some(sc) = &i.sched {
        w.family(
            "lavtrace_sched_thread",
            "Time of the target's threads by where it went (sched family), summed over threads: \
             on_cpu, runq (runnable, waiting for a CPU), sleep (S), blocked (D).",
            Some(Unit::Seconds),
            [
                ("on_cpu", sc.on_cpu_ns),
                ("runq", sc.runq_ns),
                ("sleep", sc.sleep_ns),
                ("blocked", sc.blocked_ns),
            ]
            .map(|(state, ns)| {
                (
                    vec![("state", state.to_string())],
                    Value::Seconds(ns as f64 / 1e9),
                )
            }),
        )?;
        w.family(
            "lavtrace_sched_switches",
            "Context switches of the target's threads: voluntary (it waited) or involuntary \
             (preempted).",
            None,
            [("voluntary", sc.voluntary), ("involuntary", sc.involuntary)]
                .map(|(kind, n)| (vec![("kind", kind.to_string())], Value::Counter(n))),
        )?;
        w.family(
            "lavtrace_sched_runq_latency",
            "Run-queue latency of the target's threads: runnable (woken or preempted) until on a \
             CPU (the kernel's log2 buckets).",
            Some(Unit::Seconds),
            one(Value::Histogram(&sc.runq_latency)),
        )?;
    }
    if let Some(g) = &i.gc {
        w.family(
            "lavtrace_gc_pause",
            "Stop-the-world pauses of the target's Boehm GC (gc family): first suspend signal \
             to the last thread resumed (the kernel's log2 buckets; _count is the pauses).",
            Some(Unit::Seconds),
            one(Value::Histogram(&g.pause)),
        )?;
        w.family(
            "lavtrace_gc_stop",
            "Time to stop the world in each GC pause: first suspend signal to the last thread \
             parked.",
            Some(Unit::Seconds),
            one(Value::Histogram(&g.stop)),
        )?;
    }
    if let Some(f) = &i.faults {
        w.family(
            "lavtrace_page_faults",
            "Page faults of the target (faults family), by the kind of mapping they hit \
             (segment, ack file, file, heap, stack, anonymous...).",
            None,
            f.by_kind
                .iter()
                .map(|(kind, n)| (vec![("kind", kind.clone())], Value::Counter(n.0))),
        )?;
        w.family(
            "lavtrace_page_faults_major",
            "Of them, the faults the kernel accounted as major (it read the page from disk); \
             absent where the kernel cannot tell.",
            None,
            f.by_kind.iter().filter_map(|(kind, n)| {
                n.1.map(|m| (vec![("kind", kind.clone())], Value::Counter(m)))
            }),
        )?;
        w.family(
            "lavtrace_page_faults_write",
            "Of them, the faults on a write access; absent where the kernel cannot tell.",
            None,
            f.by_kind.iter().filter_map(|(kind, n)| {
                n.2.map(|m| (vec![("kind", kind.clone())], Value::Counter(m)))
            }),
        )?;
        w.family(
            "lavtrace_dirty_throttled",
            "balance_dirty_pages records of the target's threads (over their dirty limit).",
            None,
            one(Value::Counter(f.throttled)),
        )?;
        w.family(
            "lavtrace_dirty_throttle_pause",
            "Time the kernel paused the target's writers in balance_dirty_pages.",
            Some(Unit::Seconds),
            one(Value::Seconds(f.throttle_pause_ms as f64 / 1e3)),
        )?;
        w.family(
            "lavtrace_stable_page_waits",
            "Waits of the target's threads for a page under writeback before writing it.",
            None,
            one(Value::Counter(f.stable_page_waits)),
        )?;
    }
    if let Some(t) = &i.tcp {
        w.family(
            "lavtrace_tcp_connections",
            "TCP connections of the target now, by state (LISTEN: listening sockets).",
            None,
            t.states
                .iter()
                .map(|(s, &n)| (vec![("state", s.clone())], Value::Gauge(n))),
        )?;
        w.family(
            "lavtrace_tcp_transitions",
            "TCP state transitions of the target's connections.",
            None,
            t.transitions.iter().map(|((from, to), &n)| {
                (
                    vec![("from", from.clone()), ("to", to.clone())],
                    Value::Counter(n),
                )
            }),
        )?;
        for (name, help, n) in [
            (
                "lavtrace_tcp_connections_opened",
                "TCP connections opened (connect or accept seen).",
                t.opened,
            ),
            (
                "lavtrace_tcp_connections_closed",
                "TCP connections destroyed.",
                t.closed,
            ),
            (
                "lavtrace_tcp_connections_evicted",
                "Closed TCP connections dropped from lavtrace's table (still counted).",
                t.evicted,
            ),
            (
                "lavtrace_tcp_retransmits",
                "TCP retransmits on the target's connections.",
                t.retransmits,
            ),
        ] {
            w.family(name, help, None, one(Value::Counter(n)))?;
        }
        w.family(
            "lavtrace_tcp_sent",
            "Payload bytes the target sent on its TCP sockets that the peer acknowledged (tcpi_bytes_acked, SYN and FIN excluded).",
            Some(Unit::Bytes),
            one(Value::Counter(t.sent_bytes)),
        )?;
        w.family(
            "lavtrace_tcp_received",
            "Payload bytes the target's TCP sockets received in sequence (tcpi_bytes_received, FIN excluded).",
            Some(Unit::Bytes),
            one(Value::Counter(t.received_bytes)),
        )?;
        w.family(
            "lavtrace_tcp_resets",
            "TCP resets on the target's connections, sent or received.",
            None,
            [
                (
                    vec![("direction", "sent".into())],
                    Value::Counter(t.resets_sent),
                ),
                (
                    vec![("direction", "received".into())],
                    Value::Counter(t.resets_received),
                ),
            ],
        )?;
    }
    w.family(
        "lavtrace_lost_events",
        "Events the kernel could not record or deliver, per probe family.",
        None,
        i.lost
            .iter()
            .map(|(f, &n)| (vec![("family", f.to_string())], Value::Counter(n))),
    )?;
    if let Some(c) = &i.cost {
        w.family(
            "lavtrace_cpu",
            "CPU time (user + system) lavtrace itself used.",
            Some(Unit::Seconds),
            one(Value::Seconds(c.cpu_ns as f64 / 1e9)),
        )?;
        w.family(
            "lavtrace_rss",
            "lavtrace's resident memory.",
            Some(Unit::Bytes),
            one(Value::Gauge(c.rss_bytes)),
        )?;
        if c.kernel_stats {
            w.family(
                "lavtrace_bpf_program_runs",
                "Runs of each lavtrace kernel program (every process's calls that hit the hook).",
                None,
                c.programs
                    .iter()
                    .map(|(p, &(runs, _))| (vec![("program", p.clone())], Value::Counter(runs))),
            )?;
            w.family(
                "lavtrace_bpf_program_run",
                "Kernel run time of each lavtrace program: the cost added to the traced system.",
                Some(Unit::Seconds),
                c.programs.iter().map(|(p, &(_, ns))| {
                    (
                        vec![("program", p.clone())],
                        Value::Seconds(ns as f64 / 1e9),
                    )
                }),
            )?;
        }
    }
    Ok(())
}

/// The target's fds, disk and (when the mmap family does not already export them) mappings,
/// against their limits, and which are past `limits::WARN_PERCENT`.
fn limits(
    w: &mut Writer<'_, '_>,
    r: &crate::lavinmq::limits::Report,
    mappings_too: bool,
) -> Result<(), std::fmt::Error> {
    use crate::lavinmq::limits::Warning;
    let l = &r.limits;
    let gauge = |v: Option<u64>| v.and_then(|n| one(Value::Gauge(n)));
    w.family(
        "lavtrace_open_fds",
        "Open fds of the target (entries of /proc/PID/fd), what the open-files limit caps.",
        None,
        gauge(l.fds_open),
    )?;
    w.family(
        "lavtrace_open_fds_limit",
        "The target's open-files soft limit (absent when unlimited).",
        None,
        gauge(l.fd_limit),
    )?;
    if mappings_too {
        w.family(
            "lavtrace_live_mappings",
            "Mappings of the target (lines of /proc/PID/maps), what vm.max_map_count limits.",
            None,
            gauge(l.mappings),
        )?;
        w.family(
            "lavtrace_vm_max_map_limit",
            "The kernel's vm.max_map_count: the limit of lavtrace_live_mappings.",
            None,
            gauge(l.max_map_count),
        )?;
    }
    w.family(
        "lavtrace_data_dir_disk_free",
        "Free space (for unprivileged writers) of the filesystem holding the data dir.",
        Some(Unit::Bytes),
        gauge(l.disk_free_bytes),
    )?;
    w.family(
        "lavtrace_data_dir_disk_size",
        "Size of the filesystem holding the data dir.",
        Some(Unit::Bytes),
        gauge(l.disk_size_bytes),
    )?;
    w.family(
        "lavtrace_data_dir",
        "Disk space the data dir takes (allocated blocks, as du counts them).",
        Some(Unit::Bytes),
        gauge(l.data_dir_bytes),
    )?;
    w.family(
        "lavtrace_limit_warning",
        "1 while a figure is at or past 80 % of its limit (fds, mappings, disk), else 0.",
        None,
        [
            ("fds", Warning::Fds),
            ("mappings", Warning::Mappings),
            ("disk", Warning::Disk),
        ]
        .map(|(name, which)| {
            (
                vec![("limit", name.to_string())],
                Value::Gauge(u64::from(r.warnings.contains(&which))),
            )
        }),
    )
}
