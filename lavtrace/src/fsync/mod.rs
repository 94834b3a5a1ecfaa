//! Probe family `fsync`: every durability call of the target (fsync, fdatasync, syncfs, sync,
//! sync_file_range, msync), timed in the kernel (`lavtrace-ebpf/src/fsync.rs`), received one
//! by one from the `FSYNC_EVENTS` ring and aggregated here per (syscall, file, flags).

mod report;
pub mod slow;
pub(crate) mod stats;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use lavtrace_common::{
    fsync::{RING, RING_BYTES},
    ring::lost,
    storage::sink,
};

pub use report::{Bucket, FsyncRow, histogram, write_text};
use slow::{SlowCall, SlowLog};
use stats::Latency;

use crate::{
    family::{self, Family, Flush, Options, Part, TextOptions, Window},
    kernel::{Hook, Overrides},
    ringbuf::Drain,
    storage::{self, Model, Record, files::Mounts, is_error, lavinmq, maps, nr},
};

pub const FAMILY: &str = "fsync";

/// Aggregation key: one row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    nr: u32,
    path: Arc<str>,
    /// msync / sync_file_range flags.
    flags: Option<u64>,
    /// `--per-thread`: the calling thread.
    tid: Option<u32>,
}

/// What a path is, worked out once per path.
#[derive(Debug, Clone)]
pub struct PathInfo {
    pub kind: lavinmq::Kind,
    pub display: String,
    /// The LavinMQ queue the file belongs to (JSON `queue`).
    pub queue: Option<storage::naming::QueueRef>,
    pub mount: Option<report::MountRef>,
}

struct State {
    model: Model,
    mounts: Mounts,
    infos: HashMap<Arc<str>, Arc<PathInfo>>,
    /// The open interval: calls that returned up to `cut` (all of them, with no cut pending).
    interval: HashMap<Key, Latency>,
    /// Calls that returned after `cut`: the next interval's.
    next: HashMap<Key, Latency>,
    /// The end of the open interval, once the session has set it (`Tracer::cut`); the
    /// syscalls table is cut at the same instant, so the two agree call for call.
    cut: Option<u64>,
    /// The kernel's half (`cut::half`) of the open interval: interval k is half k & 1.
    open_half: u32,
    /// Every closed interval: the summary is their sum.
    total: HashMap<Key, Latency>,
    slow: Option<SlowLog>,
    /// `--per-thread`: rows per thread too, named from /proc.
    threads: Option<crate::threads::ThreadNames>,
}

/// The calls its exit program sees (one program on all of their exit tracepoints).
const DURABILITY: [u32; 6] = [
    nr::FSYNC,
    nr::FDATASYNC,
    nr::SYNCFS,
    nr::SYNC,
    nr::SYNC_FILE_RANGE,
    nr::MSYNC,
];

/// Path of `sync`, which has no file: every filesystem.
const ALL_FILESYSTEMS: &str = "(all filesystems)";
/// An msync address that no known mapping covers.
const UNMAPPED: &str = "[unmapped]";

impl State {
    /// Seeded from /proc: the target's fds, mappings and mounts as they are now.
    fn seed(pid: u32, slow: Option<SlowLog>, per_thread: bool) -> State {
        State {
            model: Model::seed(pid),
            mounts: Mounts::read(pid),
            infos: HashMap::new(),
            interval: HashMap::new(),
            next: HashMap::new(),
            cut: None,
            // Interval 1 is half 1 (`lavtrace_common::cut::half` before any cut).
            open_half: 1,
            total: HashMap::new(),
            slow,
            threads: per_thread.then(|| crate::threads::ThreadNames::seed(pid)),
        }
    }

