//! Probe family `tcp`: every TCP connection of the target, its state transitions with the time
//! spent in each state, bytes, retransmits, resets and who closed it. Kernel side:
//! `lavtrace-ebpf/src/tcp.rs`; hook choice: `hooks.rs`; pre-existing connections: `procfs.rs`;
//! bytes and RTT: the kernel's socket counters, polled through sock_diag (`diag.rs`) at each
//! interval, and read once more by the destroy hook for a socket gone since the last poll.

pub(crate) mod btf;
pub mod diag;
pub mod hooks;
pub mod procfs;
mod report;
pub mod table;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lavtrace_common::{
    ring::lost,
    tcp::{self, FlowKey, SockInfo, TcpEvent, origin, state},
};
use tracing::{debug, info, warn};

#[cfg(test)]
pub use report::TransitionRow;
pub use report::{ConnRow, TcpSection, open_by_state, write_text};

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
    /// The target's network namespace (inode number of /proc/PID/ns/net; 0 = unknown): the
    /// value of its ports in `TCP_LISTEN_PORTS`.
    netns: u32,
    /// Ports this side put in `TCP_LISTEN_PORTS` and the kernel has not removed since.
    ports_in_map: HashSet<u16>,
    /// None when sock_diag cannot be had (no `inet_diag`/`tcp_diag` module): no byte figures.
    diag: Option<diag::Diag>,
}

impl Shared {
    fn on_event(&mut self, e: &TcpEvent) {
        if e.kind == tcp::kind::STATE && e.new_state == state::CLOSE && e.origin == origin::LISTENER
        {
            // The kernel forgot the port with its listener (see the state hook).
            self.ports_in_map.remove(&e.lport);
        }
        self.table.apply(e);
        self.table.bound();
        if std::mem::take(&mut self.table.rescan_listeners) {
            self.poll();
        }
    }

    /// Reads the target's sockets: listening ports for the kernel's accept rule (one opened
    /// since the last poll is in the map already when it was bound before listen(2); this
    /// catches a listen without bind), and every open connection's counters.
    /// Polls the target's sockets through sock_diag and returns them (None without it).
    fn poll(&mut self) -> Option<Vec<diag::DiagSock>> {
        let diag = self.diag.as_mut()?;
        let socks = dump(diag, self.pid);
        let listeners: Vec<procfs::ProcSock> = diag::listeners(&socks)
            .map(diag::DiagSock::proc_sock)
            .collect();
        self.add_listeners(&listeners);
        self.table.apply_poll(&socks);
        Some(socks)
    }

    fn add_listeners(&mut self, socks: &[procfs::ProcSock]) {
        for s in socks.iter().filter(|s| s.state == state::LISTEN) {
            // Each bpf() map update holds the CPU's `bpf_prog_active` while it runs; a
            // lavtrace preempted inside one makes the kernel skip kprobe and classic
            // tracepoint programs on that CPU (uncounted before 6.7). Only new ports go in.
            let port = s.local.port();
            if !self.ports_in_map.contains(&port) {
                match self.listen_ports.insert(u32::from(port), self.netns, 0) {
                    Ok(()) => {
                        self.ports_in_map.insert(port);
                    }
                    Err(e) => debug!("tcp: cannot add listening port {port}: {e}"),
                }
            }
            self.table.listeners.insert(s.local);
        }
    }
}

