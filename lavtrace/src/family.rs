//! The one shape of a probe family, the registry of every family, and the lost-event window
//! they all share. The session loops over the registry's entries and never names a family;
//! output reads the `Section`s they return.
//!
//! A family is a type implementing `Family` (how it is set up: its name, what it sets in the
//! object before load, its attach) and `Tracer` (what the session asks of it once attached:
//! flush, a section per window). Adding one is its four places plus one line in `REGISTRY`
//! (README, Layout).

use std::{any::Any, fmt::Debug, future::Future, pin::Pin, time::Duration};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use lavtrace_common::field::FieldSpec;
use serde_json::value::RawValue;

use crate::{
    amqp, faults, floor, fsync, gc,
    kernel::{Hook, Overrides},
    mmap, sched, storage, syscalls, tcp,
};

/// Every family, in report order (the order of the text tables and JSON keys).
pub static REGISTRY: &[Entry] = &[
    entry::<syscalls::Tracer>(),
    entry::<fsync::Tracer>(),
    entry::<mmap::Tracer>(),
    entry::<tcp::Tracer>(),
    entry::<amqp::Tracer>(),
    entry::<sched::Tracer>(),
    entry::<gc::Tracer>(),
    entry::<faults::Tracer>(),
    entry::<floor::Raw>(),
    entry::<floor::Tracepoint>(),
];

/// The families an operator sees (`--help`, `check`); hidden ones are for benchmarks.
pub fn visible() -> impl Iterator<Item = &'static Entry> {
    REGISTRY.iter().filter(|e| !e.hidden)
}

/// The `--probes` default: the visible families that are not opt-in.
pub fn defaults() -> impl Iterator<Item = &'static Entry> {
    visible().filter(|e| e.default)
}

/// How a family is set up, before there is anything attached.
pub trait Family: Tracer + Sized + 'static {
    /// The one name: `--probes`, JSON key of its lost events, `Hook::family`.
    const NAME: &'static str;
    /// Its line in `--help` (`--probes` possible values).
    const ABOUT: &'static str;
    /// Benchmark-only: not in the `--probes` defaults or `check`.
    const HIDDEN: bool = false;
    /// Its hooks are raw_syscalls or `syscalls:*` tracepoints on every syscall: attached, they
    /// put every thread of the host on the slow syscall path (TIF_SYSCALL_TRACEPOINT), so
    /// the other families may as well use such tracepoints too (`Options::syscall_slow_path`).
    const SYSCALL_SLOW_PATH: bool = false;
    /// In the `--probes` default (false: opt-in, e.g. a family whose host-wide cost is not
    /// measured yet; `check` still tries it).
    const DEFAULT: bool = true;
    /// It loads a program against the kernel's BTF at attach (tp_btf). Such families attach
    /// first, so the session can drop that parse (about 10 MiB) before the others map their
    /// rings.
    const LOADS_AGAINST_BTF: bool = false;
    /// Index of its kernel lost-event counter (`lavtrace_common::ring::lost`), if it has a ring.
    const LOST_SLOT: Option<u32> = None;

    /// The tracepoint record fields its programs read, checked against this kernel's tracefs
    /// at load (`kernel::fields`); their offsets become read-only globals.
    const FIELDS: &'static [FieldSpec] = &[];

    /// Globals and ring sizes it sets in the object before it is loaded.
    fn overrides(_options: &Options, _overrides: &mut Overrides) {}

    /// Attaches its programs to the loaded object, filtered to `pid`.
    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)>;
}

/// What the session asks of an attached family.
pub trait Tracer {
    /// Waits until every event already in the kernel's rings has been aggregated.
    fn flush(&self) -> Flush<'_> {
        Box::pin(std::future::ready(()))
    }

    /// The open interval ends at `at_ns` (CLOCK_MONOTONIC, a moment away): calls that
    /// return after it belong to the next one. The session sets it for every family at once,
    /// waits until it has passed and the programs of calls before it are done, flushes, and
    /// asks for the interval's sections.
    fn cut(&mut self, _at_ns: u64) {}

    /// Its section for `window`, with the events lost since attach; `kernel_lost` is the
    /// kernel's cumulative count for its `LOST_SLOT` (0 without one). None: it reports nothing.
    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>>;

    /// `lavtrace check`: (program, status) lines beyond the hooks in use (alternatives not
    /// chosen, and why).
    fn check_notes(&self, _in_use: &[Hook]) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The future `Tracer::flush` returns (boxed: the session holds families as trait objects).
