//! Probe family `amqp`: AMQP 0-9-1 figures per connection of the target, walked from its
//! socket calls in the kernel (`lavtrace-ebpf/src/amqp.rs`). Userspace seeds the connections
//! open at attach (from /proc: the target's fds joined with /proc/PID/net/tcp{,6}) and its
//! AMQP listeners, reads the per-connection counters at each interval, and the ring's rare
//! events (accepts, connection.open's vhost, closes, blocked, channel open/close).

pub mod hooks;
mod names;
pub(crate) mod report;
pub mod tls;

use std::{
    collections::{BTreeMap, HashMap as StdMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use lavtrace_common::{
    amqp::{self as wire, Closed, Conn, Counters, Event, Walks, event, listener},
    ring::lost,
    tcp::state,
};
use tracing::{debug, info};

pub use report::AmqpSection;

use crate::{
    family::{self, Family, Flush, Options, Part, TextOptions, Window},
    kernel::{self, Hook},
    ringbuf::{Drain, decode, spawn_drain_raw},
    tcp::procfs,
};

pub const FAMILY: &str = "amqp";
/// AMQP's IANA port, and AMQPS's.
pub const DEFAULT_PORT: u16 = 5672;
pub const TLS_PORT: u16 = 5671;

/// A connection's identity: its fd and when it was first seen (an fd number is reused).
type Key = (u32, u64);

/// What userspace knows of one connection beyond its kernel counters.
#[derive(Debug, Clone, Default)]
struct Known {
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    /// Open before attach (seeded, counted from the first whole frame).
    seeded: bool,
    /// AMQPS, walked from the target's SSL calls.
    tls: bool,
    vhost: Option<String>,
    close: Option<(u16, String)>,
    /// The last figures, once closed.
    closed: Option<Counters>,
    channels_opened: u64,
    channels_closed: u64,
    blocked: u64,
    unblocked: u64,
    /// Time between connection.blocked and connection.unblocked, summed; and when the
    /// current block began (kernel clock), while blocked.
    blocked_ns: u64,
    blocked_since: Option<u64>,
    /// The counters at the end of the last interval.
    reported: Counters,
    /// Reported as closed already (kept for the summary only).
    gone: bool,
}

#[derive(Default)]
struct Shared {
    conns: BTreeMap<Key, Known>,
    pid: u32,
    malformed: u64,
}

impl Shared {
    fn on_record(&mut self, bytes: &[u8]) -> bool {
        if let Some(c) = decode::<Closed>(bytes) {
            let k = self.conns.entry((c.fd, c.since_ns)).or_default();
            k.closed = Some(c.counters);
            return true;
        }
        let Some(e) = decode::<Event>(bytes) else {
            self.malformed += 1;
            return false;
        };
        let pid = self.pid;
        let k = self.conns.entry((e.fd, e.since_ns)).or_default();
        // None: the shortstr was not read (its frame came in pieces).
        let text = || {
            let n = (e.text_len as usize).min(e.text.len());
            (n > 0 || e.text_full == 0).then(|| String::from_utf8_lossy(&e.text[..n]).into_owned())
        };
        match e.kind {
            event::ACCEPTED => {
                k.tls = u32::from(e.code) == listener::TLS;
                if let Some((local, remote)) = address_of(pid, e.fd) {
                    k.local = Some(local);
                    k.remote = Some(remote);
                }
            }
            event::CONN_OPEN => k.vhost = text(),
            event::CONN_CLOSE => k.close = Some((e.code, text().unwrap_or_default())),
            event::BLOCKED => {
                k.blocked += 1;
                k.blocked_since.get_or_insert(e.at_ns);
            }
            event::UNBLOCKED => {
                k.unblocked += 1;
                if let Some(since) = k.blocked_since.take() {
                    k.blocked_ns += e.at_ns.saturating_sub(since);
                }
            }
            event::CHANNEL_OPEN => k.channels_opened += 1,
            event::CHANNEL_CLOSE => k.channels_closed += u64::from(e.dir == 0),
            _ => {
                self.malformed += 1;
                return false;
            }
        }
        true
    }
}

/// fd → socket inode, from /proc/PID/fd.
fn socket_fds(pid: u32) -> StdMap<u64, u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return StdMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd: u32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((inode, fd))
        })
        .collect()
}

