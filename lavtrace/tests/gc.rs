//! Family `gc` against the real kernel: every stop-the-world of a Boehm-shaped workload (the
//! workload's `gc` mode: known pauses, a known late thread held in a read) and of a real
//! libgc program (its own collection count), exactly, and nothing of another process doing
//! the same.

mod common;

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use common::{Trace, Workload, require_root};
use lavtrace_common::start;
use serde_json::Value;

const WORKERS: u64 = 4;
const PAUSES: u64 = 6;
const HOLD_MS: u64 = 5;
const LATE_MS: u64 = 30;

fn gc_workload(name: &str) -> Workload {
    Workload::gc()
        .named(name)
        .flag("workers", WORKERS)
        .flag("pauses", PAUSES)
        .flag("hold-ms", HOLD_MS)
        .flag("late-ms", LATE_MS)
        .spawn()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The workload's own account of one pause (CLOCK_MONOTONIC ns).
struct Truth {
    /// Before its first suspend signal; after that signal was sent.
    t0: u64,
    t0_sent: u64,
    /// The late worker's read was released (it could take the signal from then on).
    released: u64,
    /// Every thread had resumed.
    t1: u64,
}

fn truths(lines: &[String]) -> Vec<Truth> {
    lines
        .iter()
        .filter_map(|l| {
            let w: Vec<u64> = l
                .strip_prefix("pause ")?
                .split(' ')
                .map(|x| x.parse().unwrap())
                .collect();
            Some(Truth {
                t0: w[1],
                t0_sent: w[2],
                released: w[3],
                t1: w[4],
            })
        })
        .collect()
}

fn tids(lines: &[String]) -> HashMap<String, u64> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("tid ")?.split(' ');
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn boehm_shaped_pauses_are_exact() {
    require_root();
    let mut target = gc_workload("lt-gc");
    // The same pauses in another process at the same time: none of them is the target's.
    let mut bystander = gc_workload("lt-gc-other");
    let trace = Trace::of(&target).probes("gc").interval("200ms").spawn();
    let vias = trace.vias();
    assert!(
        vias.iter().any(|v| v.contains("signal_generate"))
            && vias.contains(&"tracepoint signal:signal_deliver"),
        "{vias:?}"
    );
    // The laggard's syscall comes from the tp_btf hook (5.15+); the fallback cannot name it.
    let named_syscalls = vias.contains(&"tp_btf signal_generate");
    bystander.go();
    target.go();
    let lines = target.lines_until_done();
    bystander.lines_until_done();
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["lost_events"]["gc"], 0);
    let gc = &summary["gc"];
    assert_eq!(n(&gc["pauses"]), PAUSES, "{gc:#}");
    assert_eq!(n(&gc["pause_ns"]["count"]), PAUSES);
    assert_eq!(
        gc["pause_ns"]["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| n(&b["count"]))
            .sum::<u64>(),
        PAUSES
    );
    // The intervals add up to the summary.
    let per_interval: u64 = records
        .iter()
        .filter(|r| r["type"] == "interval")
        .map(|r| n(&r["gc"]["pauses"]))
        .sum();
    assert_eq!(per_interval, PAUSES);

    let truth = truths(&lines);
    let names = tids(&lines);
    assert_eq!(truth.len() as u64, PAUSES);
    let mut log = gc["log"].as_array().unwrap().clone();
    log.sort_by_key(|p| p["begin_unix_ns"].as_i64().unwrap());
    assert_eq!(log.len() as u64, PAUSES);
    let hold = HOLD_MS * 1_000_000;
    let mut total = 0;
    for (p, t) in log.iter().zip(&truth) {
        assert_eq!(n(&p["threads_stopped"]), WORKERS, "{p:#}");
        assert_eq!(n(&p["threads_resumed"]), WORKERS, "{p:#}");
        assert_eq!(n(&p["resends"]), 0, "{p:#}");
        assert_eq!(n(&p["collector_tid"]), u64::from(target.pid), "{p:#}");
        assert_eq!(p["collector"], "lt-gc");
        let (stop, pause) = (n(&p["stop_ns"]), n(&p["pause_ns"]));
        total += pause;
        // Begin: the first suspend signal, between the workload's t0 and t0_sent. The end of
        // the stop: the late worker takes its signal only after its read was released; the
        // end of the pause: every thread resumed before the workload saw t1; between them
        // the collector held the world for HOLD_MS.
        assert!(stop >= t.released - t.t0_sent, "{p:#}: stop {stop}");
        assert!(t.released - t.t0_sent >= LATE_MS * 1_000_000);
        assert!(
            pause <= t.t1 - t.t0,
            "{p:#}: pause {pause} > {}",
            t.t1 - t.t0
        );
        assert!(pause >= stop + hold, "{p:#}: pause {pause}, stop {stop}");
        let laggard = &p["laggard"];
        assert_eq!(n(&laggard["tid"]), names["gc-late"], "{p:#}");
        assert_eq!(laggard["thread"], "gc-late");
        if named_syscalls {
            assert_eq!(laggard["syscall"], "read", "{p:#}");
        } else {
            assert!(laggard["syscall"].is_null(), "{p:#}");
        }
    }
    assert_eq!(n(&gc["pause_ns"]["total_ns"]), total);
    assert!(gc["stopped_share"].as_f64().unwrap() > 0.0);
    bystander.finish();
    target.finish();
}

/// The C program, built with the system's cc and libgc (Debian libgc-dev, installed by
/// `cargo xtask setup --test`) into the test's scratch directory.
fn boehm_program() -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/gc/boehm.c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gc-boehm");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-lgc", "-lpthread"])
        .status()
        .expect("running cc");
    assert!(
        status.success(),
        "cc could not build {} (is libgc-dev installed? cargo xtask setup --test)",
        src.display()
    );
    out
}