pub type Flush<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One family's part of a window.
pub struct Part {
    pub section: Box<dyn Section>,
    /// Events lost since attach (the session turns it into this window's figure).
    pub lost_since_attach: u64,
}

/// What output needs of a family's section: its JSON keys and its text tables. The live view
/// and metrics read the concrete type (`Sections::get`).
pub trait Section: Any + Debug + Send {
    /// (key, value) pairs of the record, in order.
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<RawValue>)>>;
    fn write_text(&self, out: &mut String, text: &TextOptions);
    fn as_any(&self) -> &dyn Any;
    /// Its pane in the live view, for a family the view has no pane of its own for: a table
    /// of formatted cells, most important row first. None: no pane.
    fn pane(&self) -> Option<TablePane> {
        None
    }
}

/// A family's table in the live view (`Section::pane`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePane {
    /// The pane's name (its title and the focus line), e.g. `scheduling`.
    pub name: &'static str,
    /// What the title says after the name, e.g. `· this interval · 3 threads`.
    pub title: String,
    pub header: Vec<&'static str>,
    /// Rows of cells, as many as `header`; the view shows as many as fit.
    pub rows: Vec<Vec<String>>,
}

/// Options of the text tables.
#[derive(Debug, Clone, Copy)]
pub struct TextOptions {
    pub sort: SortKey,
    pub top: usize,
    /// The summary (whole run) rather than an interval.
    pub summary: bool,
}

/// Order of the syscall-like tables (`--sort`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Count,
    Time,
    Errors,
    Max,
}

/// Which window a section covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Since the previous interval (or attach).
    Interval,
    /// Since attach.
    Whole,
}

/// The options of an attach, as plain values (the CLI converts its flags into these).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Break figures down per thread.
    pub per_thread: bool,
    /// Bytes per event ring of the storage families (tests use a tiny ring to force losses).
    pub ring_bytes: Option<u32>,
    /// fsync: print calls slower than this as they happen.
    pub slow: Option<Duration>,
    /// Records as JSON (the slow calls follow the report's format).
    pub json: bool,
    pub syscalls_hooks: syscalls::HookChoice,
    /// `--syscalls-sample`: the syscalls family on a duty cycle (its figures estimates).
    pub syscalls_sample: Option<syscalls::sample::Duty>,
    pub tcp_hooks: tcp::hooks::Mode,
    /// How the kernel's BPF run-time statistics are held (they are host-wide; see
    /// `overhead`).
    pub bpf_stats: crate::overhead::StatsMode,
    /// The storage families' hook set (`--storage-hooks`).
    pub storage_hooks: storage::hooks::Mode,
    /// A family of this session puts every thread of the host on the kernel's slow syscall
    /// path anyway (`Family::SYSCALL_SLOW_PATH`); set by the session, not a flag.
    pub syscall_slow_path: bool,
    pub sched_hooks: sched::HookChoice,
    /// gc: the runtime's suspend and restart signals (`--gc-signals`).
    pub gc_signals: gc::Signals,
    /// gc: print pauses at least this long as they end (`--slow-gc`).
    pub gc_slow: Option<Duration>,
    /// faults: time each fault (kprobe + kretprobe on handle_mm_fault).
    pub fault_time: bool,
    /// amqp: listening ports besides 5672 (`--amqp-port`), and its hook set.
    pub amqp_ports: Vec<u16>,
    /// AMQPS ports besides 5671 (`--amqps-port`): parsed from the SSL calls, or counted as
    /// TLS, not parsed.
    pub amqps_ports: Vec<u16>,
    /// amqp: leave the target's SSL calls unprobed (`--no-ssl-probes`): AMQPS not parsed.
    pub no_ssl_probes: bool,
    pub amqp_hooks: amqp::hooks::Mode,
}