/// The (local, remote) of the target's socket `fd`, from /proc.
fn address_of(pid: u32, fd: u32) -> Option<(SocketAddr, SocketAddr)> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode: u64 = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    procfs::target_sockets(pid)
        .into_iter()
        .find(|s| s.inode == inode)
        .map(|s| (s.local, s.remote))
}

pub struct Tracer {
    shared: Arc<Mutex<Shared>>,
    conns: HashMap<MapData, u32, Conn>,
    diag: PerCpuArray<MapData, u64>,
    drain: Option<Drain>,
    kind: &'static str,
    /// Why nothing is traced, when no hook set could be had.
    not_traced: Option<String>,
    ports: Vec<u16>,
    /// AMQPS ports (5671, `--amqps-port`): their connections are counted, not parsed.
    tls_ports: Vec<u16>,
    /// TLS connections seen (at attach or at a poll) since attach, and in this window.
    tls_seen: HashSet<(SocketAddr, SocketAddr)>,
    tls_window: HashSet<(SocketAddr, SocketAddr)>,
    /// The target listened on an AMQPS port at attach, and its SSL calls are not probed (its
    /// AMQPS connections are counted, not parsed). Listeners are taken at attach, as for
    /// the AMQP ports; without one, no poll reads /proc/PID/net/tcp, whose read walks the
    /// host's whole established hash (most of an idle interval's CPU when it ran each time).
    tls_listening: bool,
    /// AMQPS parsed: the libssl whose calls are probed; or why not.
    tls: Result<String, String>,
    pid: u32,
}

impl Family for Tracer {
    const NAME: &'static str = FAMILY;
    /// The tracepoint set's records (`hooks`): the storage families' syscall record layout.
    const FIELDS: &'static [lavtrace_common::field::FieldSpec] = lavtrace_common::storage::FIELDS;
    const ABOUT: &'static str = "AMQP 0-9-1 per connection from the kernel: methods, publishes, confirms, deliveries, acks (no body leaves the kernel)";
    const LOST_SLOT: Option<u32> = Some(lost::AMQP);

    fn overrides(options: &Options, overrides: &mut kernel::Overrides) {
        overrides.ring(wire::RING, options.ring_bytes.unwrap_or(wire::RING_BYTES));
        overrides.global_u32s(
            lavtrace_common::storage::SYSCALL_ARG_OFFSETS,
            &kernel::kprobe::SYSCALL_ARG_OFFSETS,
        );
    }

