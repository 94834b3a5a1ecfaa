//! The `lavinmq` workload (LavinMQ 2.9.1's syscall patterns, see lavtrace-workload/src/lavinmq.rs) under
//! lavtrace: the exact counts it promises from its flags, attributed to the data dir and its
//! files; its threads named `lavinmq`; its data dir in LavinMQ's layout; SIGUSR1's dump.

mod common;

use std::{
    fs,
    process::{Command, Stdio},
};

use common::{Trace, Workload, count, require_root, syscall, workload_binary};
use serde_json::Value;

const SEGMENT: u64 = 8 << 20;
const ACKS: u64 = 1_597_832;
const PAGE: u64 = 4096;

fn sha1(s: &str) -> String {
    lavtrace_common::definitions::dir_hash(s)
}

/// The `data-dir <path>` line the workload prints once it has the go line.
fn data_dir(w: &Workload) -> String {
    let line = w.next_line().expect("a data-dir line");
    line.strip_prefix("data-dir ")
        .unwrap_or_else(|| panic!("expected data-dir, got {line:?}"))
        .to_string()
}

fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            fs::read_to_string(t.path().join("comm"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn exact_durability_and_mapping_calls_of_a_lavinmq_shaped_broker() {
    require_root();
    const QUEUES: u64 = 3;
    const SEGMENTS: u64 = 2;
    const SYNCFS: u64 = 150;
    const DELETED: u64 = 1;
    let mut target = Workload::lavinmq()
        .flag("queues", QUEUES)
        .segments(SEGMENTS)
        .syncfs(SYNCFS)
        .flag("delete", DELETED)
        .flag("gc-bursts", 4)
        // The data dir outlives the process: the rings may be drained after it exits (a
        // slow guest), and the data dir is recognised by its contents.
        .switch("keep")
        .spawn();
    // Main and the syncfs thread, both `lavinmq` as in the real broker.
    assert_eq!(thread_names(target.pid), ["lavinmq", "lavinmq"]);
    let trace = Trace::of(&target)
        .probes("fsync,mmap")
        .interval("200ms")
        .flag("slow", "0s")
        .spawn();
    target.go();
    let dir = data_dir(&target);
    target.wait_done();
    let records = trace.records();
    let _ = fs::remove_dir_all(&dir);
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "target_exited");
    assert_eq!(summary["lost_events"]["fsync"], 0);
    assert_eq!(summary["lost_events"]["mmap"], 0);

    // Durability: syncfs on the data dir's fd from the second thread; fsync only on
    // definitions.amqp, once per declare (one exchange, each queue) and per delete.
    let rows = summary["fsync"].as_array().unwrap();
    let syncfs: Vec<&Value> = rows.iter().filter(|r| r["syscall"] == "syncfs").collect();
    assert_eq!(syncfs.len(), 1, "{syncfs:?}");
    assert_eq!(syncfs[0]["count"], SYNCFS);
    assert_eq!(syncfs[0]["path"], dir.as_str());
    assert_eq!(syncfs[0]["kind"], "data_dir");
    let fsyncs: Vec<&Value> = rows.iter().filter(|r| r["syscall"] == "fsync").collect();
    assert_eq!(fsyncs.len(), 1, "{fsyncs:?}");
    let defs = format!("{dir}/{}/definitions.amqp", sha1("/"));
    assert_eq!(fsyncs[0]["path"], defs.as_str());
    assert_eq!(fsyncs[0]["kind"], "definitions");
    assert_eq!(fsyncs[0]["count"], 1 + QUEUES + DELETED);
    assert_eq!(rows.len(), 2, "nothing else synced: {rows:#?}");

    // Mappings: per segment an 8 MiB msgs map + DONTDUMP and an acks map; the deleted
    // queue's unmapped after their unlink, every fd long closed.
    let calls = |name: &str| {
        summary["mmap"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["syscall"] == name)
            .map(|r| (r["count"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()))
    };
    let n = QUEUES * SEGMENTS;
    let gone = DELETED * SEGMENTS;
    assert_eq!(calls("mmap"), Some((2 * n, n * (SEGMENT + ACKS))));
    assert_eq!(calls("madvise"), Some((n, n * SEGMENT)));
    // As called; the per-file figures below are in whole pages.
    assert_eq!(calls("munmap"), Some((2 * gone, gone * (SEGMENT + ACKS))));
    assert_eq!(calls("mremap"), None);
    assert_eq!(calls("brk"), None);
    let acks_pages = ACKS.div_ceil(PAGE) * PAGE;
    let files = summary["mmap"]["files"].as_array().unwrap();
    assert_eq!(files.len() as u64, 2 * n, "{files:#?}");
    let file = |queue: &str, name: &str| {
        let path = format!("{dir}/{}/{}/{name}", sha1("/"), sha1(queue));
        let found: Vec<&Value> = files
            .iter()
            .filter(|f| f["path"] == path.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{path}: {files:#?}");
        common::mmap_file_counts(found[0])
    };
    for q in 1..=QUEUES {
        let queue = format!("perf-test-{q}");
        let deleted = q <= DELETED;
        for s in 1..=SEGMENTS {
            let (unmaps, seg_bytes, ack_bytes) = if deleted {
                (1, SEGMENT, acks_pages)
            } else {
                (0, 0, 0)
            };
            assert_eq!(
                file(&queue, &format!("msgs.{s:010}")),
                [1, unmaps, 0, 1, SEGMENT, seg_bytes],
                "{queue} msgs.{s}"
            );
            assert_eq!(
                file(&queue, &format!("acks.{s:010}")),
                [1, unmaps, 0, 0, ACKS, ack_bytes],
                "{queue} acks.{s}"
            );
        }
    }
}

/// Boehm's stop-the-world, as the facts show it: per collection and stopped thread, a tgkill
/// of SIGPWR and one of SIGXCPU, one rt_sigsuspend, a rt_sigreturn from each handler.
#[test]
fn gc_bursts_are_exact_signal_bursts() {
    require_root();
    const BURSTS: u64 = 7;
    let mut target = Workload::lavinmq()
        .flag("queues", 1)
        .flag("delete", 0)
        .syncfs(40)
        .flag("gc-bursts", BURSTS)
        .spawn();
    let trace = Trace::of(&target)
        .probes("syscalls,gc")
        .interval("200ms")
        .switch("per-thread")
        .spawn();
    target.go();
    data_dir(&target);
    target.wait_done();
    let records = trace.records();
    let summary = records.last().unwrap();
    assert_eq!(summary["end"]["reason"], "target_exited");
    assert_eq!(count(summary, "syncfs"), 40);
    assert_eq!(count(summary, "tgkill"), 2 * BURSTS);
    assert_eq!(count(summary, "rt_sigsuspend"), BURSTS);
    assert_eq!(count(summary, "rt_sigreturn"), 2 * BURSTS);
    // The gc family sees each burst as one stop-the-world of the one other thread (the
    // syncfs one), whatever the syscalls family beside it does.
    assert_eq!(summary["gc"]["pauses"], BURSTS, "{:#}", summary["gc"]);
    for p in summary["gc"]["log"].as_array().unwrap() {
        assert_eq!(p["threads_stopped"], 1, "{p:#}");
        assert_eq!(p["threads_resumed"], 1, "{p:#}");
    }

    // SIGXCPU ends each rt_sigsuspend with -ERESTARTNOHAND (seen at sys_exit, before the
    // signal is delivered); the handler's rt_sigreturn then hands back -EINTR, the suspend's
    // result: an error of rt_sigsuspend, not of rt_sigreturn, in every table.
    let suspend = syscall(summary, "rt_sigsuspend").unwrap();
    assert_eq!(suspend["errors"], BURSTS, "{suspend}");
    assert_eq!(suspend["top_errno"]["name"], "ERESTARTNOHAND", "{suspend}");
    for r in records.iter().filter(|r| r.get("syscalls").is_some()) {
        if let Some(row) = syscall(r, "rt_sigreturn") {
            assert_eq!(row["errors"], 0, "{row}");
            assert!(row["top_errno"].is_null(), "{row}");
        }
        for t in r["threads"].as_array().unwrap() {
            for s in t["syscalls"].as_array().unwrap() {
                if s["name"] == "rt_sigreturn" {
                    assert_eq!(s["errors"], 0, "{t}");
                }
            }
        }
    }
    let per_thread: u64 = summary["threads"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["syscalls"].as_array().unwrap())
        .filter(|s| s["name"] == "rt_sigreturn")
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert_eq!(per_thread, 2 * BURSTS);
}

#[test]
fn the_data_dir_is_lavinmqs_and_sigusr1_dumps_the_gc_cycle_count() {
    const BURSTS: u64 = 5;
    let mut w = Workload::lavinmq()
        .flag("queues", 2)
        .segments(1)
        .flag("delete", 1)
        .syncfs(3)
        .flag("gc-bursts", BURSTS)
        .switch("wait")
        .spawn();
    w.go();
    let dir = data_dir(&w);
    w.wait_done();
    assert_eq!(
        fs::read_to_string(format!("/proc/{}/comm", w.pid)).unwrap(),
        "lavinmq\n"
    );
    assert_eq!(thread_names(w.pid), ["lavinmq", "lavinmq"]);

    // LavinMQ's layout: vhosts.json names the vhost dir, `.queue` names the queue dir, the
    // deleted queue's dir is gone.
    let vhosts: Value =
        serde_json::from_str(&fs::read_to_string(format!("{dir}/vhosts.json")).unwrap()).unwrap();
    assert_eq!(vhosts[0]["name"], "/");
    assert_eq!(vhosts[0]["dir"], sha1("/").as_str());
    let vhost = format!("{dir}/{}", sha1("/"));
    assert!(fs::metadata(format!("{vhost}/.vhost")).is_ok());
    assert!(fs::metadata(format!("{dir}/.lock")).is_ok());
    let kept = format!("{vhost}/{}", sha1("perf-test-2"));
    assert_eq!(
        fs::read_to_string(format!("{kept}/.queue")).unwrap(),
        "perf-test-2"
    );
    assert_eq!(
        fs::metadata(format!("{kept}/msgs.0000000001"))
            .unwrap()
            .len(),
        SEGMENT
    );
    assert_eq!(
        fs::metadata(format!("{kept}/acks.0000000001"))
            .unwrap()
            .len(),
        ACKS
    );
    assert_eq!(
        fs::metadata(format!("{kept}/meta.0000000001"))
            .unwrap()
            .len(),
        4
    );
    assert!(fs::metadata(format!("{vhost}/{}", sha1("perf-test-1"))).is_err());
    // definitions.amqp: the u32 version, then exchange.declare, 2 × queue.declare and
    // queue.delete, each a frame ending in 0xCE (sizes in machine byte order).
    let defs = fs::read(format!("{vhost}/definitions.amqp")).unwrap();
    assert_eq!(defs[..4], 1u32.to_ne_bytes());
    let mut at = 4;
    let mut methods = Vec::new();
    while at < defs.len() {
        let size = u32::from_ne_bytes(defs[at + 3..at + 7].try_into().unwrap()) as usize;
        let p = &defs[at + 7..at + 7 + size];
        methods.push((
            u16::from_ne_bytes([p[0], p[1]]),
            u16::from_ne_bytes([p[2], p[3]]),
        ));
        assert_eq!(defs[at + 7 + size], 0xce);
        at += 8 + size;
    }
    assert_eq!(methods, [(40, 10), (50, 10), (50, 10), (50, 40)]);

    for _ in 0..2 {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(w.pid as i32, libc::SIGUSR1) }, 0);
        assert_eq!(w.next_line().as_deref(), Some("GC"));
        assert_eq!(
            w.next_line(),
            Some(format!("  garbage collection cycle number: {BURSTS}"))
        );
        assert_eq!(w.next_line().as_deref(), Some("  marker threads: 0"));
        assert_eq!(w.next_line().as_deref(), Some("Fibers:"));
        for fiber in ["main>", "Publish confirm loop>"] {
            let line = w.next_line().unwrap();
            assert!(
                line.starts_with("#<Fiber:0x") && line.ends_with(fiber),
                "{line}"
            );
        }
    }
    w.finish();
    assert!(fs::metadata(&dir).is_err(), "{dir} removed at the end");
}

#[test]
fn deleting_more_queues_than_declared_is_one_clear_error() {
    let out = Command::new(workload_binary())
        .args(["lavinmq", "--queues", "1", "--delete", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "workload: --delete 2 is more than --queues 1\n"
    );
    assert!(out.stdout.is_empty());
}

/// The queue of every mapped file by name, in JSON (`queue` next to `path`) and text
/// (`vhost / · queue perf-test-2 · msgs.0000000001`), read from the workload's data dir.
#[test]
fn files_are_named_by_vhost_and_queue() {
    require_root();
    const QUEUES: u64 = 3;
    let spawn = || {
        Workload::lavinmq()
            .flag("queues", QUEUES)
            .segments(1)
            .syncfs(2)
            .flag("delete", 1)
            .flag("gc-bursts", 0)
            // The data dir stays until lavtrace is done: the rings are drained in batches,
            // and a workload this fast would otherwise remove it before the names are read
            // (a broker's live queues stay on disk).
            .switch("keep")
            .spawn()
    };
    let mut target = spawn();
    let trace = Trace::of(&target).probes("fsync,mmap").spawn();
    target.go();
    let dir = data_dir(&target);
    target.wait_done();
    let records = trace.records();
    fs::remove_dir_all(&dir).unwrap();
    let summary = records.last().unwrap();
    let vhost = sha1("/");

    // fsync: definitions.amqp belongs to the vhost, no queue.
    let fsync = summary["fsync"].as_array().unwrap();
    let defs = fsync.iter().find(|r| r["syscall"] == "fsync").unwrap();
    assert_eq!(
        defs["path"],
        format!("{dir}/{vhost}/definitions.amqp").as_str()
    );
    assert!(defs["queue"].is_null(), "{defs}");

    let files = summary["mmap"]["files"].as_array().unwrap();
    assert_eq!(files.len() as u64, 2 * QUEUES, "{files:#?}");
    for q in 1..=QUEUES {
        let name = format!("perf-test-{q}");
        for file in ["msgs.0000000001", "acks.0000000001"] {
            let path = format!("{dir}/{vhost}/{}/{file}", sha1(&name));
            let row = files.iter().find(|f| f["path"] == path.as_str()).unwrap();
            let queue = &row["queue"];
            assert_eq!(queue["vhost"], "/", "{row}");
            assert_eq!(queue["vhost_hash"], vhost.as_str());
            assert_eq!(queue["hash"], sha1(&name).as_str());
            if q == 1 {
                // Deleted during the run: named if lavtrace read its `.queue` (or the declare)
                // before the delete record, else its hash, marked. Either is right; which it
                // was is printed.
                assert!(
                    queue["name"] == name.as_str() || queue["name"].is_null(),
                    "{row}"
                );
                eprintln!("deleted queue {name}: name in JSON = {}", queue["name"]);
            } else {
                assert_eq!(queue["name"], name.as_str(), "{row}");
            }
        }
    }

    // The same run in text: every live queue's files by name.
    let mut target = spawn();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lavtrace"))
        .args(["trace", "--probes", "fsync,mmap", "--top", "50", "--pid"])
        .arg(target.pid.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::new(child.stdout.take().unwrap());
    let first = lines.next().unwrap();
    assert!(first.starts_with("lavtrace: tracing pid"), "{first}");
    target.go();
    let dir = data_dir(&target);
    target.wait_done();
    let text = lines.rest().join("\n");
    assert!(child.wait().unwrap().success(), "{text}");
    fs::remove_dir_all(&dir).unwrap();
    for q in 2..=QUEUES {
        for file in ["msgs.0000000001", "acks.0000000001"] {
            let line = format!("vhost / · queue perf-test-{q} · {file}");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }
    let deleted = "vhost / · queue perf-test-1 · msgs.0000000001";
    let hashed = format!(
        "vhost / · queue #{} · msgs.0000000001",
        &sha1("perf-test-1")[..8]
    );
    assert!(
        text.contains(deleted) || text.contains(&hashed),
        "the deleted queue by name or marked hash:\n{text}"
    );
    eprintln!(
        "deleted queue in text: {}",
        if text.contains(deleted) {
            "by name"
        } else {
            "by hash"
        }
    );
    assert!(text.contains("vhost / · definitions.amqp"), "{text}");
    assert!(!text.contains("vhost:"), "no hash paths left:\n{text}");
}

/// Issue 18, hundreds of queues: every segment and ack file of 500 durable queues is
/// attributed to its own queue, by name.
#[test]
fn hundreds_of_queues_each_own_their_segments() {
    require_root();
    const QUEUES: u64 = 500;
    let mut target = Workload::lavinmq()
        .flag("queues", QUEUES)
        .segments(1)
        .syncfs(2)
        .flag("delete", 0)
        .flag("gc-bursts", 0)
        .switch("keep")
        .spawn();
    // A ring that holds the whole burst: a one-vCPU guest drains it late, and a loss (which
    // is counted) would leave files out.
    let trace = Trace::of(&target)
        .probes("fsync,mmap")
        .flag("ring-bytes", 8 << 20)
        .spawn();
    target.go();
    let dir = data_dir(&target);
    target.wait_done();
    let records = trace.records();
    fs::remove_dir_all(&dir).unwrap();
    let summary = records.last().unwrap();
    assert_eq!(summary["lost_events"]["mmap"], 0);
    let vhost = sha1("/");
    let files = summary["mmap"]["files"].as_array().unwrap();
    assert_eq!(files.len() as u64, 2 * QUEUES);
    for q in 1..=QUEUES {
        let name = format!("perf-test-{q}");
        for file in ["msgs.0000000001", "acks.0000000001"] {
            let path = format!("{dir}/{vhost}/{}/{file}", sha1(&name));
            let row = files
                .iter()
                .find(|f| f["path"] == path.as_str())
                .unwrap_or_else(|| panic!("no row for {path}"));
            assert_eq!(row["queue"]["name"], name.as_str(), "{row}");
            assert_eq!(row["queue"]["hash"], sha1(&name).as_str(), "{row}");
        }
    }
}

/// The target's limits in every record, equal to /proc and statvfs while it is quiet; at 80 %
/// of the open-files limit a warning in JSON and text.
#[test]
fn limits_equal_proc_and_warn_at_eighty_percent() {
    require_root();
    let mut w = Workload::lavinmq()
        .flag("queues", 3)
        .segments(1)
        .syncfs(2)
        .flag("gc-bursts", 0)
        .switch("wait")
        .spawn();
    w.go();
    let dir = data_dir(&w);
    w.wait_done();
    // Quiet from here until stdin closes: its fds and mappings stay as they are.
    let pid = w.pid;
    let fds = || fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let maps = || {
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .count() as u64
    };
    let (fds_open, mappings) = (fds(), maps());
    // An open-files limit the workload's fds fill to 80 % or more.
    let soft = fds_open * 100 / 85;
    assert!(soft > fds_open, "{fds_open} fds");
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into `old` only.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // Only the soft limit moves: raising the hard one needs CAP_SYS_RESOURCE.
    let set = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit on our own child; `set` is a valid rlimit (soft below the hard one).
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &set, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());

    let records = Trace::of(&w)
        .probes("fsync")
        .interval("100ms")
        .flag("duration", "300ms")
        .spawn()
        .records();
    assert_eq!(
        (fds(), maps()),
        (fds_open, mappings),
        "the workload stayed quiet"
    );
    let du = Command::new("du")
        .args(["-sx", "--block-size=1", &dir])
        .output()
        .unwrap();
    let du: u64 = String::from_utf8(du.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let max_map: u64 = fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(records.len() >= 3, "{records:?}");
    for r in &records {
        let l = &r["limits"];
        assert_eq!(l["fds_open"], fds_open, "{r}");
        assert_eq!(l["fd_limit"], soft);
        assert_eq!(l["mappings"], mappings);
        assert_eq!(l["max_map_count"], max_map);
        assert_eq!(l["data_dir"], dir.as_str());
        assert_eq!(l["data_dir_bytes"], du);
        let free = l["disk_free_bytes"].as_u64().unwrap();
        assert!(free > 0 && free <= l["disk_size_bytes"].as_u64().unwrap());
        assert_eq!(l["warnings"][0], "fds", "{l}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_lavtrace"))
        .args(["trace", "--probes", "fsync", "--duration", "200ms", "--pid"])
        .arg(pid.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let pct = fds_open * 100 / soft;
    let line = format!("LIMITS  fds {fds_open}/{soft} ({pct} %) · mappings {mappings}/{max_map}");
    assert!(text.contains(&line), "{line} missing from:\n{text}");
    assert!(
        text.contains(&format!(
            "WARNING open fds near the target's open-files limit ({fds_open} of {soft}, {pct} %)"
        )),
        "{text}"
    );
    w.finish();
}
