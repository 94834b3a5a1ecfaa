//! The connection table, built from the kernel's events: one entry per connection of the
//! target (pre-existing ones from /proc, new ones from their first transition), every
//! transition with its time, the reset counts read from the kernel map, and the byte and
//! retransmit counters the kernel keeps per socket (sock_diag polls, and the destroy hook's last
//! read).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use lavtrace_common::tcp::{AF_INET, AF_INET6, FlowKey, SockInfo, TcpEvent, kind, origin, state};
use tracing::debug;

use super::{
    diag::{DiagSock, TcpCounters},
    procfs::{self, ProcSock},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The target connected (outgoing).
    Connect,
    /// Accepted on one of the target's listening ports (incoming).
    Accept,
    /// Open before tracing started (from /proc); its earlier history is unknown.
    Preexisting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    Peer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: u32,
    pub to: u32,
    /// CLOCK_MONOTONIC ns.
    pub at: u64,
    /// Time spent in `from`, when its start was seen.
    pub prev_state_ns: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub origin: Origin,
    pub state: u32,
    /// When it was opened (first transition seen), unknown for pre-existing ones.
    pub opened: Option<u64>,
    pub state_since: Option<u64>,
    pub transitions: Vec<Transition>,
    /// Latest counters (live from the map, final at destroy); the byte fields are the payload
    /// acknowledged and received ([`Conn::observe`]).
    pub counters: SockInfo,
    /// The socket's inode, for a pre-existing one (/proc at start): how polls find it.
    pub inode: Option<u64>,
    /// The kernel's byte counters when first seen: 0 for a connection opened while traced,
    /// the first poll for a pre-existing one (what it moved before is not counted).
    pub base: Option<TcpCounters>,
    /// Smoothed RTT at the last poll, µs.
    pub rtt_us: Option<u32>,
    /// When the kernel destroyed it.
    pub closed: Option<u64>,
    /// The target called close() on it (kprobe set only).
    pub app_closed: Option<u64>,
    /// Counters already reported in earlier intervals.
    pub reported: SockInfo,
    /// Transitions already reported in earlier intervals.
    pub reported_transitions: usize,
    /// Whether it was listed in an earlier interval after it closed (then it is not again).
    pub reported_closed: bool,
    /// Whether an earlier interval counted its opening.
    pub reported_opened: bool,
    /// A /proc entry at start that turned out to be a connection opened while attaching (its
    /// opening was seen): not listed.
    pub duplicate: bool,
}

impl Conn {
    fn new(family: u16, local: SocketAddr, remote: SocketAddr, origin: Origin, st: u32) -> Conn {
        let _ = family; // the addresses say it
        Conn {
            local,
            remote,
            origin,
            state: st,
            opened: None,
            state_since: None,
            transitions: Vec::new(),
            counters: SockInfo::default(),
            inode: None,
            base: None,
            rtt_us: None,
            closed: None,
            app_closed: None,
            reported: SockInfo::default(),
            reported_transitions: 0,
            reported_closed: false,
            reported_opened: false,
            duplicate: false,
        }
    }

    /// Opened while traced: its connect or accept transition was seen.
    pub fn started(&self) -> bool {
        self.opened.is_some()
            && self
                .transitions
                .first()
                .is_some_and(|t| matches!(t.to, state::SYN_SENT | state::ESTABLISHED))
    }

    /// Who closed first: FIN_WAIT1 on our side means the target did, CLOSE_WAIT that the peer
    /// did; failing those, whoever sent the first reset, or the target's close().
    pub fn closed_by(&self) -> Option<Side> {
        for t in &self.transitions {
            match t.to {
                state::FIN_WAIT1 => return Some(Side::Local),
                state::CLOSE_WAIT => return Some(Side::Peer),
                _ => {}
            }
        }
        if self.counters.resets_sent > 0 {
            Some(Side::Local)
        } else if self.counters.resets_received > 0 {
            Some(Side::Peer)
        } else if self.app_closed.is_some() && self.state == state::CLOSE {
            Some(Side::Local)
        } else {
            None
        }
    }

    /// The kernel's counters of this socket, read in state `st` (a poll, or the destroy hook in
    /// CLOSE). The kernel counts the SYN and the FINs as one byte each: those are taken out, so
    /// a payload of N bytes the peer acknowledged is N.
    pub fn observe(&mut self, raw: TcpCounters, st: u32) {
        let base = *self
            .base
            .get_or_insert(if self.origin == Origin::Preexisting {
                raw
            } else {
                TcpCounters::default()
            });
        // An active open's bytes_acked starts at its ISN: any ack covers the SYN first.
        let syn =
            u64::from(self.origin == Origin::Connect && base.bytes_acked == 0).min(raw.bytes_acked);
        let (our_fin, peer_fin) = self.fins(st);
        let acked = raw
            .bytes_acked
            .saturating_sub(base.bytes_acked + syn + our_fin);
        let received = raw
            .bytes_received
            .saturating_sub(base.bytes_received + peer_fin);
        // Never backwards: an interval's figure is the difference of two reads.
        self.counters.bytes_acked = self.counters.bytes_acked.max(acked);
        self.counters.bytes_received = self.counters.bytes_received.max(received);
        let retrans = u64::from(raw.total_retrans.saturating_sub(base.total_retrans));
        self.counters.retransmits = self.counters.retransmits.max(retrans);
        if raw.rtt_us != 0 || st != state::CLOSE {
            self.rtt_us = Some(raw.rtt_us);
        }
    }