    fn on_record(&mut self, record: Record) {
        let Some(call) = self.model.apply(record) else {
            return;
        };
        let a = call.args;
        let (path, flags, bytes): (Arc<str>, Option<u64>, u64) = match call.nr {
            nr::MMAP | nr::MUNMAP | nr::MREMAP => {
                self.model.map_change(&call);
                return;
            }
            nr::FSYNC | nr::FDATASYNC | nr::SYNCFS => (self.model.fds.path(a[0] as i32), None, 0),
            nr::SYNC_FILE_RANGE => (self.model.fds.path(a[0] as i32), Some(a[3]), a[2]),
            nr::SYNC => (Arc::from(ALL_FILESYSTEMS), None, 0),
            nr::MSYNC => (
                self.model
                    .maps
                    .lookup(a[0])
                    .unwrap_or_else(|| Arc::from(UNMAPPED)),
                Some(a[2]),
                a[1],
            ),
            _ => return,
        };
        let error = is_error(call.ret);
        // Worked out now, while the file still exists (the data dir is recognised by its
        // contents; a segment may be deleted before the next report).
        let info = info_of(&mut self.infos, &self.mounts, &mut self.model.names, &path);
        let tid = self.threads.as_mut().map(|names| {
            // Named now, while the thread still exists.
            names.name(call.tid);
            call.tid
        });
        let key = Key {
            nr: call.nr,
            path,
            flags,
            tid,
        };
        if let Some(slow) = self.slow.as_mut()
            && slow.is_slow(call.duration_ns)
        {
            let flags = flags.map(|f| report::flag_names(call.nr, f));
            slow.print(&SlowCall {
                start_ns: call.start_ns,
                tid: call.tid,
                syscall: report::syscall_name(call.nr),
                path: &key.path,
                display: &info.display,
                flags: flags.as_deref(),
                duration_ns: call.duration_ns,
                ret: call.ret,
            });
        }
        // Placed where the kernel placed its count in the syscall table (the record says),
        // else by its return time.
        let returned = call.start_ns.wrapping_add(call.duration_ns);
        let window = match (call.interval_half.checked_sub(1), self.cut) {
            (Some(half), _) if half == self.open_half => &mut self.interval,
            (Some(_), _) => &mut self.next,
            (None, Some(cut)) if returned > cut => &mut self.next,
            (None, _) => &mut self.interval,
        };
        window
            .entry(key)
            .or_default()
            .record(call.duration_ns, error, bytes);
    }

    /// Closes the open interval: its calls go to the total, the next interval's become the
    /// open one.
    fn close(&mut self) -> HashMap<Key, Latency> {
        let closed = std::mem::replace(&mut self.interval, std::mem::take(&mut self.next));
        self.cut = None;
        self.open_half ^= 1;
        for (key, latency) in &closed {
            self.total.entry(key.clone()).or_default().merge(latency);
        }
        closed
    }

    fn rows(&mut self, which: &HashMap<Key, Latency>) -> Vec<FsyncRow> {
        let mut rows: Vec<FsyncRow> = which
            .iter()
            .map(|(k, l)| {
                let info = info_of(
                    &mut self.infos,
                    &self.mounts,
                    &mut self.model.names,
                    &k.path,
                );
                let mut row = FsyncRow::new(k.nr, &k.path, k.flags, &info, l);
                if let (Some(tid), Some(names)) = (k.tid, self.threads.as_mut()) {
                    row.tid = Some(tid);
                    row.thread = names.name(tid).map(|n| n.to_string());
                }
                row
            })
            .collect();
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.syscall.cmp(b.syscall))
                .then_with(|| a.path.cmp(&b.path))
                .then_with(|| a.flags.cmp(&b.flags))
                .then_with(|| a.tid.cmp(&b.tid))
        });
        rows
    }
}

fn info_of(
    infos: &mut HashMap<Arc<str>, Arc<PathInfo>>,
    mounts: &Mounts,
    names: &mut storage::naming::Namer,
    path: &Arc<str>,
) -> Arc<PathInfo> {
    infos
        .entry(path.clone())
        .or_insert_with(|| {
            let kind = if &**path == ALL_FILESYSTEMS {
                lavinmq::Kind::System
            } else if &**path == maps::ANONYMOUS {
                lavinmq::Kind::Anonymous
            } else {
                names.kind(path)
            };
            let mount = path
                .starts_with('/')
                .then(|| mounts.of(path))
                .flatten()
                .map(|m| report::MountRef {
                    point: m.point.clone(),
                    fstype: m.fstype.clone(),
                    source: m.source.clone(),
                });
            let naming = names.name(path);
            Arc::new(PathInfo {
                kind,
                display: naming.display.clone(),
                queue: naming.queue.clone(),
                mount,
            })
        })
        .clone()
}

