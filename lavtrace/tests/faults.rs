//! Family `faults` against the real kernel: a workload whose faults are known (the
//! `faults` mode) must be reported with exact counts on the file they belong to, its own
//! getrusage figures as independent ground truth, and nothing of another process.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{Trace, Workload, require_root};
use serde_json::Value;

/// What the workload said before `done`: its files by role, its phases' own fault counts.
struct Said {
    files: HashMap<String, String>,
    /// phase → (minflt, majflt) of the thread that ran it.
    phases: HashMap<String, (u64, u64)>,
    segment_pages: Option<u64>,
}

fn said(lines: &[String]) -> Said {
    let mut s = Said {
        files: HashMap::new(),
        phases: HashMap::new(),
        segment_pages: None,
    };
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["file", role, path] => {
                s.files.insert(role.to_string(), path.to_string());
            }
            ["phase", name, "minflt", min, "majflt", maj] => {
                s.phases.insert(
                    name.to_string(),
                    (min.parse().unwrap(), maj.parse().unwrap()),
                );
            }
            ["segment", "pages", n] => s.segment_pages = Some(n.parse().unwrap()),
            _ => {}
        }
    }
    s
}

/// Where the workload's files go: a disk-backed filesystem, or the reason there is none
/// (the vm-test guests' root is in RAM: no page can be dropped from the page cache there,
/// so no major fault, and nothing is written back, so no dirty throttling).
fn disk_dir() -> Result<&'static str, String> {
    const DIR: &str = "/var/tmp";
    // SAFETY: statfs fills the struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c"/var/tmp".as_ptr(), &mut st) } != 0 {
        return Err(format!("{DIR}: {}", std::io::Error::last_os_error()));
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    match st.f_type as i64 {
        TMPFS_MAGIC | RAMFS_MAGIC => Err(format!("{DIR} is in RAM (tmpfs or ramfs)")),
        _ => Ok(DIR),
    }
}

/// The disk dir, or None after printing why the test cannot run here.
fn disk_or_skip(test: &str) -> Option<&'static str> {
    match disk_dir() {
        Ok(d) => Some(d),
        Err(why) => {
            println!("skipping {test}: {why}");
            None
        }
    }
}

/// One test at a time: the throttling test lowers the host's dirty limit, and the writeback
/// it forces would write-protect another test's dirty pages (a second write fault on a page:
/// real, but not the figure those tests assert).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Traces `target` (and lets `bystanders` run beside it) through `done`, reads a few
/// intervals while the mappings exist, ends the workloads and returns what the target said
/// and the summary's `faults` object.
fn trace(target: Workload, bystanders: Vec<Workload>) -> (Said, Value) {
    trace_with(target, bystanders, false).0
}

/// `trace`, with `--fault-time` when `fault_time`; also gives the attached hooks' programs.
fn trace_with(
    mut target: Workload,
    mut bystanders: Vec<Workload>,
    fault_time: bool,
) -> ((Said, Value), Vec<String>) {
    let mut args = Trace::of(&target).probes("faults").interval("200ms");
    if fault_time {
        args = args.switch("fault-time");
    }
    let t = args.spawn();
    let programs: Vec<String> = t
        .hooks(Some("faults"))
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    assert!(!t.vias().is_empty(), "no faults hook attached");
    target.go();
    for b in bystanders.iter_mut() {
        b.go();
    }
    let lines = target.lines_until_done();
    for b in bystanders.iter_mut() {
        b.lines_until_done();
    }
    // Two readings at least while every mapping is still there.
    std::thread::sleep(Duration::from_millis(700));
    for b in bystanders {
        b.finish();
    }
    // Closing its stdin ends the target, and lavtrace with it.
    target.finish();
    let records = t.records();
    (
        (said(&lines), records.last().unwrap()["faults"].clone()),
        programs,
    )
}

fn file<'a>(faults: &'a Value, path: &str) -> Option<&'a Value> {
    faults["files"]
        .as_array()
        .expect("faults.files")
        .iter()
        .find(|f| f["path"] == path)
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

const PAGES: u64 = 64;
const RETOUCH: u64 = 16;

