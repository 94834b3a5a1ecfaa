//! Family `sched` against the real kernel: threads whose scheduling is known (the workload's
//! `sched` mode) must be reported with exact switch counts where the kernel makes them exact,
//! honest bounds on times, in the thread the time belongs to, and nothing of another process.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{Trace, Workload, require_root};
use serde_json::Value;

const SLEEPS: u64 = 25;
const SLEEP_MS: u64 = 10;
const SPIN_MS: u64 = 400;

/// The sleeper and two spinners on CPU 0; with `fsync_mib`, a blocker too.
/// One trace at a time: a lavtrace preempted inside a bpf() map operation holds the per-cpu
/// guard that makes the kernel skip the classic sched_switch program on that CPU (counted in
/// lost_events, which these tests require to be 0); another test's lavtrace reading its maps
/// meanwhile would be that lavtrace.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn sched_workload(name: &str, fsync_mib: u64) -> Workload {
    Workload::sched()
        .named(name)
        .flag("sleeps", SLEEPS)
        .flag("sleep-ms", SLEEP_MS)
        .flag("spinners", 2)
        .flag("spin-ms", SPIN_MS)
        .flag("cpu", 0)
        // /var/tmp is on the root filesystem here (ext4 on a virtio disk), never tmpfs.
        .flag("fsync-mib", fsync_mib)
        .flag("dir", "/var/tmp")
        .spawn()
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

fn rows(record: &Value) -> &Vec<Value> {
    record["sched"]["threads"]
        .as_array()
        .expect("a sched.threads list")
}