    fn attach(ebpf: &mut Ebpf, pid: u32, options: &Options) -> Result<(Self, Vec<Hook>)> {
        let mut tls_ports = vec![TLS_PORT];
        tls_ports.extend(options.amqps_ports.iter().copied());
        tls_ports.sort_unstable();
        tls_ports.dedup();
        let mut ports = vec![DEFAULT_PORT];
        ports.extend(options.amqp_ports.iter().copied());
        ports.sort_unstable();
        ports.dedup();
        // A port given as both is TLS: never parsed.
        ports.retain(|p| !tls_ports.contains(p));
        let (mut hooks, not_traced) =
            match hooks::attach(ebpf, pid, options.amqp_hooks, options.syscall_slow_path)? {
                Ok(h) => (h, None),
                Err(why) => (Vec::new(), Some(why)),
            };
        let sockets = procfs::target_sockets(pid);
        let tls_listening = sockets
            .iter()
            .any(|s| s.state == state::LISTEN && tls_ports.contains(&s.local.port()));
        // The SSL calls only where they can matter: an AMQPS listener, and the socket calls
        // traced (they tie each `SSL *` to its socket).
        let tls = if !tls_listening {
            Err("no AMQPS listener".to_string())
        } else if options.no_ssl_probes {
            Err("--no-ssl-probes".to_string())
        } else if not_traced.is_some() {
            Err("the socket calls are not traced".to_string())
        } else {
            tls::attach(ebpf, pid).map(|(h, library)| {
                hooks.extend(h);
                library
            })
        };
        if let Err(why) = &tls {
            debug!("amqp: AMQPS not parsed: {why}");
        }
        let kind = hooks::set_kind(&hooks);
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let mut conns: HashMap<MapData, u32, Conn> =
            HashMap::try_from(take(ebpf, wire::CONNS_MAP)?)?;
        let mut walks: HashMap<MapData, u32, Walks> =
            HashMap::try_from(take(ebpf, wire::WALKS_MAP)?)?;
        let mut listeners: HashMap<MapData, u32, u32> =
            HashMap::try_from(take(ebpf, wire::LISTEN_MAP)?)?;
        let diag = PerCpuArray::try_from(take(ebpf, wire::DIAG_MAP)?)?;
        let mut shared = Shared {
            pid,
            ..Shared::default()
        };
        // After attaching: an accept meanwhile is in the maps already, and BPF_NOEXIST keeps
        // its entry (walked from its first byte) over the seed.
        const NOEXIST: u64 = 1;
        let fds = socket_fds(pid);
        let mut seeded = 0;
        for s in sockets {
            let Some(&fd) = fds.get(&s.inode) else {
                continue;
            };
            let kind = if ports.contains(&s.local.port()) {
                listener::PLAIN
            } else if tls.is_ok() && tls_ports.contains(&s.local.port()) {
                listener::TLS
            } else {
                continue;
            };
            let conn = Conn {
                kind,
                ..Conn::default()
            };
            if s.state == state::LISTEN {
                listeners
                    .insert(fd, kind, 0)
                    .context("adding an AMQP listener")?;
            } else if s.state == state::ESTABLISHED && conns.insert(fd, conn, NOEXIST).is_ok() {
                let _ = walks.insert(fd, Walks::default(), NOEXIST);
                shared.conns.insert(
                    (fd, 0),
                    Known {
                        local: Some(s.local),
                        remote: Some(s.remote),
                        seeded: true,
                        tls: kind == listener::TLS,
                        ..Known::default()
                    },
                );
                seeded += 1;
            }
        }
        debug!(seeded, "amqp: connections open at attach");
        let shared = Arc::new(Mutex::new(shared));
        let sink = shared.clone();
        let drain = spawn_drain_raw(ebpf, wire::RING, move |bytes| {
            sink.lock().is_ok_and(|mut s| s.on_record(bytes))
        })?;
        info!(kind, ?ports, "amqp hooks attached");
        let mut tracer = Tracer {
            shared,
            conns,
            diag,
            drain: Some(drain),
            kind,
            not_traced,
            ports,
            tls_ports,
            tls_seen: HashSet::new(),
            tls_window: HashSet::new(),
            tls_listening: tls_listening && tls.is_err(),
            tls,
            pid,
        };
        tracer.see_tls();
        Ok((tracer, hooks))
    }
}

impl family::Section for AmqpSection {
    fn json(&self) -> serde_json::Result<Vec<(&'static str, Box<serde_json::value::RawValue>)>> {
        family::one_key(FAMILY, self)
    }