#[test]
fn write_touched_pages_fault_once_each_on_their_file_and_again_after_dontneed() {
    require_root();
    let _serial = serial();
    // Any filesystem will do (a write fault maps one page, wherever it is).
    let w = Workload::faults()
        .flag("pages", PAGES)
        .flag("retouch", RETOUCH)
        .flag("dir", std::env::temp_dir().display())
        .spawn();
    let (said, faults) = trace(w, Vec::new());
    // Ground truth: the workload's own counters for each phase.
    let touch = said.phases["touch"];
    let retouch = said.phases["retouch"];
    assert_eq!(touch.0 + touch.1, PAGES, "getrusage of the touch phase");
    assert_eq!(
        retouch.0 + retouch.1,
        RETOUCH,
        "getrusage of the re-touch phase"
    );
    let touched = file(&faults, &said.files["touched"])
        .unwrap_or_else(|| panic!("no row for the touched file in {faults:#}"));
    assert_eq!(n(touched, "faults"), PAGES + RETOUCH, "{touched}");
    assert_eq!(n(touched, "pages_faulted"), PAGES, "{touched}");
    assert_eq!(touched["kind"], "file");
    match touched["write_faults"].as_u64() {
        Some(writes) => assert_eq!(writes, PAGES + RETOUCH, "every touch was a write"),
        None => println!("write_faults null: no exceptions tracepoint on this kernel"),
    }
    if let (Some(major), Some(minor)) = (touched["major"].as_u64(), touched["minor"].as_u64()) {
        // The kernel's own split (a write fault on a hole of a sparse file can be major:
        // ext4 reads the block map), within what the workload's getrusage saw.
        assert_eq!(major + minor, PAGES + RETOUCH, "{touched}");
        assert!(
            major <= touch.1 + retouch.1,
            "{touched} {touch:?} {retouch:?}"
        );
    }
    assert!(
        file(&faults, &said.files["untouched"]).is_none(),
        "a mapping never touched has no faults: {faults:#}"
    );
}

#[test]
fn reading_a_file_dropped_from_the_page_cache_takes_major_faults() {
    require_root();
    let Some(dir) = disk_or_skip("major faults") else {
        return;
    };
    let _serial = serial();
    const MAJOR: u64 = 32;
    let w = Workload::faults()
        .flag("major", MAJOR)
        .flag("dir", dir)
        .spawn();
    let (said, faults) = trace(w, Vec::new());
    let phase = said.phases["major"];
    assert!(phase.1 >= MAJOR, "getrusage of the read phase: {phase:?}");
    let row = file(&faults, &said.files["major"])
        .unwrap_or_else(|| panic!("no row for the dropped file in {faults:#}"));
    // MADV_RANDOM: no readahead, so fault-around finds no neighbour cached: one fault a page.
    assert_eq!(n(row, "faults"), MAJOR, "{row}");
    match row["major"].as_u64() {
        Some(major) => {
            // Each page was read from the disk: the kernel accounts every one as major.
            assert_eq!(major, MAJOR, "{row}");
            assert_eq!(n(row, "minor"), 0, "{row}");
        }
        None => {
            assert!(row["minor"].is_null(), "{row}");
            println!("major/minor unknown on this kernel (no perf major-faults event)");
        }
    }
    if let Some(writes) = row["write_faults"].as_u64() {
        assert_eq!(writes, 0, "reads only");
    }
}

/// `--fault-time` times each fault with a kprobe and kretprobe on handle_mm_fault where the
/// kernel has kprobes (the vm-test guests); elsewhere the figure is null, not 0.
#[test]
fn fault_time_is_measured_where_kprobes_exist_and_null_elsewhere() {
    require_root();
    let _serial = serial();
    let w = Workload::faults()
        .flag("pages", PAGES)
        .flag("dir", std::env::temp_dir().display())
        .spawn();
    let ((said, faults), programs) = trace_with(w, Vec::new(), true);
    let touched = file(&faults, &said.files["touched"])
        .unwrap_or_else(|| panic!("no row for the touched file in {faults:#}"));
    assert_eq!(n(touched, "faults"), PAGES, "{touched}");
    let timed = programs.iter().any(|p| p == "faults_mm_exit");
    assert_eq!(
        timed,
        common::kernel_has_kprobes(),
        "the kprobe pair is attached exactly where kprobes exist: {programs:?}"
    );
    if timed {
        // 64 faults of a page each: more than nothing, less than the whole run.
        let ns = n(touched, "fault_time_ns");
        assert!(ns > 0 && ns < 10_000_000_000, "{touched}");
    } else {
        assert!(touched["fault_time_ns"].is_null(), "{touched}");
    }
}