    /// Whether our FIN was acknowledged and the peer's received (1 each, as counted by the
    /// kernel), in state `st`. In CLOSE the state alone does not say: the transitions do. A
    /// FIN_WAIT2 that timed out (tcp_fin_timeout, the peer never sent its FIN) looks like one
    /// that got the peer's FIN: the one case counted one byte short.
    fn fins(&self, st: u32) -> (u64, u64) {
        let reset = self.counters.resets_received > 0;
        match st {
            state::FIN_WAIT2 | state::TIME_WAIT => (1, u64::from(st == state::TIME_WAIT)),
            // Our FIN is out and its ack may already be counted: sock_diag loads the state
            // before it locks the socket for the counters, so an ack landing between the two
            // shows here with the old state (a metrics test once saw 7720 sent for 7719). Taken
            // out anyway: a read one byte short is made good by the next (never backwards),
            // one byte over would stay.
            state::FIN_WAIT1 => (1, 0),
            state::CLOSE_WAIT => (0, 1),
            state::CLOSING | state::LAST_ACK => (1, 1),
            state::CLOSE => {
                let seen = |from: u32, to: u32| {
                    self.transitions
                        .iter()
                        .any(|t| t.from == from && t.to == to)
                };
                let our = seen(state::FIN_WAIT1, state::FIN_WAIT2)
                    || seen(state::CLOSING, state::CLOSE)
                    || (!reset && seen(state::LAST_ACK, state::CLOSE));
                let peer = self
                    .transitions
                    .iter()
                    .any(|t| matches!(t.to, state::CLOSE_WAIT | state::CLOSING))
                    || (!reset && seen(state::FIN_WAIT2, state::CLOSE));
                (u64::from(our), u64::from(peer))
            }
            _ => (0, 0),
        }
    }

    fn transition(&mut self, from: u32, to: u32, at: u64) {
        let prev_state_ns = self.state_since.map(|s| at.saturating_sub(s));
        self.transitions.push(Transition {
            from,
            to,
            at,
            prev_state_ns,
        });
        self.state = to;
        self.state_since = Some(at);
        if self.origin != Origin::Preexisting {
            self.opened.get_or_insert(at);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Conn(usize),
    Listener(SocketAddr),
}

/// Closed connections kept in full after an interval reported them; older ones are folded
/// into [`Evicted`], so a churning target keeps the table bounded.
pub const CLOSED_KEPT: usize = 256;

/// Closed connections one interval lists at most. Beyond them, the oldest closed ones are
/// folded into the counts as they come ([`Table::bound`]), so that a target churning
/// thousands of connections per second does not grow the table, or an interval's record,
/// with the interval's length.
pub const CLOSED_LISTED: usize = 1024;

/// Lifetimes (opened → destroyed) of closed connections whose opening was seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifetimeStats {
    pub count: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    pub sum_ns: u64,
}

impl LifetimeStats {
    fn add(&mut self, ns: u64) {
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
    }

    fn merge(&mut self, o: &LifetimeStats) {
        if o.count == 0 {
            return;
        }
        self.min_ns = if self.count == 0 {
            o.min_ns
        } else {
            self.min_ns.min(o.min_ns)
        };
        self.max_ns = self.max_ns.max(o.max_ns);
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
        self.count += o.count;
    }
}

/// What the connections dropped from the table contributed to the whole run's figures.
#[derive(Debug, Clone, Default)]
pub struct Evicted {
    pub connections: u64,
    pub opened: u64,
    pub transitions: BTreeMap<String, u64>,
    pub lifetimes: LifetimeStats,
}

impl Evicted {
    /// Adds closed `c`: its transitions from `first` on, and its opening if `opening`.
    fn add(&mut self, c: &Conn, first: usize, opening: bool) {
        self.connections += 1;
        self.opened += u64::from(opening && c.started());
        for t in &c.transitions[first.min(c.transitions.len())..] {
            *self.transitions.entry(transition_key(t)).or_insert(0) += 1;
        }
        if let (Some(o), Some(d)) = (c.opened, c.closed) {
            self.lifetimes.add(d.saturating_sub(o));
        }
    }
}

/// The counts of one report: the whole run, or what no earlier interval counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub opened: u64,
    pub closed: u64,
    pub transitions: BTreeMap<String, u64>,
    pub lifetimes: LifetimeStats,
}

#[derive(Debug, Default)]
pub struct Table {
    pub conns: Vec<Conn>,
    /// Connections folded away by [`Table::evict`] (closed, reported, not among the newest).
    pub evicted: Evicted,
    by_sk: HashMap<u64, Slot>,
    /// Pre-existing connections not yet tied to a kernel socket, by 4-tuple.
    seeds: HashMap<FlowKey, usize>,
    pub listeners: BTreeSet<SocketAddr>,
    /// Seeds matched in userspace, to delete from the kernel map.
    pub stale_seeds: Vec<FlowKey>,
    /// The target listens on a port the kernel did not know at the LISTEN transition (listen
    /// without bind picks it after): rescan its listeners.
    pub rescan_listeners: bool,
    /// Transitions of a tracked socket that leave a state other than the one its last
    /// transition entered: at least one transition in between went unseen (a kernel that
    /// skips a program run without counting it, e.g. kprobes before 6.7 while the CPU's
    /// `bpf_prog_active` is held). Counted as lost, never filled in.
    pub unseen_transitions: u64,
    /// What the connections folded since the last interval's report contributed that no
    /// interval counted yet (they are in `evicted` for the whole run already).
    pending: Evicted,
    /// Connections folded by [`Table::fold_closed`] since the last interval's report.
    folded: u64,
    /// `conns.len()` at which [`Table::bound`] folds next (amortised: not on every event).
    fold_at: usize,
}

impl Table {
    /// Adds what /proc showed at start.
    pub fn seed(&mut self, socks: &[ProcSock]) {
        for s in socks {
            if s.state == state::LISTEN {
                self.listeners.insert(s.local);
                continue;
            }
            let i = self.conns.len();
            let mut c = Conn::new(s.family, s.local, s.remote, Origin::Preexisting, s.state);
            c.inode = Some(s.inode);
            self.conns.push(c);
            self.seeds.insert(s.key(), i);
        }
    }

