//! lavtrace's own life cycle: whatever ends it, nothing stays attached to the kernel.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{Trace, Workload, programs_held_by, require_root};

/// The tests here count lavtrace's programs in the whole kernel: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn loaded_programs() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

#[test]
fn sigkill_leaves_no_program_loaded() {
    require_root();
    let _serial = serial();
    let target = Workload::syscalls().getppid(1).spawn();
    let mut trace = Trace::of(&target).spawn();
    let ours = programs_held_by(trace.child.id());
    // syscalls (2), tcp and the storage families: several programs, all loaded now.
    assert!(ours.len() >= 2, "lavtrace holds {} programs", ours.len());
    assert!(ours.is_subset(&loaded_programs()));

    trace.child.kill().unwrap(); // SIGKILL: no cleanup code of lavtrace runs
    trace.child.wait().unwrap();
    // The kernel frees programs once their last fd is closed (asynchronously, via RCU).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = loaded_programs().intersection(&ours).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded after lavtrace was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(target);
}

#[test]
fn follow_reattaches_when_the_target_restarts() {
    require_root();
    let _serial = serial();
    // A name no other process has: `--comm` must find exactly our workload.
    let name = format!("lvt-fol{}", std::process::id() % 100_000);
    let mut first = Workload::syscalls().named(&name).getppid(100).spawn();
    let trace = Trace::comm(&name)
        .switch("follow")
        .interval("200ms")
        .spawn();
    assert_eq!(trace.attached["target"]["pid"], first.pid);
    first.go();
    first.wait_done();
    let first_pid = first.pid;
    drop(first);

    // lavtrace summarises the first instance, then waits for the name to come back.
    let record = |want: &str| loop {
        let line = trace.lines.next().expect("lavtrace ended early");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == want {
            return v;
        }
    };
    let summary1 = record("summary");
    assert_eq!(summary1["pid"], first_pid);
    assert_eq!(summary1["end"]["reason"], "target_exited");
    assert_eq!(common::count(&summary1, "getppid"), 100);

    std::thread::sleep(Duration::from_millis(300));
    let mut second = Workload::syscalls().named(&name).getppid(200).spawn();
    let restart = record("restart");
    assert_eq!(restart["previous_pid"], first_pid);
    assert_eq!(restart["pid"], second.pid);
    // We waited 300 ms before starting it; lavtrace polls /proc every 100 ms.
    let gap = restart["gap_ms"].as_u64().unwrap();
    assert!((250..5_000).contains(&gap), "gap {gap} ms");
    let attached = record("attached");
    assert_eq!(attached["target"]["pid"], second.pid);
    second.go();
    second.wait_done();
    let summary2 = record("summary");
    assert_eq!(summary2["pid"], second.pid);
    assert_eq!(
        common::count(&summary2, "getppid"),
        200,
        "totals are per instance"
    );
    drop(second);

    // Stopped while waiting for a third instance: exits 0, the last summary stands.
    trace.signal(libc::SIGINT);
    let rest = trace.records_after_summary();
    assert!(rest.is_empty(), "nothing after the last summary: {rest:?}");
}

/// The records of `--probes syscalls --interval 1s --duration DURATION` on a sleeping process.
fn trace_a_sleeper(duration: &str) -> Vec<serde_json::Value> {
    let _serial = serial();
    let mut target = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let records = Trace::pid(target.id())
        .probes("syscalls")
        .interval("1s")
        .flag("duration", duration)
        .spawn()
        .records();
    let _ = (target.kill(), target.wait());
    records
}

