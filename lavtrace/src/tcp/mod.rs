//! Probe family `tcp`: every TCP connection of the target, its state transitions with the time
//! spent in each state, bytes, retransmits, resets and who closed it. Kernel side:
//! `lavtrace-ebpf/src/tcp.rs`; hook choice: `hooks.rs`; pre-existing connections: `procfs.rs`.

mod btf;
pub mod diag;
pub mod hooks;
pub mod procfs;
mod report;
pub mod table;

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lavtrace_common::{
    ring::lost,
    tcp::{self, FlowKey, SockInfo, TcpEvent, state},
};
use tracing::{debug, info};

#[cfg(test)]
pub use report::TransitionRow;
pub use report::{ConnRow, TcpSection, write_text};

use crate::{
    family::{self, Family, Flush, Options, Part, TextOptions, Window},
    kernel::{self, Hook},
    ringbuf::{Drain, spawn_drain},
};

pub const FAMILY: &str = "tcp";

/// What the drain task and the reporting side share.
struct Shared {
    table: table::Table,
    listen_ports: HashMap<MapData, u32, u32>,
    seeds: HashMap<MapData, FlowKey, u32>,
    pid: u32,
}

impl Shared {
    fn on_event(&mut self, e: &TcpEvent) {
        self.table.apply(e);
        if std::mem::take(&mut self.table.rescan_listeners) {
            self.add_listeners(&procfs::target_sockets(self.pid));
        }
    }

    fn add_listeners(&mut self, socks: &[procfs::ProcSock]) {
        for s in socks.iter().filter(|s| s.state == state::LISTEN) {
            if let Err(e) = self.listen_ports.insert(u32::from(s.local.port()), 1, 0) {
                debug!("tcp: cannot add listening port {}: {e}", s.local.port());
            }
            self.table.listeners.insert(s.local);
        }
    }
}

pub struct Tracer {
    shared: Arc<Mutex<Shared>>,
    socks: HashMap<MapData, u64, SockInfo>,
    drain: Drain,
    /// Which set is in use, for the section.
    kind: &'static str,
    /// Attach time and the end of the last reported interval (CLOCK_MONOTONIC ns).
    t0: u64,
    last_end: u64,
}

impl family::Section for TcpSection {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        family::one_key(FAMILY, self)
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        write_text(out, self, text.summary, text.top);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    const ABOUT: &'static str =
        "Every TCP connection of the target: transitions, time in state, bytes, resets";
    const LOST_SLOT: Option<u32> = Some(lost::TCP);

    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::tcp::FIELDS;

    fn overrides(options: &Options, overrides: &mut kernel::Overrides) {
        overrides.ring(tcp::RING, options.ring_bytes.unwrap_or(tcp::RING_BYTES));
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        Tracer::start(ebpf, pid, options.tcp_hooks)
    }
}

impl family::Tracer for Tracer {
    fn flush(&self) -> Flush<'_> {
        Box::pin(self.drain.flush())
    }

    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let (section, lost_since_attach) =
            self.build_section(window == Window::Whole, kernel_lost)?;
        Ok(Some(Part {
            section: Box::new(section),
            lost_since_attach,
        }))
    }

    /// Alternatives not chosen and why (kprobes missing, a symbol inlined...), and whether
    /// the kprobe programs pass this kernel's verifier even where they cannot be attached.
    fn check_notes(&self, in_use: &[Hook]) -> Vec<(String, String)> {
        let caps = hooks::Caps::probe();
        let mut notes: Vec<(String, String)> = hooks::not_in_use(in_use, &caps)
            .into_iter()
            .map(|(program, status)| (program.to_string(), status))
            .collect();
        match hooks::verify_kprobe_programs() {
            Ok(refused) if refused.is_empty() => notes.push((
                "*".into(),
                "every kprobe program passes this kernel's verifier".into(),
            )),
            Ok(refused) => {
                notes.extend(refused.into_iter().map(|(program, why)| {
                    (program.to_string(), format!("verifier refused: {why}"))
                }))
            }
            Err(e) => notes.push(("*".into(), format!("kprobe programs not verified: {e:#}"))),
        }
        notes
    }
}