    /// A connect's CLOSE → SYN_SENT comes before its local port is chosen, and a connection
    /// stuck in SYN_SENT sends no other transition: take the port from /proc (`socks`), when
    /// exactly one socket of the target to that remote address is not known yet.
    pub fn fill_local_ports(&mut self, socks: &[ProcSock]) {
        let known: Vec<(SocketAddr, SocketAddr)> =
            self.conns.iter().map(|c| (c.local, c.remote)).collect();
        for c in self.conns.iter_mut() {
            if c.closed.is_some() || c.local.port() != 0 {
                continue;
            }
            let mut candidates = socks.iter().filter(|s| {
                s.remote == c.remote
                    && s.state != state::LISTEN
                    && !known.contains(&(s.local, s.remote))
            });
            if let (Some(s), None) = (candidates.next(), candidates.next()) {
                c.local = s.local;
            }
        }
    }

    /// One poll of the target's sockets: each open connection takes the counters of its
    /// socket, found by inode (pre-existing ones) or by addresses. A socket the target no
    /// longer holds is not in the poll (inode 0): its destroy brings the rest.
    pub fn apply_poll(&mut self, socks: &[DiagSock]) {
        let by_inode: HashMap<u64, &DiagSock> = socks.iter().map(|s| (s.inode, s)).collect();
        // Indexed by family and ports: a broker has thousands of connections per poll.
        let mut by_ports: HashMap<(u16, u16, u16), Vec<&DiagSock>> = HashMap::new();
        for s in socks.iter().filter(|s| s.state != state::LISTEN) {
            by_ports
                .entry((s.family, s.local.port(), s.remote.port()))
                .or_default()
                .push(s);
        }
        let find = |c: &Conn| {
            let family = if c.local.is_ipv6() { AF_INET6 } else { AF_INET };
            let same = by_ports.get(&(family, c.local.port(), c.remote.port()))?;
            // kprobe-set IPv6 connections carry [::] where BTF gave no address offsets: their ports
            // decide, when unambiguous.
            let exact = same
                .iter()
                .find(|s| s.local == c.local && s.remote == c.remote);
            let unspecified = c.local.ip().is_unspecified() || c.remote.ip().is_unspecified();
            exact
                .or_else(|| (unspecified && same.len() == 1).then(|| &same[0]))
                .copied()
        };
        for c in self
            .conns
            .iter_mut()
            .filter(|c| c.closed.is_none() && !c.duplicate)
        {
            let found = c
                .inode
                .and_then(|i| by_inode.get(&i).copied())
                .or_else(|| find(c));
            if let Some(s) = found
                && let Some(raw) = s.counters
            {
                c.observe(raw, s.state);
            }
        }
    }

    pub fn needs_local_ports(&self) -> bool {
        self.conns
            .iter()
            .any(|c| c.closed.is_none() && c.local.port() == 0)
    }

    /// Live sockets and the connections they are.
    pub fn live(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.by_sk.iter().filter_map(|(&sk, slot)| match slot {
            Slot::Conn(i) => Some((sk, *i)),
            Slot::Listener(_) => None,
        })
    }

    pub fn apply(&mut self, e: &TcpEvent) {
        let local = procfs::sock_addr(e.family, &e.laddr, e.lport);
        let remote = procfs::sock_addr(e.family, &e.raddr, e.rport);
        match e.kind {
            kind::STATE => {
                let slot = match self.by_sk.get(&e.sk) {
                    Some(&slot) => slot,
                    None => {
                        let slot = self.open(e, local, remote);
                        self.by_sk.insert(e.sk, slot);
                        slot
                    }
                };
                match slot {
                    Slot::Conn(i) => {
                        let c = &self.conns[i];
                        if c.state_since.is_some() && c.state != e.old_state {
                            debug!(
                                sk = e.sk,
                                last = c.state,
                                old = e.old_state,
                                "tcp: a transition went unseen"
                            );
                            self.unseen_transitions += 1;
                        }
                        let c = &mut self.conns[i];
                        // A connect's first transition comes before its port is chosen; the
                        // kprobe set without BTF reads no IPv6 address (keep those /proc gave).
                        let v6_unread = e.family == AF_INET6 && e.laddr == [0; 16];
                        if e.lport != 0 && e.rport != 0 && !(v6_unread && c.inode.is_some()) {
                            c.local = local;
                            c.remote = remote;
                        }
                        c.transition(e.old_state, e.new_state, e.ts_ns);
                        if c.origin != Origin::Preexisting && e.lport != 0 && e.rport != 0 {
                            self.drop_seed(procfs::flow_key(e.family, local, remote));
                        }
                    }
                    Slot::Listener(addr) => {
                        if e.new_state == state::CLOSE {
                            self.listeners.remove(&addr);
                        }
                    }
                }
            }
            kind::ADOPT => {
                if self.by_sk.contains_key(&e.sk) {
                    return;
                }
                let i = if e.origin == origin::ACCEPT {
                    self.push(e.family, local, remote, Origin::Accept, e.new_state)
                } else {
                    match self.match_seed(e, local, remote) {
                        Some(i) => i,
                        None => {
                            debug!(%local, %remote, "tcp: unseen pre-existing connection");
                            self.push(e.family, local, remote, Origin::Preexisting, e.new_state)
                        }
                    }
                };
                self.conns[i].state = e.new_state;
                self.by_sk.insert(e.sk, Slot::Conn(i));
            }
            kind::DESTROY => match self.by_sk.remove(&e.sk) {
                Some(Slot::Conn(i)) => {
                    let c = &mut self.conns[i];
                    c.counters.resets_sent = e.info.resets_sent;
                    c.counters.resets_received = e.info.resets_received;
                    if e.info.sock_read == 1 {
                        let raw = TcpCounters {
                            bytes_acked: e.info.bytes_acked,
                            bytes_received: e.info.bytes_received,
                            total_retrans: u32::try_from(e.info.retransmits).unwrap_or(u32::MAX),
                            rtt_us: 0,
                        };
                        c.observe(raw, state::CLOSE);
                    }
                    c.closed = Some(e.ts_ns);
                }
                Some(Slot::Listener(addr)) => {
                    self.listeners.remove(&addr);
                }
                None => {}
            },
            kind::APP_CLOSE => {
                if let Some(&Slot::Conn(i)) = self.by_sk.get(&e.sk) {
                    self.conns[i].app_closed.get_or_insert(e.ts_ns);
                }
            }
            kind::CONNECT_ERROR => {
                debug!(%local, %remote, errno = e.origin, "tcp: connect failed");
                // The kernel forgot the socket (it never left CLOSE for good): so do we.
                if let Some(Slot::Conn(i)) = self.by_sk.remove(&e.sk) {
                    self.conns[i].closed.get_or_insert(e.ts_ns);
                }
            }
            other => debug!("tcp: unknown event kind {other}"),
        }
    }