    fn write_text(&self, out: &mut String, text: &TextOptions) {
        report::write_text(out, self, text.top);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl family::Tracer for Tracer {
    fn flush(&self) -> Flush<'_> {
        match &self.drain {
            Some(d) => Box::pin(d.flush()),
            None => Box::pin(std::future::ready(())),
        }
    }

    fn section(&mut self, window: Window, kernel_lost: u64) -> Result<Option<Part>> {
        let whole = window == Window::Whole;
        self.see_tls();
        let tls = if whole {
            self.tls_seen.len()
        } else {
            std::mem::take(&mut self.tls_window).len()
        } as u64;
        let live: Vec<(u32, Conn)> = self.conns.iter().flatten().collect();
        let malformed = self.drain.as_ref().map_or(0, |d| {
            d.stats.malformed.load(std::sync::atomic::Ordering::Relaxed)
        });
        let mut shared = self
            .shared
            .lock()
            .map_err(|_| anyhow::anyhow!("amqp table poisoned"))?;
        let pid = shared.pid;
        for (fd, c) in &live {
            let k = shared.conns.entry((*fd, c.since_ns)).or_default();
            if k.local.is_none()
                && let Some((l, r)) = address_of(pid, *fd)
            {
                k.local = Some(l);
                k.remote = Some(r);
            }
        }
        let live: StdMap<Key, Counters> = live
            .into_iter()
            .map(|(fd, c)| ((fd, c.since_ns), c.counters))
            .collect();
        let mut rows = Vec::new();
        for (key, k) in shared.conns.iter_mut() {
            let now = match (live.get(key), &k.closed) {
                (_, Some(c)) => *c,
                (Some(c), None) => *c,
                // Accepted and closed without a record yet, or gone from the map: nothing.
                (None, None) => continue,
            };
            if !whole && k.gone {
                continue;
            }
            let figures = if whole {
                now
            } else {
                report::minus(&now, &k.reported)
            };
            rows.push(report::conn_row(
                key.0,
                k_view(k),
                &figures,
                &now,
                k.closed.is_none(),
            ));
            if !whole {
                k.reported = now;
                if k.closed.is_some() {
                    k.gone = true;
                }
            }
        }
        let diag = |i: u32| self.diag.get(&i, 0).map_or(0, |v| v.iter().sum::<u64>());
        let section = report::section(
            self.kind,
            self.not_traced.clone(),
            &self.ports,
            rows,
            report::KernelDiag {
                conns_full: diag(wire::diag::CONNS_FULL),
                threads_full: diag(wire::diag::THREADS_FULL),
                walk_limit: diag(wire::diag::WALK_LIMIT),
                ssl_unbound: diag(wire::diag::SSL_UNBOUND),
                mmsg_uncounted: diag(wire::diag::MMSG_UNCOUNTED),
            },
            report::Tls {
                not_parsed: tls,
                parsed_from: self.tls.as_ref().ok().cloned(),
                not_parsed_why: self.tls.as_ref().err().cloned(),
            },
        );
        Ok(Some(Part {
            section: Box::new(section),
            lost_since_attach: kernel_lost + malformed + shared.malformed,
        }))
    }

    fn check_notes(&self, _in_use: &[Hook]) -> Vec<(String, String)> {
        let tls = match &self.tls {
            Ok(library) => format!("parsed from the SSL calls of {library}"),
            Err(why) => format!("counted as TLS, not parsed ({why})"),
        };
        let mut notes = vec![(
            "*".to_string(),
            format!(
                "AMQP ports {:?}; connections on {:?} are {tls}",
                self.ports, self.tls_ports
            ),
        )];
        if let Some(why) = &self.not_traced {
            notes.push(("*".into(), format!("amqp: no hooks, not traced: {why}")));
        }
        if self.kind == "uprobe" {
            let tracefs =
                kernel::tracefs::tracefs_dir().unwrap_or(kernel::tracefs::TRACEFS_DIRS[0]);
            let kprobes = match kernel::kprobe::syscall_functions(tracefs) {
                Ok(_) => "available (not in use)".to_string(),
                Err(e) => format!("unavailable: {e}"),
            };
            notes.push(("amqp_k*".into(), format!("the kprobe set: {kprobes}")));
            notes.push((
                "*".into(),
                "uprobes see the target's calls through libc only (a raw syscall or a static binary goes past them)".into(),
            ));
        }
        notes
    }
}

impl Tracer {
    /// Notes the target's connections on its AMQPS ports now open.
    fn see_tls(&mut self) {
        if !self.tls_listening {
            return;
        }
        for s in procfs::target_sockets(self.pid) {
            if s.state == state::ESTABLISHED && self.tls_ports.contains(&s.local.port()) {
                self.tls_seen.insert((s.local, s.remote));
                self.tls_window.insert((s.local, s.remote));
            }
        }
    }
}

fn k_view(k: &Known) -> report::Identity<'_> {
    report::Identity {
        local: k.local,
        remote: k.remote,
        seeded: k.seeded,
        tls: k.tls,
        vhost: k.vhost.as_deref(),
        close: k.close.as_ref().map(|(c, t)| (*c, t.as_str())),
        channels_opened: k.channels_opened,
        channels_closed: k.channels_closed,
        blocked: k.blocked,
        unblocked: k.unblocked,
        // A block still on counts up to now.
        blocked_ns: k.blocked_ns
            + k.blocked_since.map_or(0, |since| {
                crate::kernel::cut::now_ns().saturating_sub(since)
            }),
    }
}