impl Tracer {
    fn start(ebpf: &mut Ebpf, pid: u32, mode: hooks::Mode) -> Result<(Tracer, Vec<Hook>)> {
        let t0 = crate::kernel::cut::now_ns();
        let caps = hooks::Caps::probe();
        let hooks = hooks::attach(ebpf, mode, &caps)?;
        let kind = set_kind(&hooks);
        info!(kind, "tcp hooks attached");
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let socks = HashMap::try_from(take(ebpf, "TCP_SOCKS")?)?;
        let mut shared = Shared {
            table: table::Table::default(),
            listen_ports: HashMap::try_from(take(ebpf, "TCP_LISTEN_PORTS")?)?,
            seeds: HashMap::try_from(take(ebpf, "TCP_SEEDS")?)?,
            pid,
        };
        // After attaching: a connection made meanwhile is both here and in the events, and
        // the events win (its seed is matched by the kernel or never used).
        let existing = procfs::target_sockets(pid);
        shared.add_listeners(&existing);
        for s in existing.iter().filter(|s| s.state != state::LISTEN) {
            shared
                .seeds
                .insert(s.key(), 1, 0)
                .context("seeding the pre-existing connections")?;
        }
        shared.table.seed(&existing);
        debug!(
            connections = shared.table.conns.len(),
            listeners = shared.table.listeners.len(),
            "tcp: seeded from /proc"
        );
        let shared = Arc::new(Mutex::new(shared));
        let sink = shared.clone();
        let drain = spawn_drain::<TcpEvent, _>(ebpf, tcp::RING, move |e| {
            if let Ok(mut s) = sink.lock() {
                s.on_event(&e);
            }
        })?;
        Ok((
            Tracer {
                shared,
                socks,
                drain,
                kind,
                t0,
                // The first interval's rates are over the time since attaching ended.
                last_end: crate::kernel::cut::now_ns(),
            },
            hooks,
        ))
    }

    /// The section for the window since the last interval (`whole`: the run) and the events
    /// lost since attach; `kernel_lost` is the kernel's cumulative count for this family.
    fn build_section(&mut self, whole: bool, kernel_lost: u64) -> Result<(TcpSection, u64)> {
        let end = crate::kernel::cut::now_ns();
        let malformed = self
            .drain
            .stats
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed);
        let lost_total = kernel_lost + malformed;
        let mut shared = self
            .shared
            .lock()
            .map_err(|_| anyhow::anyhow!("tcp table poisoned"))?;
        let shared = &mut *shared;
        for key in std::mem::take(&mut shared.table.stale_seeds) {
            let _ = shared.seeds.remove(&key);
        }
        let live: Vec<(u64, usize)> = shared.table.live().collect();
        for (sk, i) in live {
            // Gone meanwhile: its DESTROY event carries the final counters.
            if let Ok(info) = self.socks.get(&sk, 0) {
                shared.table.conns[i].counters = info;
            }
        }
        if shared.table.needs_local_ports() {
            let socks = procfs::target_sockets(shared.pid);
            shared.table.fill_local_ports(&socks);
        }
        let w = report::Window {
            t0: self.t0,
            start: if whole { self.t0 } else { self.last_end },
            end,
            whole,
        };
        let table = &mut shared.table;
        let rows: Vec<_> = table
            .conns
            .iter()
            .filter(|c| table::Table::in_window(c, whole))
            .map(|c| report::conn_row(c, &w))
            .collect();
        let figures = table.figures(whole);
        let mut section = TcpSection {
            hooks: self.kind,
            listening: table.listeners.iter().map(report::listen_row).collect(),
            connections: rows,
            transitions: figures.transitions,
            opened: figures.opened,
            closed: figures.closed,
            lifetimes: report::Lifetimes::of(&figures.lifetimes),
            evicted: table.evicted.connections,
        };
        if !whole {
            table.mark_reported();
            self.last_end = end;
            // Closed connections now listed once: beyond the newest kept, only their counts
            // stay (this interval's record says how many went).
            section.evicted = table.evict(table::CLOSED_KEPT);
        }
        Ok((section, lost_total))
    }
}

/// `kprobe`, `tracepoint` or `mixed`, ignoring the listen(2) tracepoint both sets use.
fn set_kind(hooks: &[Hook]) -> &'static str {
    let relevant = hooks.iter().filter(|h| h.program != "tcp_listen_tp");
    let (mut kp, mut tp) = (false, false);
    for h in relevant {
        if h.via.starts_with("tracepoint") {
            tp = true;
        } else {
            kp = true;
        }
    }
    match (kp, tp) {
        (true, false) => "kprobe",
        (false, true) => "tracepoint",
        _ => "mixed",
    }
}