    /// Whether a report lists `c`: not a stale /proc duplicate, and (intervals) not closed in
    /// an interval already reported.
    pub fn in_window(c: &Conn, whole: bool) -> bool {
        !c.duplicate && (whole || !c.reported_closed)
    }

    /// The counts for the whole run (`whole`), or for the next interval. An interval counts
    /// what no earlier interval counted, whatever its kernel timestamp: an event can reach the
    /// table after the interval in which it happened was reported (the ring is drained on the
    /// same thread), and it must then be counted in the next one, not in none.
    pub fn figures(&self, whole: bool) -> Figures {
        let mut f = Figures::default();
        for c in self.conns.iter().filter(|c| Table::in_window(c, whole)) {
            if c.started() && (whole || !c.reported_opened) {
                f.opened += 1;
            }
            let first = if whole { 0 } else { c.reported_transitions };
            for t in &c.transitions[first.min(c.transitions.len())..] {
                *f.transitions.entry(transition_key(t)).or_insert(0) += 1;
            }
            if let Some(closed) = c.closed {
                f.closed += 1;
                if let Some(opened) = c.opened {
                    f.lifetimes.add(closed.saturating_sub(opened));
                }
            }
        }
        let e = if whole { &self.evicted } else { &self.pending };
        f.opened += e.opened;
        f.closed += e.connections;
        for (k, n) in &e.transitions {
            *f.transitions.entry(k.clone()).or_insert(0) += n;
        }
        f.lifetimes.merge(&e.lifetimes);
        f
    }

    /// After an interval's report: what it counted is not counted again.
    pub fn mark_reported(&mut self) {
        for c in self.conns.iter_mut() {
            c.reported = c.counters;
            c.reported_transitions = c.transitions.len();
            c.reported_opened |= c.started();
            c.reported_closed |= c.closed.is_some();
        }
        self.pending = Evicted::default();
        self.folded = 0;
    }

    /// Connections folded during the interval being reported (some closed in it and never
    /// listed, some listed by an earlier one). Read before [`Table::mark_reported`].
    pub fn folded_in_window(&self) -> u64 {
        self.folded
    }

    /// Keeps the table bounded between reports: once it has grown by [`CLOSED_LISTED`]
    /// connections since the last fold, folds the closed ones beyond the newest
    /// [`CLOSED_LISTED`], reported or not. Cheap to call after every event.
    pub fn bound(&mut self) {
        if self.conns.len() >= self.fold_at.max(2 * CLOSED_LISTED) {
            self.fold_closed();
        }
    }

    /// Folds the closed connections beyond the newest [`CLOSED_LISTED`], reported or not:
    /// before an interval's report, so that it lists no more than that.
    pub fn fold_closed(&mut self) {
        self.folded += self.fold(CLOSED_LISTED, |c| c.closed.is_some() || c.duplicate);
        self.fold_at = self.conns.len() + CLOSED_LISTED;
    }

    /// Folds the closed connections an interval already reported into `evicted`, keeping the
    /// newest `keep` of them (and every open one) in full. Returns how many were evicted.
    pub fn evict(&mut self, keep: usize) -> u64 {
        self.fold(keep, |c| c.reported_closed || c.duplicate)
    }

    /// Folds the connections `done` accepts, beyond the newest `keep` of them, into
    /// `evicted`; what no interval counted yet of each also goes to `pending`.
    fn fold(&mut self, keep: usize, done: impl Fn(&Conn) -> bool) -> u64 {
        let reported = self.conns.iter().filter(|c| done(c)).count();
        if reported <= keep {
            return 0;
        }
        let mut excess = reported - keep;
        let mut evicted = 0;
        let mut remap = vec![usize::MAX; self.conns.len()];
        let mut kept = Vec::with_capacity(self.conns.len() - excess);
        for (i, c) in std::mem::take(&mut self.conns).into_iter().enumerate() {
            // The oldest first: `conns` is in the order they were first seen.
            if excess > 0 && done(&c) {
                excess -= 1;
                if c.duplicate {
                    continue; // never listed nor counted
                }
                evicted += 1;
                self.evicted.add(&c, 0, true);
                if !c.reported_closed {
                    self.pending
                        .add(&c, c.reported_transitions, !c.reported_opened);
                }
                continue;
            }
            remap[i] = kept.len();
            kept.push(c);
        }
        self.conns = kept;
        // Reported closed connections are in neither map (DESTROY and CONNECT_ERROR remove
        // them, a matched seed left `seeds`); duplicates are in neither either. Still, re-point
        // every index, and drop any that pointed at an evicted one.
        self.by_sk.retain(|_, slot| match slot {
            Slot::Conn(i) => match remap.get(*i) {
                Some(&n) if n != usize::MAX => {
                    *i = n;
                    true
                }
                _ => false,
            },
            Slot::Listener(_) => true,
        });
        self.seeds.retain(|_, i| match remap.get(*i) {
            Some(&n) if n != usize::MAX => {
                *i = n;
                true
            }
            _ => false,
        });
        evicted
    }