/// `--duration` a multiple of `--interval` ends on the last tick: no empty final interval, and
/// every interval has CPU shares (a vanishing window once printed "lavtrace 99.93 % CPU").
#[test]
fn a_duration_on_a_tick_ends_with_that_interval() {
    require_root();
    let records = trace_a_sleeper("2s");
    let intervals: Vec<_> = records.iter().filter(|r| r["type"] == "interval").collect();
    let windows: Vec<u64> = intervals
        .iter()
        .map(|r| r["window_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(intervals.len(), 2, "windows {windows:?}");
    assert!(
        windows.iter().all(|&w| (900..=1300).contains(&w)),
        "{windows:?}"
    );
    let seqs: Vec<u64> = intervals
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    let summary = records.last().unwrap();
    assert_eq!(summary["intervals"], 2);
    for r in intervals.iter().copied().chain([summary]) {
        let o = &r["overhead"];
        assert!(o["lavtrace_cpu_pct"].is_f64(), "{o}");
        assert!(o["kernel_cpu_pct"].is_f64(), "{o}");
    }
}

/// A final interval too short for rates is still reported (the intervals add up to the
/// summary), with its CPU shares null.
#[test]
fn a_short_final_interval_has_no_shares() {
    require_root();
    let records = trace_a_sleeper("1030ms");
    let intervals: Vec<_> = records.iter().filter(|r| r["type"] == "interval").collect();
    assert_eq!(intervals.len(), 2);
    let last = intervals[1];
    // Nominally 30 ms; a slow guest can end it later. The rule holds either way: no shares
    // below 100 ms, shares from there on.
    let short = last["window_ms"].as_u64().unwrap() < 100;
    assert_eq!(
        last["overhead"]["lavtrace_cpu_pct"].is_null(),
        short,
        "{last}"
    );
    assert_eq!(
        last["overhead"]["kernel_cpu_pct"].is_null(),
        short,
        "{last}"
    );
    assert!(intervals[0]["overhead"]["lavtrace_cpu_pct"].is_f64());
    assert!(records.last().unwrap()["overhead"]["lavtrace_cpu_pct"].is_f64());
}

/// The run count the kernel keeps for `pid`'s programs (the fdinfo of its program fds): it
/// only moves while BPF run-time statistics are on somewhere on the host.
fn program_runs(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("prog_id:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("run_cnt:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// `pid`'s descriptors that hold the kernel's BPF run-time statistics on.
fn stats_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| l.to_string_lossy() == "anon_inode:bpf-stats")
        .count()
}

/// The kernel's BPF run-time statistics are host-wide: while anyone holds them, every
/// program's runs are counted and timed. A default trace holds them on a duty cycle (one
/// `bpf-stats` descriptor some of the time, none the rest, and its programs, which run for
/// every syscall on the host, show runs in their fdinfo), and its records give the share;
/// `--bpf-stats-full` holds them all the time (share 1); `--no-bpf-stats` never, and its
/// records say there are no kernel figures. (The run counts are not asserted to stay 0 then:
/// another tracer on the host may hold the statistics.)
#[test]
fn bpf_stats_are_sampled_by_default_full_on_request_and_off_with_no_bpf_stats() {
    require_root();
    let _serial = serial();
    let mut target = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    for (flag, held) in [
        (None, [0, 1]),
        (Some("bpf-stats-full"), [1, 1]),
        (Some("no-bpf-stats"), [0, 0]),
    ] {
        let mut trace = Trace::pid(target.id()).probes("syscalls").interval("1s");
        if let Some(f) = flag {
            trace = trace.switch(f);
        }
        let trace = trace.spawn();
        // What it holds over 1.5 s: every SAMPLE_EVERY (1 s) has an on and an off part.
        let mut seen = std::collections::BTreeSet::new();
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            seen.insert(stats_fds(trace.child.id()));
            // Any syscalls of this process run the programs (they filter inside).
            for _ in 0..100 {
                // SAFETY: no arguments.
                unsafe { libc::getppid() };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let expected: std::collections::BTreeSet<usize> = held.into_iter().collect();
        assert_eq!(seen, expected, "{flag:?}");
        if held[1] == 1 {
            assert!(program_runs(trace.child.id()) > 0, "runs counted");
        }
        trace.signal(libc::SIGINT);
        let records = trace.records();
        let o = &records.last().unwrap()["overhead"];
        assert_eq!(o["kernel_stats"], held[1] == 1, "{flag:?}: {o}");
        let share = o["kernel_stats_share"].as_f64();
        match flag {
            None => assert!(share.is_some_and(|s| s > 0.02 && s < 0.5), "{o}"),
            Some("bpf-stats-full") => assert_eq!(share, Some(1.0), "{o}"),
            _ => assert_eq!(share, None, "{o}"),
        }
    }
    let _ = (target.kill(), target.wait());
}