/// A window of the family: one row per (syscall, file, flags[, thread]).
#[derive(Debug, Clone, Default)]
pub struct Section(pub Vec<FsyncRow>);

impl family::Section for Section {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        family::one_key(FAMILY, &self.0)
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        write_text(out, &self.0, text.top);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct Tracer {
    state: Arc<Mutex<State>>,
    drain: Arc<Drain>,
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::storage::FIELDS;
    const ABOUT: &'static str =
        "Durability calls (fsync, fdatasync, syncfs, sync, sync_file_range, msync) per file";
    const LOST_SLOT: Option<u32> = Some(lost::FSYNC);

    /// Its tracepoint exit counts the durability calls into the syscall table
    /// (`lavtrace_common::syscalls::COUNTED_ELSEWHERE`), so the two agree call for call. The
    /// uprobe and kprobe exits do not (a uprobe sees libc's calls only, with libc's return
    /// values): auto picks them only without the syscalls family, and a forced set leaves the
    /// syscalls family counting these calls itself.
    fn overrides(options: &Options, overrides: &mut Overrides) {
        overrides.ring(RING, options.ring_bytes.unwrap_or(RING_BYTES));
        storage::hooks::overrides(overrides);
        if matches!(
            options.storage_hooks,
            storage::hooks::Mode::Auto | storage::hooks::Mode::Tracepoint
        ) {
            let mut counted = [u32::MAX; lavtrace_common::syscalls::COUNTED_ELSEWHERE_LEN];
            counted[..DURABILITY.len()].copy_from_slice(&DURABILITY);
            overrides.global_u32s(lavtrace_common::syscalls::COUNTED_ELSEWHERE, &counted);
        }
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        Tracer::start(ebpf, pid, options)
    }
}

impl family::Tracer for Tracer {
    fn flush(&self) -> Flush<'_> {
        Box::pin(self.drain.flush())
    }

    fn cut(&mut self, at_ns: u64) {
        storage::lock(&self.state).cut = Some(at_ns);
    }

    /// The rows since the last interval (or the whole run); its losses are the kernel's
    /// count plus records that arrived malformed.
    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let lost_since_attach = kernel_lost
            + self
                .drain
                .stats
                .malformed
                .load(std::sync::atomic::Ordering::Relaxed);
        let mut st = storage::lock(&self.state);
        let rows = match window {
            Window::Whole => {
                let total = std::mem::take(&mut st.total);
                let rows = st.rows(&total);
                st.total = total;
                rows
            }
            Window::Interval => {
                let closed = st.close();
                st.rows(&closed)
            }
        };
        Ok(Some(Part {
            section: Box::new(Section(rows)),
            lost_since_attach,
        }))
    }
}

impl Tracer {
    fn start(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Tracer, Vec<Hook>)> {
        let hooks = storage::hooks::attach(
            ebpf,
            FAMILY,
            &storage::hooks::FSYNC,
            sink::FSYNC,
            pid,
            options,
        )?;
        let slow = options.slow.map(|d| SlowLog::new(d, options.json, pid));
        let state = Arc::new(Mutex::new(State::seed(pid, slow, options.per_thread)));
        let sink_state = state.clone();
        let drain = storage::spawn(ebpf, RING, move |r| storage::lock(&sink_state).on_record(r))
            .context("draining the fsync ring")?;
        Ok((Tracer { state, drain }, hooks))
    }
}

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    proptest! {
        // Each case seeds a model from this process's /proc.
        #![proptest_config(crate::fuzz::config(200))]

        /// Any records, decodable or not, through the family's bookkeeping and into its
        /// report: no panic, and the text has no control character but its own newlines
        /// (opened paths come from the records' bytes).
        #[test]
        fn any_records_give_a_printable_report(
            records in vec(crate::fuzz::storage_record(), 0..48),
        ) {
            let pid = std::process::id();
            let mut st = State::seed(pid, None, true);
            for bytes in &records {
                if let Some(r) = storage::decode_record(bytes) {
                    st.on_record(r);
                }
            }
            let total = std::mem::take(&mut st.total);
            let rows = st.rows(&total);
            let mut out = String::new();
            write_text(&mut out, &rows, 10);
            prop_assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
            prop_assert!(serde_json::to_string(&rows).is_ok());
        }
    }
}