    /// A connection opened while attaching can also be in /proc at start: keep the one whose
    /// opening was seen.
    fn drop_seed(&mut self, key: FlowKey) {
        if let Some(i) = self.seeds.remove(&key) {
            self.conns[i].duplicate = true;
            self.stale_seeds.push(key);
        }
    }

    fn push(&mut self, family: u16, l: SocketAddr, r: SocketAddr, o: Origin, st: u32) -> usize {
        self.conns.push(Conn::new(family, l, r, o, st));
        self.conns.len() - 1
    }

    /// The slot for a socket seen for the first time in a transition.
    fn open(&mut self, e: &TcpEvent, local: SocketAddr, remote: SocketAddr) -> Slot {
        match e.origin {
            origin::LISTENER => {
                if local.port() == 0 {
                    self.rescan_listeners = true;
                } else {
                    self.listeners.insert(local);
                }
                Slot::Listener(local)
            }
            origin::SEED => Slot::Conn(self.match_seed(e, local, remote).unwrap_or_else(|| {
                self.push(e.family, local, remote, Origin::Preexisting, e.old_state)
            })),
            origin::CONNECT => {
                Slot::Conn(self.push(e.family, local, remote, Origin::Connect, e.old_state))
            }
            _ => Slot::Conn(self.push(e.family, local, remote, Origin::Accept, e.old_state)),
        }
    }

    /// The pre-existing connection with this 4-tuple. Without BTF the kprobe set sends IPv6
    /// sockets with their addresses unknown (it reads only the head of the sock): those match
    /// on family and ports, when exactly one seed has them.
    fn match_seed(&mut self, e: &TcpEvent, local: SocketAddr, remote: SocketAddr) -> Option<usize> {
        let key = procfs::flow_key(e.family, local, remote);
        if let Some(i) = self.seeds.remove(&key) {
            self.stale_seeds.push(key);
            return Some(i);
        }
        if e.family != AF_INET6 || e.laddr != [0; 16] {
            return None;
        }
        let mut candidates = self
            .seeds
            .keys()
            .filter(|k| k.family == e.family && k.lport == e.lport && k.rport == e.rport);
        let (Some(&k), None) = (candidates.next(), candidates.next()) else {
            return None;
        };
        self.stale_seeds.push(k);
        let i = self.seeds.remove(&k)?;
        Some(i)
    }
}

/// A transition's name in the counts, `FROM->TO`.
fn transition_key(t: &Transition) -> String {
    format!("{}->{}", state_name(t.from), state_name(t.to))
}

pub fn state_name(s: u32) -> String {
    match s {
        state::ESTABLISHED => "ESTABLISHED",
        state::SYN_SENT => "SYN_SENT",
        state::SYN_RECV => "SYN_RECV",
        state::FIN_WAIT1 => "FIN_WAIT1",
        state::FIN_WAIT2 => "FIN_WAIT2",
        state::TIME_WAIT => "TIME_WAIT",
        state::CLOSE => "CLOSE",
        state::CLOSE_WAIT => "CLOSE_WAIT",
        state::LAST_ACK => "LAST_ACK",
        state::LISTEN => "LISTEN",
        state::CLOSING => "CLOSING",
        state::NEW_SYN_RECV => "NEW_SYN_RECV",
        other => return format!("STATE_{other}"),
    }
    .to_string()
}

