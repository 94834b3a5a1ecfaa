//! `--metrics ADDR`: an OpenMetrics / Prometheus text endpoint at `GET /metrics`, so one
//! lavtrace per broker node is scraped by the Prometheus the operators already run. Figures
//! are cumulative since attach, folded in from each interval's sections (see `model`), and
//! carry the target's `comm`. With `--follow`, a restarted target continues the same series
//! from 0 (a counter reset, as a restarted exporter's), and `lavtrace_target_info` shows its
//! new `pid`.
//!
//! The address is bound before anything is attached: a taken port is one error line and
//! exit 6, not a tracer that runs without the endpoint it was asked for.

pub mod addr;
mod encode;
mod model;

use std::{net::SocketAddr, sync::Arc, thread, time::Duration};

use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::{error::Fatal, output::Sections, target::Target};
use encode::Current;
use model::Instance;

/// OpenMetrics 1.0 text, for scrapers that ask for it (Prometheus does).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for everything else (curl, older scrapers).
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running endpoint; clones feed the same one.
#[derive(Clone)]
pub struct Exporter {
    current: Current,
}

/// Clients served at once; more wait in the kernel's accept queue. With the one thread below
/// this bounds the endpoint's memory (a request head each, a body being written).
const MAX_CLIENTS: usize = 128;
/// A client has this long for its whole exchange: one that connects and sends nothing, or
/// reads the body slowly, loses its slot after it, not a thread forever.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this is no scrape.
const MAX_HEAD: usize = 8 << 10;

impl Exporter {
    /// Binds `addr` and serves it on its own thread until lavtrace exits.
    pub fn serve(addr: SocketAddr) -> Result<Exporter> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Fatal::Metrics(format!("--metrics {addr}: cannot listen: {e}")))?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("serving metrics on {addr}"))?;
        let current = Current::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(current.clone()));
        let registry = Arc::new(registry);
        // One thread with its own single-threaded runtime, whatever the number of clients:
        // scrapes never wait on the session's runtime, nor the session on them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the metrics runtime")?;
        thread::Builder::new()
            .name("lavtrace-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => accept(listener, registry).await,
                        Err(e) => warn!("metrics endpoint stopped: {e}"),
                    }
                })
            })
            .context("starting the metrics thread")?;
        info!(%addr, "serving metrics at /metrics");
        Ok(Exporter { current })
    }

    /// Folds one interval's sections into the figures of `target`'s instance.
    pub fn observe(&self, target: &Target, sections: &Sections) {
        let mut current = self.current.lock();
        let instance = match current.as_mut() {
            Some(i) if i.pid == target.pid => i,
            _ => current.insert(Instance::new(target.pid, &target.comm)),
        };
        instance.add(sections);
    }
}

async fn accept(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: a moment later there may be room again.
                debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CLIENT_TIMEOUT, exchange(stream, &registry)).await {
                Ok(Err(e)) => debug!("metrics client: {e}"),
                Err(_) => debug!("metrics client too slow: dropped after {CLIENT_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// One request, one response, then the connection is closed (`Connection: close`).
async fn exchange(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let (status, content_type, body, send_body) = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => break respond(&req, registry),
            Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => continue,
            Ok(httparse::Status::Partial) | Err(_) => {
                break ("400 Bad Request", PLAIN, "bad request\n".to_string(), true);
            }
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Status, content type, body, and whether the body is sent (not for HEAD).
fn respond(
    req: &httparse::Request<'_, '_>,
    registry: &Registry,
) -> (&'static str, &'static str, String, bool) {
    let path = req
        .path
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let method = req.method.unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let openmetrics = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("Accept")
                    && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
            });
            match exposition(registry, openmetrics) {
                Ok(body) => (
                    "200 OK",
                    if openmetrics { OPENMETRICS } else { PROMETHEUS },
                    body,
                    method == "GET",
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    PLAIN,
                    "encoding failed\n".into(),
                    true,
                ),
            }
        }
        (_, "/metrics") => ("405 Method Not Allowed", PLAIN, "GET only\n".into(), true),
        _ => (
            "404 Not Found",
            PLAIN,
            "lavtrace: metrics are at /metrics\n".into(),
            true,
        ),
    }
}