/// One line of the registry.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub hidden: bool,
    pub syscall_slow_path: bool,
    pub default: bool,
    pub loads_against_btf: bool,
    lost_slot: Option<u32>,
    fields: &'static [FieldSpec],
    overrides: fn(&Options, &mut Overrides),
    attach: fn(&mut Ebpf, u32, &Options) -> Result<Attached>,
}

/// A family just attached, and the hooks it is on.
type Attached = (Box<dyn Tracer>, Vec<Hook>);

const fn entry<F: Family>() -> Entry {
    Entry {
        name: F::NAME,
        about: F::ABOUT,
        hidden: F::HIDDEN,
        syscall_slow_path: F::SYSCALL_SLOW_PATH,
        default: F::DEFAULT,
        loads_against_btf: F::LOADS_AGAINST_BTF,
        lost_slot: F::LOST_SLOT,
        fields: F::FIELDS,
        overrides: F::overrides,
        attach: attach_boxed::<F>,
    }
}

fn attach_boxed<F: Family>(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<Attached> {
    let (tracer, hooks) = F::attach(ebpf, pid, options)?;
    Ok((Box::new(tracer), hooks))
}

impl Entry {
    pub fn overrides(&self, options: &Options, overrides: &mut Overrides) {
        overrides.fields(self.name, self.fields);
        (self.overrides)(options, overrides);
    }

    pub fn attach(
        &'static self,
        ebpf: &mut Ebpf,
        pid: u32,
        options: &Options,
    ) -> Result<(Loaded, Vec<Hook>)> {
        let (tracer, hooks) = (self.attach)(ebpf, pid, options)
            .with_context(|| format!("attaching the {} family", self.name))?;
        Ok((
            Loaded {
                entry: self,
                tracer,
                lost: LostWindow::default(),
            },
            hooks,
        ))
    }
}

/// An attached family, as the session holds it.
pub struct Loaded {
    pub entry: &'static Entry,
    pub tracer: Box<dyn Tracer>,
    lost: LostWindow,
}

impl Loaded {
    /// Its section for `window` and the events lost in that window; `lost_counter` reads a
    /// slot of the kernel's lost-event counters, `skipped` is the runs of its programs the
    /// kernel skipped since attach (`kernel::recursion_misses`).
    pub fn section(
        &mut self,
        window: Window,
        lost_counter: impl Fn(u32) -> u64,
        skipped: u64,
    ) -> Result<Option<(Box<dyn Section>, u64)>> {
        let kernel_lost = self.entry.lost_slot.map_or(0, lost_counter) + skipped;
        let Some(part) = self.tracer.section(window, kernel_lost)? else {
            return Ok(None);
        };
        let lost = match window {
            Window::Whole => part.lost_since_attach,
            Window::Interval => self.lost.window(part.lost_since_attach),
        };
        Ok(Some((part.section, lost)))
    }
}

/// A family's lost events per window, from its cumulative count.
#[derive(Debug, Default)]
pub struct LostWindow {
    last: u64,
}

impl LostWindow {
    /// The part of the cumulative `total` that is new since the previous window.
    pub fn window(&mut self, total: u64) -> u64 {
        let w = total.saturating_sub(self.last);
        self.last = total;
        w
    }
}

/// `Section::json` for the usual case: one key.
pub fn one_key<T: serde::Serialize>(
    key: &'static str,
    value: &T,
) -> serde_json::Result<Vec<(&'static str, Box<RawValue>)>> {
    Ok(vec![(key, serde_json::value::to_raw_value(value)?)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_window_is_the_new_part_of_the_total() {
        let mut w = LostWindow::default();
        assert_eq!(w.window(5), 5);
        assert_eq!(w.window(5), 0);
        assert_eq!(w.window(12), 7);
        // A counter that went back (never expected) gives 0, not a wrap.
        assert_eq!(w.window(3), 0);
    }

    #[test]
    fn names_are_unique_and_the_defaults_are_the_visible_families_not_opt_in() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        let visible: Vec<&str> = visible().map(|e| e.name).collect();
        assert_eq!(
            visible,
            [
                "syscalls", "fsync", "mmap", "tcp", "amqp", "sched", "gc", "faults"
            ]
        );
        let defaults: Vec<&str> = defaults().map(|e| e.name).collect();
        assert_eq!(defaults, ["syscalls", "fsync", "mmap", "tcp", "amqp", "gc"]);
    }
}