/// LavinMQ's well-known ports.
pub fn service(port: u16) -> Option<&'static str> {
    Some(match port {
        5672 => "AMQP",
        5671 => "AMQPS",
        1883 => "MQTT",
        8883 => "MQTTS",
        15672 => "HTTP",
        15692 => "metrics",
        5679 => "clustering",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u32, sk: u64, old: u32, new: u32, origin: u32, ts: u64) -> TcpEvent {
        let mut e = TcpEvent {
            ts_ns: ts,
            sk,
            kind,
            old_state: old,
            new_state: new,
            origin,
            family: AF_INET,
            lport: 5672,
            rport: 40000,
            ..TcpEvent::default()
        };
        e.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e
    }

    #[test]
    fn a_transition_from_a_state_the_last_one_did_not_enter_is_counted_unseen() {
        let mut t = Table::default();
        let c = origin::CONNECT;
        t.apply(&ev(kind::STATE, 1, state::CLOSE, state::SYN_SENT, c, 1));
        t.apply(&ev(
            kind::STATE,
            1,
            state::SYN_SENT,
            state::ESTABLISHED,
            c,
            2,
        ));
        assert_eq!(t.unseen_transitions, 0);
        // ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 went unseen.
        t.apply(&ev(kind::STATE, 1, state::FIN_WAIT2, state::CLOSE, c, 3));
        assert_eq!(t.unseen_transitions, 1);
        // A socket's first event starts from whatever state it reports.
        t.apply(&ev(
            kind::STATE,
            2,
            state::SYN_RECV,
            state::ESTABLISHED,
            origin::ACCEPT,
            4,
        ));
        assert_eq!(t.unseen_transitions, 1);
    }

    #[test]
    fn transitions_carry_the_time_in_the_previous_state() {
        let mut t = Table::default();
        t.apply(&ev(
            kind::STATE,
            1,
            state::SYN_RECV,
            state::ESTABLISHED,
            origin::ACCEPT,
            100,
        ));
        t.apply(&ev(
            kind::STATE,
            1,
            state::ESTABLISHED,
            state::CLOSE_WAIT,
            origin::ACCEPT,
            350,
        ));
        t.apply(&ev(
            kind::STATE,
            1,
            state::CLOSE_WAIT,
            state::LAST_ACK,
            origin::ACCEPT,
            400,
        ));
        let c = &t.conns[0];
        assert_eq!(c.origin, Origin::Accept);
        assert_eq!(c.opened, Some(100));
        assert_eq!(c.transitions[0].prev_state_ns, None);
        assert_eq!(c.transitions[1].prev_state_ns, Some(250));
        assert_eq!(c.transitions[2].prev_state_ns, Some(50));
        assert_eq!(c.closed_by(), Some(Side::Peer));
        assert_eq!(c.local.to_string(), "127.0.0.1:5672");
        // The destroy hook's read: 7 payload bytes acked (our FIN not yet), 10 received and
        // the peer's FIN.
        let info = SockInfo {
            bytes_acked: 7,
            bytes_received: 11,
            resets_sent: 2,
            sock_read: 1,
            state: state::CLOSE,
            ..SockInfo::default()
        };
        let mut d = ev(
            kind::DESTROY,
            1,
            state::CLOSE,
            state::CLOSE,
            origin::ACCEPT,
            500,
        );
        d.info = info;
        t.apply(&d);
        assert_eq!(t.conns[0].closed, Some(500));
        let c = &t.conns[0].counters;
        assert_eq!((c.bytes_acked, c.bytes_received, c.resets_sent), (7, 10, 2));
        assert_eq!(t.live().count(), 0);
    }

    #[test]
    fn seeds_are_matched_by_transition_even_without_ipv6_addresses() {
        let mut t = Table::default();
        let sock = |rport| ProcSock {
            family: AF_INET,
            local: "127.0.0.1:5672".parse().unwrap(),
            remote: SocketAddr::new("127.0.0.1".parse().unwrap(), rport),
            state: state::ESTABLISHED,
            inode: 1,
        };
        let v6 = ProcSock {
            family: AF_INET6,
            local: "[fd00::1]:5672".parse().unwrap(),
            remote: "[fd00::2]:40001".parse().unwrap(),
            state: state::ESTABLISHED,
            inode: 2,
        };
        t.seed(&[sock(40000), v6]);
        assert_eq!(t.conns.len(), 2);
        t.apply(&ev(
            kind::STATE,
            9,
            state::ESTABLISHED,
            state::FIN_WAIT1,
            origin::SEED,
            10,
        ));
        // The kprobe set: family and ports, no IPv6 address.
        let mut kp = ev(
            kind::STATE,
            8,
            state::ESTABLISHED,
            state::CLOSE_WAIT,
            origin::SEED,
            11,
        );
        (kp.family, kp.rport, kp.laddr, kp.raddr) = (AF_INET6, 40001, [0; 16], [0; 16]);
        t.apply(&kp);
        assert_eq!(t.conns.len(), 2, "both matched their seed");
        assert_eq!(
            t.conns[1].local.to_string(),
            "[fd00::1]:5672",
            "kept /proc's"
        );
        assert_eq!(t.conns[0].transitions.len(), 1);
        assert_eq!(t.conns[0].closed_by(), Some(Side::Local));
        assert_eq!(
            t.conns[0].transitions[0].prev_state_ns, None,
            "since unknown"
        );
        assert_eq!(t.stale_seeds.len(), 2);
        assert_eq!(t.live().count(), 2);
    }

    fn counters(acked: u64, received: u64) -> TcpCounters {
        TcpCounters {
            bytes_acked: acked,
            bytes_received: received,
            total_retrans: 0,
            rtt_us: 30,
        }
    }

    fn diag(c: &Conn, st: u32, raw: TcpCounters, inode: u64) -> DiagSock {
        DiagSock {
            family: AF_INET,
            local: c.local,
            remote: c.remote,
            state: st,
            inode,
            counters: Some(raw),
        }
    }

    /// The kernel counts the SYN of an active open and each FIN as a byte: the figures are
    /// the payload, each poll's reading no lower than the last, and a pre-existing
    /// connection counts from its first poll.
    #[test]
    fn polls_count_payload_only_from_the_first_reading() {
        let mut t = Table::default();
        let mut syn = ev(
            kind::STATE,
            3,
            state::CLOSE,
            state::SYN_SENT,
            origin::CONNECT,
            1,
        );
        t.apply(&syn);
        syn.old_state = state::SYN_SENT;
        syn.new_state = state::ESTABLISHED;
        t.apply(&syn);
        let c = t.conns[0].clone();
        t.apply_poll(&[diag(&c, state::ESTABLISHED, counters(1, 0), 77)]);
        assert_eq!(t.conns[0].counters.bytes_acked, 0, "the SYN");
        assert_eq!(t.conns[0].rtt_us, Some(30));
        t.apply_poll(&[diag(&c, state::ESTABLISHED, counters(501, 700), 77)]);
        assert_eq!(t.conns[0].counters.bytes_acked, 500);
        t.apply_poll(&[diag(&c, state::FIN_WAIT2, counters(502, 700), 77)]);
        assert_eq!(
            (
                t.conns[0].counters.bytes_acked,
                t.conns[0].counters.bytes_received
            ),
            (500, 700),
            "our FIN"
        );
        // Closed and gone: the destroy hook's read, in CLOSE (the peer's FIN arrived).
        for (from, to) in [
            (state::ESTABLISHED, state::FIN_WAIT1),
            (state::FIN_WAIT1, state::FIN_WAIT2),
            (state::FIN_WAIT2, state::CLOSE),
        ] {
            syn.old_state = from;
            syn.new_state = to;
            t.apply(&syn);
        }
        let mut d = ev(
            kind::DESTROY,
            3,
            state::CLOSE,
            state::CLOSE,
            origin::CONNECT,
            9,
        );
        d.info = SockInfo {
            bytes_acked: 502,
            bytes_received: 701,
            sock_read: 1,
            ..SockInfo::default()
        };
        t.apply(&d);
        let c = &t.conns[0].counters;
        assert_eq!((c.bytes_acked, c.bytes_received), (500, 700));

        // Pre-existing: what it moved before the first poll is not counted.
        let mut t = Table::default();
        t.seed(&[ProcSock {
            family: AF_INET,
            local: "127.0.0.1:5672".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            state: state::ESTABLISHED,
            inode: 5,
        }]);
        let c = t.conns[0].clone();
        t.apply_poll(&[diag(&c, state::ESTABLISHED, counters(1000, 1000), 5)]);
        t.apply_poll(&[diag(&c, state::CLOSE_WAIT, counters(4000, 3001), 5)]);
        let c = &t.conns[0].counters;
        assert_eq!(
            (c.bytes_acked, c.bytes_received),
            (3000, 2000),
            "the peer's FIN"
        );
        // Another socket's counters (other inode, other ports) are not taken.
        let mut other = diag(
            &t.conns[0].clone(),
            state::ESTABLISHED,
            counters(9999, 9999),
            6,
        );
        other.remote = "127.0.0.1:40009".parse().unwrap();
        t.apply_poll(&[other]);
        assert_eq!(t.conns[0].counters.bytes_acked, 3000);
    }

    /// An accepted connection, 127.0.0.1:1 ↔ 127.0.0.1:2, ESTABLISHED.
    fn established_accept() -> Conn {
        Conn::new(
            AF_INET,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            Origin::Accept,
            state::ESTABLISHED,
        )
    }

    #[test]
    fn an_ack_of_our_fin_read_with_the_state_before_it_is_not_counted_as_payload() {
        let mut c = established_accept();
        let read = |acked| TcpCounters {
            bytes_acked: acked,
            ..TcpCounters::default()
        };
        // 3000 payload bytes; sock_diag's state still says FIN_WAIT1 although its counters
        // already hold the ack of our FIN.
        c.observe(read(3001), state::FIN_WAIT1);
        assert_eq!(c.counters.bytes_acked, 3000);
        // Read before that ack, one byte short; the next read makes it good.
        let mut d = established_accept();
        d.observe(read(3000), state::FIN_WAIT1);
        assert_eq!(d.counters.bytes_acked, 2999);
        d.observe(read(3001), state::FIN_WAIT2);
        assert_eq!(d.counters.bytes_acked, 3000);
    }

    #[test]
    fn resets_decide_who_closed_when_no_fin_was_seen() {
        let mut c = established_accept();
        c.transition(state::ESTABLISHED, state::CLOSE, 5);
        assert_eq!(c.closed_by(), None);
        c.counters.resets_received = 1;
        assert_eq!(c.closed_by(), Some(Side::Peer));
        c.counters.resets_sent = 1;
        assert_eq!(c.closed_by(), Some(Side::Local));
    }

    #[test]
    fn a_connect_gets_its_local_port_from_its_next_transition_or_proc() {
        let mut t = Table::default();
        let mut syn = ev(
            kind::STATE,
            3,
            state::CLOSE,
            state::SYN_SENT,
            origin::CONNECT,
            1,
        );
        syn.lport = 0;
        t.apply(&syn);
        assert_eq!(t.conns[0].local.port(), 0);
        assert!(t.needs_local_ports());
        let proc_sock = |lport: u16| ProcSock {
            family: AF_INET,
            local: SocketAddr::new("127.0.0.1".parse().unwrap(), lport),
            remote: "127.0.0.1:40000".parse().unwrap(),
            state: state::SYN_SENT,
            inode: 1,
        };
        // Two candidates: ambiguous, left alone.
        t.fill_local_ports(&[proc_sock(5001), proc_sock(5002)]);
        assert_eq!(t.conns[0].local.port(), 0);
        t.fill_local_ports(&[proc_sock(5001)]);
        assert_eq!(t.conns[0].local.port(), 5001);
        // The next transition carries the port anyway.
        t.apply(&ev(
            kind::STATE,
            3,
            state::SYN_SENT,
            state::ESTABLISHED,
            origin::CONNECT,
            2,
        ));
        assert_eq!(t.conns[0].local.port(), 5672);
        assert!(!t.needs_local_ports());
    }

    #[test]
    fn a_connection_opened_while_attaching_is_listed_once() {
        let mut t = Table::default();
        t.seed(&[ProcSock {
            family: AF_INET,
            local: "127.0.0.1:5672".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            state: state::ESTABLISHED,
            inode: 1,
        }]);
        t.apply(&ev(
            kind::STATE,
            4,
            state::SYN_RECV,
            state::ESTABLISHED,
            origin::ACCEPT,
            1,
        ));
        assert_eq!(t.conns.len(), 2);
        assert!(t.conns[0].duplicate && !t.conns[1].duplicate);
        assert_eq!(t.stale_seeds.len(), 1);
    }

    fn accepted(t: &mut Table, sk: u64, rport: u16, opened: u64, closed: Option<u64>) {
        let mut e = ev(
            kind::STATE,
            sk,
            state::SYN_RECV,
            state::ESTABLISHED,
            origin::ACCEPT,
            opened,
        );
        e.rport = rport;
        t.apply(&e);
        if let Some(at) = closed {
            e.old_state = state::ESTABLISHED;
            e.new_state = state::CLOSE;
            e.ts_ns = at;
            t.apply(&e);
            e.kind = kind::DESTROY;
            e.ts_ns = at + 1;
            t.apply(&e);
        }
    }

    /// The drain and the reports share one thread: an event can reach the table after the
    /// interval in which it happened was reported. It counts in the next interval, once.
    #[test]
    fn an_event_applied_after_its_interval_was_reported_counts_in_the_next() {
        let mut t = Table::default();
        accepted(&mut t, 1, 40001, 100, None);
        let first = t.figures(false);
        assert_eq!((first.opened, first.closed), (1, 0));
        t.mark_reported();
        // Interval 1 ended at 200: these happened before that, and arrive now.
        accepted(&mut t, 2, 40002, 150, Some(160));
        let second = t.figures(false);
        assert_eq!((second.opened, second.closed), (1, 1));
        assert_eq!(second.transitions["SYN_RECV->ESTABLISHED"], 1);
        assert_eq!(second.transitions["ESTABLISHED->CLOSE"], 1);
        assert_eq!(second.lifetimes.count, 1);
        t.mark_reported();
        let third = t.figures(false);
        assert_eq!(third, Figures::default(), "nothing counted twice");
        let whole = t.figures(true);
        assert_eq!((whole.opened, whole.closed), (2, 1));
    }

    #[test]
    fn reported_closed_connections_are_folded_into_the_counts_beyond_the_kept_ones() {
        let mut t = Table::default();
        t.seed(&[ProcSock {
            family: AF_INET,
            local: "127.0.0.1:5672".parse().unwrap(),
            remote: "127.0.0.1:39999".parse().unwrap(),
            state: state::ESTABLISHED,
            inode: 1,
        }]);
        for i in 0..10 {
            accepted(&mut t, 10 + i, 41000 + i as u16, 100 + i, Some(200 + 2 * i));
        }
        // One still open, opened last.
        accepted(&mut t, 99, 42000, 300, None);
        let before = t.figures(true);
        assert_eq!(t.evict(3), 0, "nothing reported yet");
        t.mark_reported();
        assert_eq!(t.evict(3), 7);
        assert_eq!(t.conns.len(), 1 + 3 + 1, "the seed, 3 closed, the open one");
        assert_eq!(t.evicted.connections, 7);
        assert_eq!(
            t.figures(true),
            before,
            "the whole run's counts are unchanged"
        );
        assert_eq!(t.live().count(), 1);
        // The open one and the seed still get their events through the remapped indices.
        let mut close = ev(
            kind::STATE,
            99,
            state::ESTABLISHED,
            state::CLOSE,
            origin::ACCEPT,
            400,
        );
        close.rport = 42000;
        t.apply(&close);
        let mut seed = ev(
            kind::STATE,
            5,
            state::ESTABLISHED,
            state::CLOSE_WAIT,
            origin::SEED,
            401,
        );
        seed.rport = 39999;
        t.apply(&seed);
        let open = t.conns.iter().find(|c| c.remote.port() == 42000).unwrap();
        assert_eq!(open.state, state::CLOSE);
        assert_eq!(t.conns[0].state, state::CLOSE_WAIT);
        assert_eq!(t.conns.len(), 5);
        assert_eq!(
            t.evict(3),
            0,
            "the kept ones are not reported closed again yet"
        );
    }

    /// A churn within one interval: the table stays bounded, and neither the interval's
    /// counts nor the whole run's change when connections it never listed are folded.
    #[test]
    fn closed_connections_beyond_the_listed_ones_are_folded_before_their_interval_ends() {
        let mut t = Table::default();
        accepted(&mut t, 1, 40000, 10, Some(20));
        t.mark_reported();
        let n = 3 * CLOSED_LISTED as u64;
        for i in 0..n {
            accepted(
                &mut t,
                100 + i,
                41000 + i as u16,
                100 + i,
                Some(200 + 2 * i),
            );
            t.bound();
            assert!(t.conns.len() <= 2 * CLOSED_LISTED + 2, "{}", t.conns.len());
        }
        // One open connection, opened last, is never folded.
        accepted(&mut t, 99, 39000, 9000, None);
        let want: BTreeMap<String, u64> =
            [("SYN_RECV->ESTABLISHED", n + 1), ("ESTABLISHED->CLOSE", n)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let f = t.figures(false);
        assert_eq!((f.opened, f.closed), (n + 1, n));
        assert_eq!(f.transitions, want);
        assert_eq!(f.lifetimes.count, n);
        let listed = t
            .conns
            .iter()
            .filter(|c| Table::in_window(c, false))
            .count() as u64;
        // The first one too: an earlier interval listed it.
        assert_eq!(
            t.folded_in_window() + listed,
            n + 2,
            "every one listed or folded"
        );
        let whole = t.figures(true);
        assert_eq!((whole.opened, whole.closed), (n + 2, n + 1));
        assert_eq!(whole.lifetimes.count, n + 1);
        t.mark_reported();
        assert_eq!(t.folded_in_window(), 0);
        let next = t.figures(false);
        assert_eq!((next.opened, next.closed), (0, 0), "counted once");
        assert!(next.transitions.is_empty());
        assert_eq!(t.figures(true).closed, n + 1, "the whole run keeps them");
        assert_eq!(t.live().count(), 1);
    }

    #[test]
    fn names() {
        assert_eq!(service(5672), Some("AMQP"));
        assert_eq!(service(15692), Some("metrics"));
        assert_eq!(service(1), None);
        assert_eq!(state_name(state::FIN_WAIT2), "FIN_WAIT2");
        assert_eq!(state_name(99), "STATE_99");
    }
}
