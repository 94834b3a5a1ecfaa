//! Probe family `mmap`: the target's mapping churn (mmap, munmap, mremap, madvise, brk),
//! received call by call from the `MMAP_EVENTS` ring. Each mapping is tied to its file when
//! it is mapped (`storage::Model`), so later calls on its addresses are attributed to that
//! file even though the fd is long closed.

mod report;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use lavtrace_common::{
    mmap::{RING, RING_BYTES},
    ring::lost,
    storage::sink,
};

#[cfg(test)]
pub use report::FileRow;
pub use report::{MmapSection, write_text};

use crate::{
    family::{self, Family, Flush, Options, Part, TextOptions, Window},
    kernel::{Hook, Overrides},
    ringbuf::Drain,
    storage::{self, MapChange, Model, Record, is_error, maps, nr},
};

pub const FAMILY: &str = "mmap";

/// A file, or a mapping address we never saw mapped.
const UNKNOWN: &str = "[unknown]";

#[derive(Debug, Clone, Default)]
struct SysCount {
    count: u64,
    errors: u64,
    bytes: u64,
    /// madvise: calls per advice.
    advice: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, Default)]
struct FileCount {
    mmaps: u64,
    munmaps: u64,
    mremaps: u64,
    madvises: u64,
    /// Bytes mapped by mmap (and grown by mremap).
    bytes: u64,
    bytes_unmapped: u64,
}

#[derive(Debug, Clone, Default)]
struct Counters {
    syscalls: BTreeMap<u32, SysCount>,
    files: HashMap<Arc<str>, FileCount>,
    /// `--per-thread`: (tid, syscall) → calls, errors, bytes.
    threads: BTreeMap<(u32, u32), [u64; 3]>,
}

struct State {
    model: Model,
    last_brk: Option<u64>,
    interval: Counters,
    total: Counters,
    /// `--per-thread`: thread names, looked up when a thread is first seen.
    names: Option<crate::threads::ThreadNames>,
}

impl State {
    fn on_record(&mut self, record: Record) {
        let Some(call) = self.model.apply(record) else {
            return;
        };
        let a = call.args;
        let failed = is_error(call.ret);
        let bytes = match call.nr {
            nr::MMAP | nr::MUNMAP | nr::MADVISE => a[1],
            nr::MREMAP => a[2],
            // A uprobe's brk(0) (a query) returns 0, not the break: it moves nothing.
            nr::BRK if !failed && call.ret != 0 => {
                let new = call.ret as u64;
                let delta = self.last_brk.map_or(0, |old| new.abs_diff(old));
                self.last_brk = Some(new);
                delta
            }
            nr::BRK => 0,
            _ => return,
        };
        // File attribution, with the model updated in ring order.
        let mut per_file: Vec<(Arc<str>, FileCount)> = Vec::new();
        if !failed {
            match self.model.map_change(&call) {
                Some(MapChange::Mapped { file }) => per_file.push((
                    file,
                    FileCount {
                        mmaps: 1,
                        bytes: a[1],
                        ..FileCount::default()
                    },
                )),
                Some(MapChange::Unmapped(pieces)) => {
                    if pieces.is_empty() {
                        per_file.push((
                            Arc::from(UNKNOWN),
                            FileCount {
                                munmaps: 1,
                                ..FileCount::default()
                            },
                        ));
                    }
                    for (i, (file, len)) in pieces.into_iter().enumerate() {
                        per_file.push((
                            file,
                            FileCount {
                                munmaps: u64::from(i == 0),
                                bytes_unmapped: len,
                                ..FileCount::default()
                            },
                        ));
                    }
                }
                Some(MapChange::Remapped { file }) => per_file.push((
                    file.unwrap_or_else(|| Arc::from(UNKNOWN)),
                    FileCount {
                        mremaps: 1,
                        bytes: a[2].saturating_sub(a[1]),
                        bytes_unmapped: a[1].saturating_sub(a[2]),
                        ..FileCount::default()
                    },
                )),
                None if call.nr == nr::MADVISE => per_file.push((
                    self.model
                        .maps
                        .lookup(a[0])
                        .unwrap_or_else(|| Arc::from(UNKNOWN)),
                    FileCount {
                        madvises: 1,
                        ..FileCount::default()
                    },
                )),
                None => {}
            }
        }
        if let Some(names) = self.names.as_mut() {
            names.name(call.tid);
        }
        // Named now, while the file (and its queue's `.queue`) still exists.
        for (file, _) in &per_file {
            self.model.names.name(file);
        }
        let per_thread = self.names.is_some();
        // Lengths are the target's arguments, any u64 (a record can also be corrupt): byte
        // sums saturate rather than wrap or panic.
        for c in [&mut self.interval, &mut self.total] {
            if per_thread {
                let t = c.threads.entry((call.tid, call.nr)).or_default();
                t[0] += 1;
                t[1] += u64::from(failed);
                t[2] = t[2].saturating_add(if failed { 0 } else { bytes });
            }
            let s = c.syscalls.entry(call.nr).or_default();
            s.count += 1;
            if failed {
                s.errors += 1;
            } else {
                s.bytes = s.bytes.saturating_add(bytes);
                if call.nr == nr::MADVISE {
                    *s.advice.entry(a[2]).or_default() += 1;
                }
            }
            for (file, add) in &per_file {
                let f = c.files.entry(file.clone()).or_default();
                f.mmaps += add.mmaps;
                f.munmaps += add.munmaps;
                f.mremaps += add.mremaps;
                f.madvises += add.madvises;
                f.bytes = f.bytes.saturating_add(add.bytes);
                f.bytes_unmapped = f.bytes_unmapped.saturating_add(add.bytes_unmapped);
            }
        }
    }
}