/// The Crystal program, built with Debian's `crystal` (installed by `cargo xtask setup
/// --test`), multi-threaded as LavinMQ is (-Dpreview_mt): a few seconds to build.
fn crystal_program() -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/gc/alloc.cr");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.join("gc-crystal");
    let status = Command::new("crystal")
        .args(["build", "-Dpreview_mt", "-o"])
        .arg(&out)
        .arg(&src)
        .env("CRYSTAL_CACHE_DIR", tmp.join("crystal-cache"))
        .status()
        .expect("running crystal (is it installed? cargo xtask setup --test)");
    assert!(
        status.success(),
        "crystal could not build {}",
        src.display()
    );
    out
}

/// Every collection libgc made (its own GC_get_gc_no) is one pause, each with the program's
/// other registered threads stopped.
#[test]
fn a_real_boehm_gc_every_collection_is_one_pause() {
    require_root();
    let (collections, gc) = trace_collections(Command::new(boehm_program()));
    assert_eq!(n(&gc["pauses"]), collections, "{gc:#}");
    for p in gc["log"].as_array().unwrap() {
        // The 4 workers and main are registered; the collector is one of them (libgc's
        // marker threads are not registered, so not stopped).
        assert_eq!(n(&p["threads_stopped"]), 4, "{p:#}");
        assert_eq!(n(&p["threads_resumed"]), 4, "{p:#}");
        assert!(n(&p["stop_ns"]) <= n(&p["pause_ns"]), "{p:#}");
    }
}

/// LavinMQ's runtime: every collection of a multi-threaded Crystal program (Boehm's own
/// count, GC.prof_stats.gc_no) is one pause.
#[test]
fn a_crystal_program_every_collection_is_one_pause() {
    require_root();
    let mut cmd = Command::new(crystal_program());
    cmd.env("CRYSTAL_WORKERS", "4");
    let (collections, gc) = trace_collections(cmd);
    assert_eq!(n(&gc["pauses"]), collections, "{gc:#}");
    for p in gc["log"].as_array().unwrap() {
        let stopped = n(&p["threads_stopped"]);
        assert!(stopped >= 1, "{p:#}");
        assert_eq!(n(&p["threads_resumed"]), stopped, "{p:#}");
    }
}

/// Runs `cmd` (a program following the start protocol that prints `collections N` before
/// `done`) under `--probes gc`; returns its count and the summary's gc object.
fn trace_collections(mut cmd: Command) -> (u64, Value) {
    let mut started = start::spawn(&mut cmd, Duration::from_secs(30)).expect("starting it");
    let trace = Trace::pid(started.pid())
        .probes("gc")
        .interval("200ms")
        .spawn();
    started.go().unwrap();
    let mut collections = None;
    loop {
        let line = started
            .next_line(Duration::from_secs(60))
            .expect("the program's output");
        if line == "done" {
            break;
        }
        if let Some(c) = line.strip_prefix("collections ") {
            collections = Some(c.parse::<u64>().unwrap());
        }
    }
    let collections = collections.expect("a collections line");
    assert!(collections >= 20, "it collected {collections} times");
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["lost_events"]["gc"], 0);
    (collections, summary["gc"].clone())
}

/// Other signals, named on the command line, are the ones followed; `check` names them.
#[test]
fn the_signals_are_overridable() {
    require_root();
    let out = Command::new(common::LAVTRACE)
        .args(["trace", "--probes", "gc", "--gc-signals", "SIGPWR"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad --gc-signals is a usage error"
    );
    // Told the runtime uses SIGUSR1/SIGUSR2, the workload's SIGPWR/SIGXCPU pauses are not GC.
    let mut target = Workload::gc()
        .named("lt-gc-sigs")
        .flag("workers", 2)
        .flag("pauses", 2)
        .flag("late-ms", 0)
        .spawn();
    let trace = Trace::of(&target)
        .probes("gc")
        .flag("gc-signals", "SIGUSR1,SIGUSR2")
        .spawn();
    target.go();
    target.lines_until_done();
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(
        n(&summary["gc"]["pauses"]),
        0,
        "SIGPWR/SIGXCPU are not followed now"
    );
    assert_eq!(n(&summary["gc"]["signals"]["suspend"]), 10);
    assert_eq!(n(&summary["gc"]["signals"]["restart"]), 12);
    target.finish();
}