/// The target's sockets from one sock_diag dump of each family.
fn dump(diag: &mut diag::Diag, pid: u32) -> Vec<diag::DiagSock> {
    let before = diag.malformed;
    let socks = diag.target_sockets(&procfs::socket_inodes(pid));
    if diag.malformed > before {
        warn!(
            "tcp: {} sock_diag messages could not be decoded (skipped; {} in all)",
            diag.malformed - before,
            diag.malformed
        );
    }
    socks
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
        match btf::tcp_sock_offsets() {
            Ok(at) => {
                overrides.global_u32(tcp::SK_BYTES_ACKED, at.bytes_acked);
                overrides.global_u32(tcp::SK_BYTES_RECEIVED, at.bytes_received);
                overrides.global_u32(tcp::SK_TOTAL_RETRANS, at.total_retrans);
            }
            Err(e) => debug!("tcp: the destroy hook reads no byte counters: {e:#}"),
        }
        match btf::sock_v6_offsets() {
            Ok(at) => {
                overrides.global_u32(tcp::SK_V6_DADDR, at.daddr);
                overrides.global_u32(tcp::SK_V6_RCV_SADDR, at.rcv_saddr);
            }
            Err(e) => debug!("tcp: the kprobe set reads no IPv6 address: {e:#}"),
        }
        match btf::sock_netns_offsets() {
            Ok(at) => {
                overrides.global_u32(tcp::SK_NET, at.sk_net);
                overrides.global_u32(tcp::NET_INUM, at.inum);
            }
            Err(e) => debug!("tcp: listening ports match in every network namespace: {e:#}"),
        }
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
        let diag = match diag::Diag::open(std::process::id()).and_then(|mut d| d.check()) {
            Ok(()) => format!(
                "ok via {} [{}]",
                hooks::SOCK_DIAG_VIA,
                hooks::SOCK_DIAG_NOTE
            ),
            Err(e) => format!(
                "unavailable: {e:#} [{}; {}]",
                hooks::SOCK_DIAG_VIA,
                hooks::SOCK_DIAG_NOTE
            ),
        };
        let closing = match btf::tcp_sock_offsets() {
            Ok(at) => format!(
                "the destroy hook reads tcp_sock.bytes_acked/bytes_received/total_retrans at {}/{}/{} (BTF)",
                at.bytes_acked, at.bytes_received, at.total_retrans
            ),
            Err(e) => format!(
                "the destroy hook reads no byte counters ({e:#}): a socket closed between two polls keeps the last poll's figures"
            ),
        };
        let netns = match btf::sock_netns_offsets() {
            Ok(at) => format!(
                "connections accepted on the target's ports count only in its network namespace (sock.skc_net.net at {}, net.ns.inum at {}, BTF)",
                at.sk_net, at.inum
            ),
            Err(e) => format!(
                "listening ports match in every network namespace ({e:#}): a container's connections on the same port number would count as the target's"
            ),
        };
        let v6 = match btf::sock_v6_offsets() {
            Ok(at) => format!(
                "the kprobe set reads IPv6 addresses at sock_common.skc_v6_daddr/skc_v6_rcv_saddr {}/{} (BTF)",
                at.daddr, at.rcv_saddr
            ),
            Err(e) => format!("the kprobe set shows IPv6 connections as [::] ({e:#})"),
        };
        let mut notes: Vec<(String, String)> = vec![
            (hooks::SOCK_DIAG.into(), diag),
            ("*".into(), closing),
            ("*".into(), netns),
            ("*".into(), v6),
        ];
        notes.extend(
            hooks::not_in_use(in_use, &caps)
                .into_iter()
                .map(|(program, status)| (program.to_string(), status)),
        );
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
            netns: procfs::netns_inode(pid),
            ports_in_map: HashSet::new(),
            diag: diag::Diag::open(pid)
                .and_then(|mut d| d.check().map(|()| d))
                .inspect_err(|e| warn!("tcp: no byte counts: {e:#}"))
                .ok(),
        };
        // After attaching: a connection made meanwhile is both here and in the events, and
        // the events win (its seed is matched by the kernel or never used).
        let existing = procfs::target_sockets(pid);
        shared.add_listeners(&existing);
        for s in existing.iter().filter(|s| s.state != state::LISTEN) {
            let mut keys = vec![s.key()];
            if s.family == tcp::AF_INET6 {
                // Without BTF the kprobe set reads no IPv6 address: it looks the seed up by its ports.
                keys.push(FlowKey {
                    laddr: [0; 16],
                    raddr: [0; 16],
                    ..s.key()
                });
            }
            for key in keys {
                shared
                    .seeds
                    .insert(key, 1, 0)
                    .context("seeding the pre-existing connections")?;
            }
        }
        shared.table.seed(&existing);
        // The pre-existing connections' counters count from here.
        shared.poll();
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
        let mut shared = self
            .shared
            .lock()
            .map_err(|_| anyhow::anyhow!("tcp table poisoned"))?;
        let shared = &mut *shared;
        let lost_total = kernel_lost + malformed + shared.table.unseen_transitions;
        for key in std::mem::take(&mut shared.table.stale_seeds) {
            let _ = shared.seeds.remove(&key);
        }
        let live: Vec<(u64, usize)> = shared.table.live().collect();
        for (sk, i) in live {
            // Gone meanwhile: its DESTROY event carries the final counters.
            if let Ok(info) = self.socks.get(&sk, 0) {
                let c = &mut shared.table.conns[i].counters;
                c.resets_sent = info.resets_sent;
                c.resets_received = info.resets_received;
            }
        }
        let polled = shared.poll();
        if shared.table.needs_local_ports() {
            // The dump has the target's sockets. /proc only where sock_diag cannot be had: on a
            // host with tens of thousands of sockets one read of /proc/net/tcp took a second,
            // on the thread that also drains the ring.
            let socks = match polled {
                Some(socks) => socks.iter().map(diag::DiagSock::proc_sock).collect(),
                None => procfs::target_sockets(shared.pid),
            };
            shared.table.fill_local_ports(&socks);
        }
        let w = report::Window {
            t0: self.t0,
            start: if whole { self.t0 } else { self.last_end },
            end,
            whole,
        };
        let table = &mut shared.table;
        if !whole {
            table.fold_closed();
        }
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
            let folded = table.folded_in_window();
            table.mark_reported();
            self.last_end = end;
            // Closed connections now listed once: beyond the newest kept, only their counts
            // stay (this interval's record says how many went, with those folded meanwhile).
            section.evicted = folded + table.evict(table::CLOSED_KEPT);
        }
        Ok((section, lost_total))
    }
}

/// `kprobe`, `tracepoint` or `mixed`.
fn set_kind(hooks: &[Hook]) -> &'static str {
    let (mut kp, mut tp) = (false, false);
    for h in hooks {
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