pub struct Tracer {
    pid: u32,
    state: Arc<Mutex<State>>,
    drain: Arc<Drain>,
    started: Instant,
    last: Instant,
    max_map_count: Option<u64>,
    live: Option<u64>,
    kinds: report::KindCache,
}

impl family::Section for MmapSection {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        family::one_key(FAMILY, self)
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        write_text(out, self, text.top);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::storage::FIELDS;
    const ABOUT: &'static str =
        "Mapping churn (mmap, munmap, mremap, madvise, brk) per file, and the map count";
    const LOST_SLOT: Option<u32> = Some(lost::MMAP);

    fn overrides(options: &Options, overrides: &mut Overrides) {
        overrides.ring(RING, options.ring_bytes.unwrap_or(RING_BYTES));
        storage::hooks::overrides(overrides);
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        Tracer::start(ebpf, pid, options)
    }
}

impl family::Tracer for Tracer {
    fn flush(&self) -> Flush<'_> {
        Box::pin(self.drain.flush())
    }

    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let (section, lost_since_attach) = self.build_section(window == Window::Whole, kernel_lost);
        Ok(Some(Part {
            section: Box::new(section),
            lost_since_attach,
        }))
    }
}

impl Tracer {
    fn start(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Tracer, Vec<Hook>)> {
        let hooks = storage::hooks::attach(
            ebpf,
            FAMILY,
            &storage::hooks::MMAP,
            sink::MMAP,
            pid,
            options,
        )?;
        let state = Arc::new(Mutex::new(State {
            model: Model::seed(pid),
            last_brk: None,
            interval: Counters::default(),
            total: Counters::default(),
            names: options
                .per_thread
                .then(|| crate::threads::ThreadNames::seed(pid)),
        }));
        let sink_state = state.clone();
        let drain = storage::spawn(ebpf, RING, move |r| storage::lock(&sink_state).on_record(r))
            .context("draining the mmap ring")?;
        let now = Instant::now();
        Ok((
            Tracer {
                pid,
                state,
                drain,
                started: now,
                last: now,
                max_map_count: maps::max_map_count(),
                live: maps::live_count(pid),
                kinds: report::KindCache::new(pid),
            },
            hooks,
        ))
    }

    /// This window's section (or the whole run's) and the events lost since attach;
    /// `kernel_lost` is the kernel's cumulative count for this family.
    fn build_section(&mut self, whole: bool, kernel_lost: u64) -> (MmapSection, u64) {
        let lost_total = kernel_lost
            + self
                .drain
                .stats
                .malformed
                .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(n) = maps::live_count(self.pid) {
            self.live = Some(n);
        }
        let now = Instant::now();
        let mut st = storage::lock(&self.state);
        let st = &mut *st;
        let (counters, secs, lost, threads) = {
            if whole {
                let threads = report::thread_rows(&st.total, st.names.as_mut());
                (
                    st.total.clone(),
                    (now - self.started).as_secs_f64(),
                    lost_total,
                    threads,
                )
            } else {
                let c = std::mem::take(&mut st.interval);
                let secs = (now - self.last).as_secs_f64();
                self.last = now;
                let threads = report::thread_rows(&c, st.names.as_mut());
                (c, secs, lost_total, threads)
            }
        };
        let mut section = report::section(
            &counters,
            secs,
            self.live,
            self.max_map_count,
            &mut self.kinds,
            &mut st.model.names,
        );
        section.threads = threads;
        (section, lost)
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
        /// report: no panic, and the text has no control character but its own newlines.
        #[test]
        fn any_records_give_a_printable_report(
            records in vec(crate::fuzz::storage_record(), 0..48),
        ) {
            let pid = std::process::id();
            let mut st = State {
                model: Model::seed(pid),
                last_brk: None,
                interval: Counters::default(),
                total: Counters::default(),
                names: Some(crate::threads::ThreadNames::seed(pid)),
            };
            for bytes in &records {
                if let Some(r) = storage::decode_record(bytes) {
                    st.on_record(r);
                }
            }
            let threads = report::thread_rows(&st.total, st.names.as_mut());
            let mut kinds = report::KindCache::new(pid);
            let mut section =
                report::section(&st.total, 1.0, Some(10), Some(65530), &mut kinds, &mut st.model.names);
            section.threads = threads;
            let mut out = String::new();
            write_text(&mut out, &section, 10);
            prop_assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
            prop_assert!(serde_json::to_string(&section).is_ok());
        }
    }
}
