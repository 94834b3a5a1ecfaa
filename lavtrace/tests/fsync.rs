//! Family `fsync` against the real kernel: a broker-shaped workload with known durability
//! calls must be reported exactly, per syscall and per file, and nothing from another process
//! may be counted; a ring too small for a burst must report exactly what it dropped.

mod common;

use std::{process::Command, time::Duration};

use common::{LAVTRACE, Trace, Workload, count, require_root};
use serde_json::Value;

const VHOST: &str = "42099b4af021e53fd8fd4e056c2568d7c2e3ffa8";
const QUEUE: &str = "8c6e326cc8ba989509be7aa0485a4a523f4aaa47";

fn rows(section: &Value) -> &Vec<Value> {
    section["fsync"].as_array().expect("an fsync list")
}

fn find<'a>(section: &'a Value, syscall: &str, path_end: &str, flags: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = rows(section)
        .iter()
        .filter(|r| {
            r["syscall"] == syscall
                && r["path"].as_str().unwrap().ends_with(path_end)
                && r["flags"].as_str() == flags
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {syscall} {flags:?} row for *{path_end}: {found:?}; all rows: {:?}",
        rows(section)
            .iter()
            .map(|r| format!(
                "{} {} {} ×{}",
                r["syscall"], r["path"], r["flags"], r["count"]
            ))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn total(section: &Value, syscall: &str) -> u64 {
    rows(section)
        .iter()
        .filter(|r| r["syscall"] == syscall)
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

fn data_dir_prefix(pid: u32) -> String {
    format!("{}/lavtrace-data-{pid}-", std::env::temp_dir().display())
}

/// Through the uprobes on the target's glibc: what auto picks without the syscalls family on
/// a kernel without kprobes.
#[test]
fn exact_durability_calls_per_syscall_and_file_through_uprobes() {
    exact_durability_calls_per_syscall_and_file_for_the_target_only("uprobe");
}

/// Through the syscalls tracepoints: what auto picks with the syscalls family, or for a
/// target without glibc.
#[test]
fn exact_durability_calls_per_syscall_and_file_through_tracepoints() {
    exact_durability_calls_per_syscall_and_file_for_the_target_only("tracepoint");
}

/// Through kprobes on the syscall functions where the kernel has kprobes (the guests); here,
/// where it has none, forcing them must fail with the reason.
#[test]
fn exact_durability_calls_per_syscall_and_file_through_kprobes_or_a_clear_refusal() {
    // On 5.10 the kprobe set lost calls in the one-vCPU guest (an open once, 2 of 5
    // madvise), with nothing counted as lost: auto does not take it there
    // (`storage_kprobes_proven`), and its exactness is only claimed from 6.1 on.
    if common::kernel_has_kprobes() && !common::storage_kprobes_proven() {
        eprintln!("skipped: the storage kprobe set is not proven on this kernel");
        return;
    }
    if common::kernel_has_kprobes() {
        exact_durability_calls_per_syscall_and_file_for_the_target_only("kprobe");
    } else {
        common::kprobe_set_is_refused("fsync");
    }
}

/// What auto picks without the syscalls family on this kernel.
fn auto_alone() -> &'static str {
    if common::storage_kprobes_proven() {
        "kprobe"
    } else {
        "uprobe"
    }
}

/// The hook lines a `--storage-hooks` set must show for the target `pid`.
fn expect_storage_hooks(vias: &[&str], set: &str, pid: u32) {
    let has = |prefix: &str, end: &str| {
        vias.iter()
            .any(|v| v.starts_with(prefix) && v.ends_with(end))
    };
    match set {
        "kprobe" => {
            for f in ["syncfs", "msync", "openat", "close"] {
                let end = format!("_sys_{f}");
                assert!(has("kprobe __", &end), "kprobe on {f}: {vias:?}");
                assert!(f == "close" || has("kretprobe __", &end), "{f}: {vias:?}");
            }
            assert!(
                vias.iter()
                    .all(|v| v.starts_with("kprobe ") || v.starts_with("kretprobe ")),
                "only kprobes: {vias:?}"
            );
        }
        "uprobe" => {
            for f in ["syncfs", "msync", "openat", "close"] {
                let end = format!("/libc.so.6:{f} (pid {pid})");
                assert!(has("uprobe /", &end), "uprobe on {f}: {vias:?}");
                assert!(f == "close" || has("uretprobe /", &end), "{f}: {vias:?}");
            }
            assert!(
                !vias.iter().any(|v| v.starts_with("tracepoint syscalls:")),
                "no syscalls tracepoint: {vias:?}"
            );
        }
        _ => {
            for tp in [
                "sys_enter_syncfs",
                "sys_exit_msync",
                "sys_exit_openat",
                "sys_enter_close",
            ] {
                let via = format!("tracepoint syscalls:{tp}");
                assert!(vias.contains(&via.as_str()), "{vias:?}");
            }
            assert!(!vias.iter().any(|v| v.contains("uprobe")), "{vias:?}");
        }
    }
}

fn exact_durability_calls_per_syscall_and_file_for_the_target_only(set: &str) {
    require_root();
    let mut target = Workload::storage()
        .segments(3)
        .premapped(1)
        .syncfs(120)
        .fsyncs(4)
        .flag("sync", 1)
        .linger("300ms")
        .spawn();
    // The same calls from another process at the same time must not leak in.
    let mut bystander = Workload::storage().segments(2).syncfs(77).spawn();
    let trace = Trace::of(&target)
        .probes("fsync")
        .interval("200ms")
        .flag("slow", "0s")
        .flag("storage-hooks", set)
        .spawn();
    expect_storage_hooks(&trace.vias(), set, target.pid);
    let records = trace.run(&mut [&mut bystander, &mut target]);
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "target_exited");
    assert_eq!(summary["lost_events"]["fsync"], 0);

    // syncfs on the data dir (opened before attach: named from /proc/PID/fd), with its mount.
    let syncfs = find(summary, "syncfs", "", None);
    assert_eq!(syncfs["count"], 120);
    let dir = syncfs["path"].as_str().unwrap();
    assert!(dir.starts_with(&data_dir_prefix(target.pid)), "{dir}");
    assert_eq!(syncfs["kind"], "data_dir");
    assert!(!syncfs["mount"]["fstype"].as_str().unwrap().is_empty());

    // definitions.amqp: fsync, fdatasync through a dup of the fd, sync_file_range; all of
    // them reported after the fds were closed.
    let defs = format!("{VHOST}/definitions.amqp");
    let fsync = find(summary, "fsync", &defs, None);
    assert_eq!(fsync["count"], 4);
    assert_eq!(fsync["kind"], "definitions");
    assert!(fsync["path"].as_str().unwrap().starts_with(dir));
    assert_eq!(find(summary, "fdatasync", &defs, None)["count"], 1);
    let sfr = find(summary, "sync_file_range", &defs, Some("WRITE"));
    assert_eq!(
        (sfr["count"].as_u64(), sfr["bytes"].as_u64()),
        (Some(1), Some(4096))
    );
    assert_eq!(find(summary, "sync", "(all filesystems)", None)["count"], 1);

    // msync, attributed through the mapping to each segment (fd long closed), flags apart.
    // msgs.0000000001 was mapped (and msynced) before attach.
    for i in 2..=4 {
        let seg = format!("{QUEUE}/msgs.{i:010}");
        let a = find(summary, "msync", &seg, Some("MS_ASYNC"));
        let s = find(summary, "msync", &seg, Some("MS_SYNC"));
        assert_eq!(
            (a["count"].as_u64(), a["bytes"].as_u64()),
            (Some(1), Some(4))
        );
        assert_eq!(
            (s["count"].as_u64(), s["bytes"].as_u64()),
            (Some(1), Some(65536))
        );
        assert_eq!(s["kind"], "segment");
    }
    // Nothing else: 1 syncfs, 3 definitions rows, 1 sync, 3×2 msync.
    assert_eq!(rows(summary).len(), 11, "{:#?}", rows(summary));
    for r in rows(summary) {
        assert_eq!(r["errors"], 0);
        let p = |k: &str| r[k].as_u64().unwrap();
        assert!(p("p50_ns") <= p("p90_ns") && p("p99_ns") <= p("p999_ns"));
        assert!(p("p999_ns") <= p("max_ns"));
        let in_hist: u64 = r["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(in_hist, p("count"));
    }

    // Intervals add up to the summary.
    let intervals: Vec<&Value> = records.iter().filter(|r| r["type"] == "interval").collect();
    for syscall in ["syncfs", "fsync", "msync"] {
        let sum: u64 = intervals.iter().map(|r| total(r, syscall)).sum();
        assert_eq!(sum, total(summary, syscall), "{syscall}");
    }

    // --slow 0s: every call printed as it happened, with its thread's name.
    let slow: Vec<&Value> = records.iter().filter(|r| r["type"] == "slow").collect();
    assert_eq!(slow.len() as u64, 120 + 4 + 1 + 1 + 1 + 6);
    let confirm: Vec<&&Value> = slow.iter().filter(|r| r["syscall"] == "syncfs").collect();
    assert_eq!(confirm.len(), 120);
    assert!(
        confirm
            .iter()
            .all(|r| r["thread"] == "Publish confirm" && r["path"] == dir)
    );
    assert!(
        slow.iter()
            .any(|r| r["syscall"] == "msync" && r["flags"] == "MS_SYNC")
    );
}

#[test]
fn a_tiny_ring_reports_exactly_what_it_lost() {
    require_root();
    const BURST: u64 = 20_000;
    let mut target = Workload::storage()
        .segments(0)
        .syncfs(0)
        .fsyncs(0)
        .flag("burst", BURST)
        .linger("300ms")
        .spawn();
    let records = Trace::of(&target)
        .probes("fsync,mmap")
        .flag("ring-bytes", 4096)
        .interval("100ms")
        .run(&mut [&mut target]);
    let summary = records.last().unwrap();
    let intervals: Vec<&Value> = records.iter().filter(|r| r["type"] == "interval").collect();

    // fsync ring: BURST msync, nothing else.
    let received = total(summary, "msync");
    let lost = summary["lost_events"]["fsync"].as_u64().unwrap();
    assert!(lost > 0, "a 4 KiB ring must overflow under {BURST} calls");
    assert_eq!(lost, BURST - received, "lost = produced - received");
    let per_interval: u64 = intervals
        .iter()
        .map(|r| r["lost_events"]["fsync"].as_u64().unwrap())
        .sum();
    assert_eq!(per_interval, lost);

    // mmap ring: BURST madvise.
    let madvise = summary["mmap"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["syscall"] == "madvise")
        .map_or(0, |r| r["count"].as_u64().unwrap());
    let lost = summary["lost_events"]["mmap"].as_u64().unwrap();
    assert!(lost > 0);
    assert_eq!(lost, BURST - madvise, "lost = produced - received");
}

/// Issue 18: the durability rows of every interval, and of the summary, count exactly the
/// calls the syscall table counts, at a high rate and across many intervals, however the ring
/// drain lags: both place a call by its return time against one cut.
#[test]
fn durability_rows_agree_with_the_syscall_table_in_every_interval() {
    require_root();
    const SYNCFS: u64 = 3_000;
    const BURST: u64 = 30_000;
    let mut target = Workload::storage()
        .segments(4)
        .syncfs(SYNCFS)
        .flag("syncfs-pace", "200us")
        .fsyncs(100)
        .flag("burst", BURST)
        .linger("250ms")
        .spawn();
    let records = Trace::of(&target)
        .probes("syscalls,fsync")
        .interval("100ms")
        // Room for every record of the run: a lost record would be counted (and the tables
        // would differ by it), but here the figure is the agreement itself.
        .flag("ring-bytes", 8 << 20)
        .run(&mut [&mut target]);
    let summary = records.last().unwrap();
    let intervals: Vec<&Value> = records.iter().filter(|r| r["type"] == "interval").collect();
    let calls = ["fsync", "fdatasync", "syncfs", "msync", "sync_file_range"];
    for (i, r) in intervals.iter().chain([&summary]).enumerate() {
        assert_eq!(r["lost_events"]["fsync"], 0, "record {i}: nothing lost");
        for call in calls {
            assert_eq!(
                count(r, call),
                total(r, call),
                "record {i} ({}): {call} in the syscall table and the durability rows",
                r["type"]
            );
        }
    }
    // The workload's own figures, and the intervals add up to the summary.
    assert_eq!(total(summary, "syncfs"), SYNCFS);
    assert!(total(summary, "msync") >= BURST);
    assert_eq!(total(summary, "fsync"), 100);
    for call in calls {
        let sum: u64 = intervals.iter().map(|r| total(r, call)).sum();
        assert_eq!(sum, total(summary, call), "{call}: intervals add up");
    }
    // How many cuts fell inside the syncfs run is up to the scheduler: on a one-vCPU guest
    // the workload can starve lavtrace's ticks so that one interval holds them all. The
    // agreement above is the figure; the spread is printed for whoever reads the log.
    let busy = intervals.iter().filter(|r| total(r, "syncfs") > 0).count();
    eprintln!("syncfs spread over {busy} of {} intervals", intervals.len());
}

#[test]
fn text_shows_slow_calls_histograms_and_the_map_count() {
    require_root();
    let mut target = Workload::storage()
        .segments(2)
        .syncfs(30)
        .linger("300ms")
        .spawn();
    let text = Trace::of(&target)
        .probes("fsync,mmap")
        .flag("slow", "1ns")
        .interval("10s")
        .run_text(&mut target);
    let slow_syncfs = text
        .lines()
        .filter(|l| l.contains("Publish confirm") && l.contains(" syncfs "))
        .count();
    assert_eq!(slow_syncfs, 30, "{text}");
    for needle in [
        "DURABILITY CALL",
        "msync MS_SYNC",
        "vhost:42099b4a/queue:8c6e326c/msgs.0000000001 (segment)",
        "(data dir) [fs ",
        "distribution",
        "MAP CALL",
        "live of vm.max_map_count",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

/// The demo's workload must outlive tokio's idle blocking threads (10 s): its
/// PR_SET_PDEATHSIG follows the thread that spawned it, and a pool thread once killed it.
#[test]
fn demo_runs_for_its_whole_duration() {
    require_root();
    let out = Command::new(LAVTRACE)
        .args([
            "demo",
            "--duration",
            "12s",
            "--interval",
            "4s",
            "--format",
            "json",
        ])
        .args(["--probes", "fsync"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["end"]["reason"], "duration", "{summary}");
}

#[test]
fn demo_shows_both_storage_families() {
    require_root();
    let out = Command::new(LAVTRACE)
        .args(["demo", "--duration", "1500ms", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_string)
        .unwrap();
    let summary: Value = serde_json::from_str(&last).unwrap();
    let attached: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        attached["probes"],
        serde_json::json!(["syscalls", "fsync", "mmap", "tcp", "amqp", "gc"])
    );
    assert!(total(&summary, "syncfs") > 0, "{summary}");
    let mmaps = summary["mmap"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "segment")
        .map(|f| f["mmaps"].as_u64().unwrap())
        .sum::<u64>();
    assert!(mmaps > 0, "{summary}");
    // Its data dir is gone.
    let pid = attached["target"]["pid"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !std::env::temp_dir()
            .join(format!("lavtrace-demo-{pid}"))
            .exists()
    );
}

#[test]
fn per_thread_rows_name_the_confirm_thread() {
    require_root();
    let mut target = Workload::storage().segments(2).syncfs(50).fsyncs(2).spawn();
    let records = Trace::of(&target)
        .probes("fsync,mmap")
        .switch("per-thread")
        .interval("100ms")
        .run(&mut [&mut target]);
    let summary = records.last().unwrap();
    let syncfs = find(summary, "syncfs", "", None);
    assert_eq!(syncfs["count"], 50);
    assert_eq!(syncfs["thread"], "Publish confirm");
    assert_ne!(syncfs["tid"], target.pid, "syncfs is not the main thread's");
    let fsync = find(summary, "fsync", "definitions.amqp", None);
    assert_eq!(fsync["count"], 2);
    assert_eq!(fsync["tid"], target.pid);
    assert_eq!(fsync["thread"], common::WORKLOAD_COMM);
    // Every durability row carries its thread.
    assert!(rows(summary).iter().all(|r| r["tid"].is_u64()));
    // mmap: per-thread rows add up to the per-syscall counts.
    let mmap = &summary["mmap"];
    for s in mmap["syscalls"].as_array().unwrap() {
        let per_thread: u64 = mmap["threads"]
            .as_array()
            .expect("mmap threads")
            .iter()
            .filter(|t| t["syscall"] == s["syscall"])
            .map(|t| t["count"].as_u64().unwrap())
            .sum();
        assert_eq!(per_thread, s["count"].as_u64().unwrap(), "{s}");
    }
}

/// Names chosen by others reach the terminal escaped: a file and a thread named with an ANSI
/// clear-screen, a newline and a bell show as `\x1b[2J\nevil\x07` in the tables and the slow
/// log, no control character but the lines' own newlines is printed, and JSON (which escapes
/// by itself) keeps the raw names.
#[test]
fn hostile_names_are_escaped_in_text_and_raw_in_json() {
    require_root();
    const NAME: &str = "q\x1b[2J\nevil\x07";
    const SHOWN: &str = r"q\x1b[2J\nevil\x07";
    let storage = || {
        Workload::storage()
            .segments(1)
            .syncfs(5)
            .fsyncs(1)
            .flag("hostile-name", NAME)
            .linger("300ms")
    };
    let mut target = storage().spawn();
    let text = Trace::of(&target)
        .probes("syscalls,fsync,mmap")
        .switch("per-thread")
        .flag("slow", "1ns")
        .interval("10s")
        .run_text(&mut target);
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("evil")), "{text}");
    let file = format!("queue:8c6e326c/{SHOWN}");
    let slow_file = text
        .lines()
        .filter(|l| l.contains(" fsync ") && l.contains(&file))
        .count();
    assert_eq!(slow_file, 1, "{text}");
    let slow_thread = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(SHOWN))
        .filter(|l| l.contains(" syncfs "))
        .count();
    assert_eq!(slow_thread, 5, "{text}");
    // The durability table's row for the file (summary and interval), and the per-thread
    // tables naming the thread.
    assert!(text.matches(&file).count() >= 3, "{text}");

    let mut target = storage().spawn();
    let records = Trace::of(&target)
        .probes("fsync")
        .switch("per-thread")
        .interval("10s")
        .run(&mut [&mut target]);
    let summary = records.last().unwrap();
    let fsync = find(summary, "fsync", NAME, None);
    assert_eq!(fsync["count"], 1);
    let syncfs = find(summary, "syncfs", "", None);
    assert_eq!(syncfs["thread"], NAME);
}

/// What auto picks: kprobes (where the kernel has them) or uprobes on glibc where no family
/// of the session pays the host-wide syscall slow path, the syscalls tracepoints beside the
/// syscalls family (they cost the target less, and the slow path is paid already).
#[test]
fn auto_takes_uprobes_alone_and_tracepoints_beside_the_syscalls_family() {
    require_root();
    for (probes, set) in [
        ("fsync,mmap", auto_alone()),
        ("syscalls,fsync,mmap", "tracepoint"),
    ] {
        let mut target = Workload::storage().segments(1).syncfs(5).fsyncs(2).spawn();
        let trace = Trace::of(&target).probes(probes).spawn();
        let storage: Vec<&str> = trace
            .hooks(None)
            .into_iter()
            .filter(|h| h.0.starts_with("fsync_") || h.0.starts_with("storage_"))
            .map(|h| h.1)
            .collect();
        expect_storage_hooks(&storage, set, target.pid);
        let mmap: Vec<&str> = trace.hooks(Some("mmap")).into_iter().map(|h| h.1).collect();
        let madvise = match set {
            "uprobe" => format!("/libc.so.6:madvise (pid {})", target.pid),
            "kprobe" => "_sys_madvise".to_string(),
            _ => "tracepoint syscalls:sys_enter_madvise".to_string(),
        };
        assert!(mmap.iter().any(|v| v.ends_with(&madvise)), "{mmap:?}");
        let records = trace.run(&mut [&mut target]);
        let summary = records.last().unwrap();
        assert_eq!(total(summary, "syncfs"), 5, "{probes}");
        assert_eq!(total(summary, "fsync"), 2, "{probes}");
    }
}

/// The C source of a target uprobes on libc cannot see: linked statically, it maps no
/// libc.so.6, and its fsync calls never pass through a shared libc.
const STATIC_TARGET: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char line[16];
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 1;
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (int i = 0; i < 7; i++) {
        if (write(fd, "x", 1) != 1 || fsync(fd) != 0) return 1;
    }
    for (int i = 0; i < 3; i++) fdatasync(fd);
    close(fd);
    return 0;
}
"#;

/// A static binary (no libc.so.6 in its mappings) falls back to the syscalls tracepoints
/// under auto and is counted exactly; forcing uprobes on it fails with the reason (exit 5).
/// Needs a C compiler with a static glibc (the host's gcc; the guests have none).
#[test]
fn a_static_target_falls_back_to_the_tracepoints_and_stays_exact() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("static-target.c");
    let bin = dir.path().join("static-target");
    std::fs::write(&src, STATIC_TARGET).unwrap();
    let cc = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) to build the static target");
    assert!(cc.success(), "cc -static failed");
    let data = dir.path().join("data");
    let spawn = || {
        let mut child = Command::new(&bin)
            .arg(&data)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::Lines::new(child.stdout.take().unwrap());
        assert_eq!(lines.next().as_deref(), Some("ready"));
        child
    };
    let mut target = spawn();
    let pid = target.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("libc.so.6"), "{maps}");

    // Forced uprobes: nothing to attach to.
    let out = Command::new(LAVTRACE)
        .args(["trace", "--pid", &pid.to_string(), "--probes", "fsync"])
        .args(["--storage-hooks", "uprobe", "--duration", "1s", "--no-tui"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--storage-hooks uprobe: pid {pid} maps no libc.so.6"
        )),
        "{err}"
    );

    // Auto: the tracepoints, and every call.
    let trace = Trace::pid(pid).probes("fsync,mmap").spawn();
    expect_storage_hooks(&trace.vias(), "tracepoint", pid);
    use std::io::Write as _;
    let mut stdin = target.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert!(target.wait().unwrap().success());
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "target_exited");
    let path = data.to_str().unwrap();
    assert_eq!(find(summary, "fsync", path, None)["count"], 7);
    assert_eq!(find(summary, "fdatasync", path, None)["count"], 3);
    assert_eq!(rows(summary).len(), 2, "{:#?}", rows(summary));
}

/// Forced uprobes (or kprobes) beside the syscalls family: the fsync family's exit does not
/// count the calls into the syscall table then, so the syscalls family counts them itself
/// (its skip list stays empty): both tables still have every call, once.
#[test]
fn a_forced_set_beside_the_syscalls_family_leaves_it_its_own_count() {
    require_root();
    let set = auto_alone();
    let mut target = Workload::storage().segments(2).syncfs(40).fsyncs(3).spawn();
    let trace = Trace::of(&target)
        .probes("syscalls,fsync")
        .flag("storage-hooks", set)
        .spawn();
    let storage: Vec<&str> = trace
        .hooks(Some("fsync"))
        .into_iter()
        .map(|h| h.1)
        .collect();
    expect_storage_hooks(&storage, set, target.pid);
    let records = trace.run(&mut [&mut target]);
    let summary = records.last().unwrap();
    for (call, n) in [("syncfs", 40), ("fsync", 3), ("fdatasync", 1)] {
        assert_eq!(total(summary, call), n, "{call} rows");
        assert_eq!(count(summary, call), n, "{call} in the syscall table");
    }
}