fn row(record: &Value, tid: u64) -> &Value {
    rows(record)
        .iter()
        .find(|r| r["tid"] == tid)
        .unwrap_or_else(|| panic!("no row for thread {tid}: {:#}", record["sched"]))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Raw tracepoints: what lavtrace picks where the kernel has BTF (every kernel of the matrix).
#[test]
fn each_thread_on_the_raw_tracepoints() {
    each_thread_via(
        "auto",
        &[
            "raw_tracepoint sched_switch",
            "raw_tracepoint sched_wakeup",
            "raw_tracepoint sched_wakeup_new",
        ],
    );
}

/// The fallback, sched:* tracepoints with the thread table as the filter, reports the same.
#[test]
fn each_thread_on_the_fallback_tracepoints() {
    each_thread_via(
        "tracepoint",
        &[
            "tracepoint sched:sched_switch",
            "tracepoint sched:sched_wakeup",
            "tracepoint sched:sched_wakeup_new",
        ],
    );
}

/// A thread in fsync of a file on a real disk waits in D: that time is its own, and the
/// others' stays sleep (the guests of `cargo xtask vm-test` skip these: their root is in RAM,
/// where fsync waits for nothing).
#[test]
fn blocked_in_d_on_the_raw_tracepoints() {
    blocked_via("auto");
}

#[test]
fn blocked_in_d_on_the_fallback_tracepoints() {
    blocked_via("tracepoint");
}

fn blocked_via(hooks: &str) {
    require_root();
    let _serial = serial();
    let mut target = sched_workload("lt-sched-d", 32);
    let mut bystander = sched_workload("lt-sched-d-other", 32);
    let trace = Trace::of(&target)
        .probes("sched")
        .interval("200ms")
        .flag("sched-hooks", hooks)
        .spawn();
    bystander.go();
    target.go();
    let target_tids = tids(&target.lines_until_done());
    let other_tids = tids(&bystander.lines_until_done());
    let records = trace.records();
    let summary = records.last().unwrap();
    for r in rows(summary) {
        assert!(
            !other_tids.values().any(|&t| r["tid"] == t),
            "the bystander's thread {r} was counted"
        );
    }
    let blocker = row(summary, target_tids["blocker"]);
    assert!(n(&blocker["blocked_ns"]) > 0, "{blocker:#}");
    assert!(n(&blocker["switches_voluntary"]) > 0, "{blocker:#}");
    for name in ["sleeper", "spin-0", "spin-1"] {
        let r = row(summary, target_tids[name]);
        assert_eq!(n(&r["blocked_ns"]), 0, "{name}: {r:#}");
    }
    // The sleeper's figures are what they are without a blocker.
    let sleeper = row(summary, target_tids["sleeper"]);
    assert_eq!(n(&sleeper["switches_voluntary"]), SLEEPS, "{sleeper:#}");
    assert_sleep_bounds(sleeper);
    bystander.finish();
}

fn assert_sleep_bounds(sleeper: &Value) {
    // Off the CPU from the switch-out to the wakeup. The timer is armed a few µs before the
    // switch-out, so one sleep can read a little under D when the timer fires at its soft
    // expiry (it usually fires at D plus the 50 µs slack): the floor allows 100 µs a sleep.
    let sleep = Duration::from_nanos(n(&sleeper["sleep_ns"]));
    let least = Duration::from_micros(SLEEPS * (SLEEP_MS * 1000 - 100));
    let most = Duration::from_millis(SLEEPS * SLEEP_MS * 4 + 1000);
    assert!(sleep >= least && sleep <= most, "sleeper slept {sleep:?}");
}

fn each_thread_via(hooks: &str, expected: &[&str]) {
    require_root();
    let _serial = serial();
    let mut target = sched_workload("lt-sched", 0);
    // The same threads in another process at the same time (its spinners on the same CPU).
    let mut bystander = sched_workload("lt-sched-other", 0);
    let trace = Trace::of(&target)
        .probes("sched")
        .interval("200ms")
        .flag("sched-hooks", hooks)
        .spawn();
    assert_eq!(trace.vias(), expected, "one set of hooks");

    let started = Instant::now();
    bystander.go();
    target.go();
    let target_tids = tids(&target.lines_until_done());
    let wall = started.elapsed();
    let other_tids = tids(&bystander.lines_until_done());
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "target_exited");
    assert_eq!(summary["lost_events"]["sched"], 0);

    // Nothing of the bystander; every row a thread of the target, named from /proc.
    for r in rows(summary) {
        assert!(
            !other_tids.values().any(|&t| r["tid"] == t),
            "the bystander's thread {r} was counted"
        );
    }
    for (name, &tid) in &target_tids {
        assert_eq!(row(summary, tid)["thread"], name.as_str(), "thread {tid}");
    }
    assert_eq!(
        rows(summary).len(),
        target_tids.len() + 1,
        "and the main thread"
    );

    for (name, &tid) in &target_tids {
        let r = row(summary, tid);
        let (vol, invol) = (n(&r["switches_voluntary"]), n(&r["switches_involuntary"]));
        // Every switch-in of a thread traced from its wait for go follows a wakeup (go's, then
        // one per voluntary switch) or a preemption: one run-queue wait each. Its last
        // switch-out, at exit, is not a switch (the thread is gone). What this kernel does not
        // give exactly: roughly one wakeup in 150 reaches neither hook set's program (6.18,
        // raw and classic alike, with no recursion miss counted; not understood yet). A switch-in
        // from a recorded sleep then counts in `wakeups_unseen` instead; the go wakeup, from a
        // state not known at attach, cannot be told from one that came before attach, so the
        // sum may fall one short.
        let runq = &r["runq_ns"];
        let unseen = n(&r["wakeups_unseen"]);
        let waits = n(&runq["count"]) + unseen;
        assert!(
            waits == 1 + vol + invol || waits == vol + invol,
            "{name}: {waits} waits (seen and unseen) for {} switch-ins: {r:#}",
            1 + vol + invol
        );
        let buckets: u64 = runq["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| n(&b["count"]))
            .sum();
        assert_eq!(buckets, n(&runq["count"]), "{name}: {r:#}");
        assert!(n(&runq["p99_ns"]) <= n(&runq["max_ns"]), "{name}: {r:#}");
        assert!(n(&runq["max_ns"]) > 0, "{name}: {r:#}");
        assert_eq!(r["state"], "exited", "{name}: {r:#}");
        // After go and before done: each thread's time is within the test's wall time.
        let on_cpu = Duration::from_nanos(n(&r["on_cpu_ns"]));
        assert!(
            on_cpu > Duration::ZERO && on_cpu <= wall,
            "{name}: {on_cpu:?} of {wall:?}"
        );
    }

    // The sleeper: one voluntary switch per nanosleep, exactly, and nothing in D.
    let sleeper = row(summary, target_tids["sleeper"]);
    assert_eq!(n(&sleeper["switches_voluntary"]), SLEEPS, "{sleeper:#}");
    assert_eq!(n(&sleeper["blocked_ns"]), 0, "{sleeper:#}");
    assert_sleep_bounds(sleeper);

    // The spinners share CPU 0 for SPIN_MS of wall time each: they preempt each other, and
    // together cannot have had more of the CPU than the wall time.
    let spins: Vec<&Value> = ["spin-0", "spin-1"]
        .iter()
        .map(|s| row(summary, target_tids[*s]))
        .collect();
    let mut together = Duration::ZERO;
    for s in &spins {
        assert!(n(&s["switches_involuntary"]) > 0, "{s:#}");
        // No syscall after go, nothing to wait for: every switch-out is a preemption.
        assert_eq!(n(&s["switches_voluntary"]), 0, "{s:#}");
        assert_eq!(n(&s["blocked_ns"]), 0, "{s:#}");
        together += Duration::from_nanos(n(&s["on_cpu_ns"]));
    }
    assert!(together <= wall, "{together:?} on one CPU in {wall:?}");

    // The intervals add up to the summary, thread by thread.
    let intervals: Vec<&Value> = records.iter().filter(|r| r["type"] == "interval").collect();
    for (name, &tid) in &target_tids {
        let sum = |key: &str| -> u64 {
            intervals
                .iter()
                .flat_map(|i| rows(i).iter())
                .filter(|r| r["tid"] == tid)
                .map(|r| n(&r[key]))
                .sum()
        };
        let r = row(summary, tid);
        for key in [
            "switches_voluntary",
            "switches_involuntary",
            "on_cpu_ns",
            "sleep_ns",
            "blocked_ns",
        ] {
            assert_eq!(sum(key), n(&r[key]), "{name} {key}");
        }
    }
    bystander.finish();
}

/// The text table names each thread and shows its switches.
#[test]
fn text_report_has_a_row_per_thread() {
    require_root();
    let _serial = serial();
    let mut target = Workload::sched()
        .named("lt-sched-text")
        .flag("sleeps", 5)
        .flag("sleep-ms", 2)
        .switch("quiet")
        .spawn();
    let text = Trace::of(&target)
        .probes("sched")
        .switch("no-tui")
        .flag("interval", "10s")
        .run_text(&mut target);
    let summary = text
        .split("══ summary")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(summary.contains("ON-CPU"), "{text}");
    let sleeper = summary
        .lines()
        .find(|l| l.starts_with("sleeper "))
        .unwrap_or_else(|| panic!("no sleeper row:\n{text}"));
    // THREAD TID ON-CPU RUNQ P50 P99 MAX SLEEP BLOCKED VOL INVOL
    let cols: Vec<&str> = sleeper.split_whitespace().collect();
    assert_eq!(cols.len(), 11, "{sleeper}");
    assert_eq!(cols[9], "5", "voluntary switches: {sleeper}");
    assert_eq!(cols[8], "0ns", "nothing in D: {sleeper}");
}

/// Without --probes, sched is not loaded: it is opt-in until its host-wide cost is measured.
#[test]
fn sched_is_not_in_the_default_probes() {
    require_root();
    let _serial = serial();
    let mut target = Workload::sched().flag("sleeps", 1).spawn();
    let trace = Trace::of(&target).interval("100ms").spawn();
    assert!(trace.hooks(Some("sched")).is_empty(), "{:?}", trace.vias());
    target.go();
    target.lines_until_done();
    let records = trace.records();
    assert!(records.last().unwrap().get("sched").is_none());
}