fn exposition(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lavtrace_common::syscalls::{SyscallStats, latency_bucket};

    use super::*;
    use crate::{
        overhead::{Overhead, ProgramCost},
        syscalls::SyscallRow,
    };

    fn target(pid: u32) -> Target {
        Target {
            pid,
            comm: "lavinmq".into(),
            threads: 1,
        }
    }

    /// One interval's sections: `getppid` calls of the given durations, 2 of them failing.
    fn interval(durations_ns: &[u64], lost: u64) -> Sections {
        let mut w = SyscallStats::default();
        for &ns in durations_ns {
            w.count += 1;
            w.total_ns += ns;
            w.max_ns = w.max_ns.max(ns);
            w.buckets[latency_bucket(ns)] += 1;
        }
        w.errors = 2;
        let mut s = Sections::default().with(crate::syscalls::Section {
            rows: vec![SyscallRow::new(libc::SYS_getppid as u32, &w, None)],
            threads: None,
            ..Default::default()
        });
        s.overhead = Some(Overhead {
            lavtrace_cpu_ns: 1_500_000,
            lavtrace_cpu_pct: Some(0.15),
            lavtrace_rss_bytes: 4096,
            kernel_stats: true,
            kernel_stats_share: Some(1.0),
            kernel_ns: 300,
            kernel_cpu_pct: Some(0.0),
            programs: vec![ProgramCost {
                name: "syscalls_exit".into(),
                runs: 3,
                run_time_ns: 300,
                ns_per_run: 100,
            }],
        });
        s.lost_events.insert("syscalls", lost);
        s
    }

    pub(super) fn scrape(e: &Exporter, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(e.current.clone()));
        exposition(&registry, openmetrics).unwrap()
    }

    fn lines_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect()
    }

    #[test]
    fn gc_pauses_are_a_histogram_whose_count_is_the_pauses() {
        let e = Exporter {
            current: Current::default(),
        };
        let mut s = Sections::default().with(crate::gc::section_of(&[2_000_000, 40_000_000]));
        s.lost_events.insert("gc", 0);
        e.observe(&target(42), &s);
        let mut s = Sections::default().with(crate::gc::section_of(&[3_000_000]));
        s.lost_events.insert("gc", 0);
        e.observe(&target(42), &s);
        let text = scrape(&e, true);
        let c = r#"comm="lavinmq""#;
        assert!(
            text.contains(&format!("lavtrace_gc_pause_seconds_count{{{c}}} 3")),
            "{text}"
        );
        assert!(
            text.contains(&format!("lavtrace_gc_pause_seconds_sum{{{c}}} 0.045")),
            "{text}"
        );
        assert!(
            text.contains(&format!("lavtrace_gc_stop_seconds_count{{{c}}} 3")),
            "{text}"
        );
    }

    #[test]
    fn sched_threads_add_up_into_series_with_bounded_labels() {
        use lavtrace_common::sched::{ThreadSched, state};
        let e = Exporter {
            current: Current::default(),
        };
        let thread = |tid: u32, runq: u64| {
            let mut t = ThreadSched {
                on_cpu_ns: 1_000_000,
                sleep_ns: 2_000_000,
                blocked_ns: 500,
                voluntary: 3,
                involuntary: 1,
                runq_count: 1,
                runq_total_ns: runq,
                runq_max_ns: runq,
                ..ThreadSched::default()
            };
            t.runq_buckets[latency_bucket(runq)] = 1;
            crate::sched::ThreadRow::new(tid, None, &t, state::SLEEP)
        };
        let mut s = Sections::default().with(crate::sched::Section {
            threads: vec![thread(7, 3_000), thread(8, 5_000)],
            table_full: 0,
            missed: 0,
        });
        s.lost_events.insert("sched", 0);
        e.observe(&target(42), &s);
        let text = scrape(&e, true);
        let c = r#"comm="lavinmq""#;
        assert_eq!(
            lines_of(&text, "lavtrace_sched_switches_total"),
            [
                format!(r#"lavtrace_sched_switches_total{{{c},kind="voluntary"}} 6"#),
                format!(r#"lavtrace_sched_switches_total{{{c},kind="involuntary"}} 2"#),
            ]
        );
        assert!(
            text.contains(&format!(
                r#"lavtrace_sched_thread_seconds_total{{{c},state="on_cpu"}} 0.002"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "lavtrace_sched_runq_latency_seconds_count{{{c}}} 2"
            )),
            "{text}"
        );
        // No tid or thread label anywhere.
        assert!(!text.contains("tid="), "{text}");
    }

    #[test]
    fn faults_add_up_per_kind_of_mapping() {
        let e = Exporter {
            current: Current::default(),
        };
        let row =
            |path: &str, kind: &str, faults: u64, major: Option<u64>| crate::faults::FileRow {
                path: path.into(),
                kind: kind.into(),
                display: path.into(),
                queue: None,
                faults,
                major,
                minor: major.map(|m| faults - m),
                write_faults: Some(faults),
                pages_faulted: faults,
                fault_time_ns: None,
                resident_pages: None,
            };
        let mut s = Sections::default().with(crate::faults::FaultsSection {
            files: vec![
                row("/d/q1/msgs.0000000001", "segment", 10, Some(1)),
                row("/d/q2/msgs.0000000001", "segment", 5, Some(0)),
                row("[heap]", "heap", 3, Some(0)),
            ],
            kernel_counted: None,
            writeback: Default::default(),
            table_full: 0,
        });
        s.lost_events.insert("faults", 0);
        e.observe(&target(42), &s);
        let text = scrape(&e, true);
        let c = r#"comm="lavinmq""#;
        assert_eq!(
            lines_of(&text, "lavtrace_page_faults_total"),
            [
                format!(r#"lavtrace_page_faults_total{{{c},kind="heap"}} 3"#),
                format!(r#"lavtrace_page_faults_total{{{c},kind="segment"}} 15"#),
            ]
        );
        assert!(
            text.contains(&format!(
                r#"lavtrace_page_faults_major_total{{{c},kind="segment"}} 1"#
            )),
            "{text}"
        );
        // No path label: files are unbounded.
        assert!(!text.contains("msgs."), "{text}");
    }

    #[test]
    fn amqp_connections_add_up_into_series_with_bounded_labels() {
        use crate::amqp::report;
        use lavtrace_common::amqp::{Counters, method_slot};
        let e = Exporter {
            current: Current::default(),
        };
        let conn = |published: u64| {
            let mut c = Counters {
                published,
                confirmed: published,
                unsynced_bytes: [3, 4],
                ..Counters::default()
            };
            c.methods[0][method_slot(60, 40)] = published as u32;
            let id = report::Identity {
                local: None,
                remote: None,
                seeded: false,
                tls: false,
                vhost: Some("/"),
                close: None,
                channels_opened: 1,
                channels_closed: 0,
                blocked: 0,
                unblocked: 0,
                blocked_ns: 0,
            };
            report::conn_row(9, id, &c, &c, true)
        };
        let section = report::section(
            "uprobe",
            None,
            &[5672],
            vec![conn(5), conn(7)],
            report::KernelDiag::default(),
            report::Tls {
                not_parsed: 1,
                ..report::Tls::default()
            },
        );
        let mut s = Sections::default().with(section);
        s.lost_events.insert("amqp", 0);
        e.observe(&target(42), &s);
        let text = scrape(&e, true);
        let c = r#"comm="lavinmq""#;
        for want in [
            format!(r#"lavtrace_amqp_messages_total{{{c},kind="published"}} 12"#),
            format!(r#"lavtrace_amqp_messages_total{{{c},kind="confirmed"}} 12"#),
            format!(
                r#"lavtrace_amqp_methods_total{{{c},direction="in",method="basic.publish"}} 12"#
            ),
            format!("lavtrace_amqp_unsynced_bytes_total{{{c}}} 14"),
            format!("lavtrace_amqp_connections{{{c}}} 2"),
            format!("lavtrace_amqp_tls_connections{{{c}}} 1"),
        ] {
            assert!(text.contains(&want), "{want} in {text}");
        }
        // No per-connection label anywhere.
        assert!(!text.contains("fd="), "{text}");
    }

    #[test]
    fn intervals_add_up_into_counters_and_a_cumulative_histogram() {
        let e = Exporter {
            current: Current::default(),
        };
        assert_eq!(
            scrape(&e, true),
            "# EOF\n",
            "nothing before the first interval"
        );
        e.observe(&target(42), &interval(&[300, 300, 1500], 1));
        e.observe(&target(42), &interval(&[700], 2));
        let text = scrape(&e, true);
        let l = r#"comm="lavinmq",syscall="getppid""#;
        assert_eq!(
            lines_of(&text, "lavtrace_syscalls_total"),
            [format!("lavtrace_syscalls_total{{{l}}} 4")]
        );
        assert_eq!(
            lines_of(&text, "lavtrace_syscall_errors_total"),
            [format!("lavtrace_syscall_errors_total{{{l}}} 4")]
        );
        let h = "lavtrace_syscall_latency_seconds";
        assert_eq!(
            lines_of(&text, &format!("{h}_count")),
            [format!("{h}_count{{{l}}} 4")]
        );
        assert_eq!(
            lines_of(&text, &format!("{h}_sum")),
            [format!("{h}_sum{{{l}}} 0.0000028")]
        );
        let buckets = lines_of(&text, &format!("{h}_bucket"));
        assert_eq!(buckets.len(), 32);
        // 300 ns: bucket 8 (256..511, le 512 ns); 700: bucket 9; 1500: bucket 10.
        assert_eq!(buckets[7], format!("{h}_bucket{{le=\"2.56e-7\",{l}}} 0"));
        assert_eq!(buckets[8], format!("{h}_bucket{{le=\"5.12e-7\",{l}}} 2"));
        assert_eq!(
            buckets[9],
            format!("{h}_bucket{{le=\"0.000001024\",{l}}} 3")
        );
        assert_eq!(
            buckets[10],
            format!("{h}_bucket{{le=\"0.000002048\",{l}}} 4")
        );
        assert_eq!(buckets[31], format!("{h}_bucket{{le=\"+Inf\",{l}}} 4"));
        assert!(text.contains("# TYPE lavtrace_syscall_latency_seconds histogram\n"));
        assert!(text.contains("# UNIT lavtrace_syscall_latency_seconds seconds\n"));

        let base = r#"comm="lavinmq""#;
        for (name, value) in [
            ("lavtrace_intervals_total", "2".to_string()),
            ("lavtrace_cpu_seconds_total", "0.003".into()),
            ("lavtrace_rss_bytes", "4096".into()),
        ] {
            assert_eq!(lines_of(&text, name), [format!("{name}{{{base}}} {value}")]);
        }
        assert_eq!(
            lines_of(&text, "lavtrace_lost_events_total"),
            [format!(
                "lavtrace_lost_events_total{{{base},family=\"syscalls\"}} 3"
            )]
        );
        assert_eq!(
            lines_of(&text, "lavtrace_bpf_program_runs_total"),
            [format!(
                "lavtrace_bpf_program_runs_total{{{base},program=\"syscalls_exit\"}} 6"
            )]
        );
        assert_eq!(
            lines_of(&text, "lavtrace_bpf_program_run_seconds_total"),
            [format!(
                "lavtrace_bpf_program_run_seconds_total{{{base},program=\"syscalls_exit\"}} 6e-7"
            )]
        );
        assert_eq!(
            lines_of(&text, "lavtrace_target_info"),
            [r#"lavtrace_target_info{comm="lavinmq",pid="42"} 1"#]
        );
        assert!(text.contains("# TYPE lavtrace_target info\n"));
        assert!(text.ends_with("# EOF\n"));

        // The classic format carries the same samples, without the OpenMetrics EOF.
        let plain = scrape(&e, false);
        assert_eq!(
            lines_of(&plain, "lavtrace_syscalls_total"),
            [format!("lavtrace_syscalls_total{{{l}}} 4")]
        );
        assert!(!plain.contains("# EOF"));
    }

    #[test]
    fn a_restarted_target_continues_the_series_from_zero() {
        let e = Exporter {
            current: Current::default(),
        };
        e.observe(&target(42), &interval(&[300], 0));
        e.observe(&target(43), &interval(&[300, 300], 0));
        let text = scrape(&e, true);
        assert!(!text.contains(r#"pid="42""#), "{text}");
        assert!(text.contains(r#"lavtrace_target_info{comm="lavinmq",pid="43"} 1"#));
        assert!(text.contains(r#"lavtrace_syscalls_total{comm="lavinmq",syscall="getppid"} 2"#));
        assert!(text.contains(r#"lavtrace_intervals_total{comm="lavinmq"} 1"#));
    }

    #[test]
    fn durability_mapping_and_tcp_families_are_labelled() {
        let mut i = Instance::new(7, "lavinmq");
        let mut h = model::Log2Histogram {
            count: 3,
            sum_ns: 3_000_000,
            ..model::Log2Histogram::default()
        };
        h.buckets[19] = 3; // 524 µs .. 1.05 ms
        i.durability = Some(BTreeMap::from([(
            model::DurabilityKey {
                syscall: "msync",
                class: "segment",
                flags: Some("MS_SYNC".into()),
            },
            model::DurabilitySeries {
                errors: 1,
                latency: h,
            },
        )]));
        let mut m = model::Mmap {
            live_mappings: Some(41),
            max_map_count: Some(65530),
            ..model::Mmap::default()
        };
        m.syscalls.insert(
            "mmap",
            model::MapSeries {
                calls: 6,
                errors: 0,
                bytes: 1 << 20,
            },
        );
        i.mmap = Some(m);
        let mut t = model::Tcp::default();
        t.states.insert("ESTABLISHED".into(), 3);
        t.transitions
            .insert(("SYN_RECV".into(), "ESTABLISHED".into()), 4);
        t.resets_received = 1;
        i.tcp = Some(t);
        let e = Exporter {
            current: Current(std::sync::Arc::new(std::sync::Mutex::new(Some(i)))),
        };
        let text = scrape(&e, true);
        let b = r#"comm="lavinmq""#;
        for line in [
            format!(
                "lavtrace_durability_call_latency_seconds_count{{{b},syscall=\"msync\",file_class=\"segment\",flags=\"MS_SYNC\"}} 3"
            ),
            format!(
                "lavtrace_durability_call_latency_seconds_bucket{{le=\"0.001048576\",{b},syscall=\"msync\",file_class=\"segment\",flags=\"MS_SYNC\"}} 3"
            ),
            format!(
                "lavtrace_durability_call_errors_total{{{b},syscall=\"msync\",file_class=\"segment\",flags=\"MS_SYNC\"}} 1"
            ),
            format!("lavtrace_mmap_calls_total{{{b},syscall=\"mmap\"}} 6"),
            format!("lavtrace_mmap_bytes_total{{{b},syscall=\"mmap\"}} 1048576"),
            format!("lavtrace_live_mappings{{{b}}} 41"),
            format!("lavtrace_vm_max_map_limit{{{b}}} 65530"),
            format!("lavtrace_tcp_connections{{{b},state=\"ESTABLISHED\"}} 3"),
            format!("lavtrace_tcp_transitions_total{{{b},from=\"SYN_RECV\",to=\"ESTABLISHED\"}} 4"),
            format!("lavtrace_tcp_resets_total{{{b},direction=\"received\"}} 1"),
            "# TYPE lavtrace_live_mappings gauge".into(),
            "# UNIT lavtrace_mmap_bytes bytes".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        // Not traced: not exposed.
        assert!(!text.contains("lavtrace_syscalls_total"));
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;
    use crate::lavinmq::limits::{Limits, Report, Warning};

    #[test]
    fn limits_are_gauges_with_their_warnings() {
        let mut i = Instance::new(7, "lavinmq");
        i.limits = Some(Report {
            limits: Limits {
                fd_limit: Some(1024),
                fds_open: Some(900),
                max_map_count: Some(65530),
                mappings: Some(120),
                disk_free_bytes: Some(10 << 30),
                disk_size_bytes: Some(50 << 30),
                disk_used_bytes: Some(40 << 30),
                data_dir_bytes: Some(1 << 20),
            },
            data_dir: Some("/var/lib/lavinmq".into()),
            warnings: vec![Warning::Fds, Warning::Disk],
        });
        let e = Exporter {
            current: Current(std::sync::Arc::new(std::sync::Mutex::new(Some(i)))),
        };
        let text = tests::scrape(&e, true);
        let b = r#"comm="lavinmq""#;
        for line in [
            format!("lavtrace_open_fds{{{b}}} 900"),
            format!("lavtrace_open_fds_limit{{{b}}} 1024"),
            // No mmap family: the mappings come from the limits.
            format!("lavtrace_live_mappings{{{b}}} 120"),
            format!("lavtrace_vm_max_map_limit{{{b}}} 65530"),
            format!("lavtrace_data_dir_disk_free_bytes{{{b}}} 10737418240"),
            format!("lavtrace_data_dir_disk_size_bytes{{{b}}} 53687091200"),
            format!("lavtrace_data_dir_bytes{{{b}}} 1048576"),
            format!("lavtrace_limit_warning{{{b},limit=\"fds\"}} 1"),
            format!("lavtrace_limit_warning{{{b},limit=\"mappings\"}} 0"),
            format!("lavtrace_limit_warning{{{b},limit=\"disk\"}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