/// The perf events are opened per thread at attach and inherited: a thread started later
/// is counted through its creator's event.
#[test]
fn a_thread_started_after_attach_is_counted_with_its_major_faults() {
    require_root();
    let Some(dir) = disk_or_skip("major faults in a late thread") else {
        return;
    };
    let _serial = serial();
    const MAJOR: u64 = 16;
    let w = Workload::faults()
        .flag("major", MAJOR)
        .flag("dir", dir)
        .switch("in-thread")
        .spawn();
    let (said, faults) = trace(w, Vec::new());
    let row = file(&faults, &said.files["major"])
        .unwrap_or_else(|| panic!("no row for the dropped file in {faults:#}"));
    assert_eq!(n(row, "faults"), MAJOR, "{row}");
    if !row["major"].is_null() {
        assert_eq!(n(row, "major"), MAJOR, "{row}");
    }
}

#[test]
fn a_lavinmq_segment_takes_one_write_fault_per_page_its_messages_touch() {
    require_root();
    let _serial = serial();
    let w = Workload::faults()
        .flag("segment-msgs", 1000)
        .flag("msg-bytes", 1000)
        .spawn();
    let (said, faults) = trace(w, Vec::new());
    let pages = said.segment_pages.expect("segment pages line");
    // 4 + 1000 * 1000 bytes from offset 0: 245 pages.
    assert_eq!(pages, 245);
    let seg = file(&faults, &said.files["segment"])
        .unwrap_or_else(|| panic!("no row for the segment in {faults:#}"));
    assert_eq!(seg["kind"], "segment");
    assert!(
        seg["display"]
            .as_str()
            .is_some_and(|d| d.ends_with("/msgs.0000000001") && d.contains("queue:")),
        "{seg}"
    );
    assert_eq!(n(seg, "faults"), pages, "{seg}");
    assert_eq!(n(seg, "pages_faulted"), pages, "{seg}");
    if let Some(writes) = seg["write_faults"].as_u64() {
        assert_eq!(writes, pages, "{seg}");
    }
}

/// Sets `vm.dirty_bytes` and puts the dirty limits back as they were when dropped, also
/// when the test panics (writing `dirty_ratio` is how the kernel clears `dirty_bytes`).
struct DirtyLimit {
    bytes: String,
    ratio: String,
}

const DIRTY_BYTES: &str = "/proc/sys/vm/dirty_bytes";
const DIRTY_RATIO: &str = "/proc/sys/vm/dirty_ratio";

impl DirtyLimit {
    fn set(bytes: u64) -> DirtyLimit {
        let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
        let guard = DirtyLimit {
            bytes: read(DIRTY_BYTES),
            ratio: read(DIRTY_RATIO),
        };
        std::fs::write(DIRTY_BYTES, bytes.to_string()).unwrap();
        guard
    }
}

impl Drop for DirtyLimit {
    fn drop(&mut self) {
        let r = if self.bytes == "0" {
            std::fs::write(DIRTY_RATIO, &self.ratio)
        } else {
            std::fs::write(DIRTY_BYTES, &self.bytes)
        };
        if let Err(e) = r {
            eprintln!(
                "could not restore the dirty limit ({}/{}): {e}",
                self.bytes, self.ratio
            );
        }
    }
}

#[test]
fn a_writer_over_a_tiny_dirty_limit_is_throttled_and_a_bystander_is_not_counted() {
    require_root();
    let Some(dir) = disk_or_skip("dirty throttling") else {
        return;
    };
    let _serial = serial();
    let w = Workload::faults()
        .flag("dirty-mib", 64)
        .flag("dir", dir)
        .spawn();
    let bystander = Workload::faults().flag("pages", PAGES).spawn();
    // As the workload names its files.
    let bystander_file = format!("/var/tmp/lavtrace-faults-{}-touched", bystander.pid);
    let faults = {
        let _limit = DirtyLimit::set(4 << 20);
        trace(w, vec![bystander]).1
    };
    let throttle = faults["writeback"]["throttle"]
        .as_array()
        .expect("writeback.throttle");
    assert!(
        !throttle.is_empty(),
        "no balance_dirty_pages seen: {faults:#}"
    );
    let count: u64 = throttle.iter().map(|t| n(t, "count")).sum();
    let paused: u64 = throttle.iter().map(|t| n(t, "paused")).sum();
    assert!(count > 0 && paused > 0, "{faults:#}");
    assert!(
        throttle
            .iter()
            .all(|t| t["bdi"].as_str().is_some_and(|b| !b.is_empty()))
    );
    assert!(
        file(&faults, &bystander_file).is_none(),
        "the bystander's faults are not the target's: {faults:#}"
    );
}
