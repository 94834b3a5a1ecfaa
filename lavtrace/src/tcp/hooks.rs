//! Which kernel hooks feed the `tcp` family: ONE table of every alternative, and the choice
//! for this kernel. A kernel quirk (a symbol renamed, a tracepoint added) is one row here.
//!
//! Each role (what the family needs to see) has a kprobe alternative, a tracepoint
//! alternative, or both. `--tcp-hooks auto` (the default) takes, per role, the kprobe set when
//! this kernel can attach it, else the tracepoint set, and falls back to the next one when an
//! attach fails; `kprobe` and `tracepoint` force a set and fail when it cannot be had.
//!
//! Only rare events are hooked. Bytes, retransmits and RTT have no row: they are the kernel's
//! own socket counters, read through sock_diag once per interval (`diag.rs`; [`SOCK_DIAG`] is
//! the line `lavtrace check` prints for them). No row is a syscall tracepoint: any `syscalls:*`
//! tracepoint turns on the syscall tracing slow path for every thread of the host.

use std::{collections::HashSet, path::Path};

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::KProbe};
use tracing::{debug, warn};

use super::FAMILY;
use crate::{
    error::Fatal,
    kernel::{self, Hook, Overrides, tracefs},
};

/// Which set to use (`--tcp-hooks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// kprobes where the kernel has them, tracepoints otherwise.
    #[default]
    Auto,
    /// kprobes only (fails where the kernel has none).
    Kprobe,
    /// Tracepoints only.
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    Kprobe,
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every state change (the transitions, and the connect/accept/listen rules).
    State,
    /// The target's connect (the tracepoint set sees it as CLOSE → SYN_SENT in `State`).
    Connect,
    /// The target's accept (the tracepoint set relies on the listening ports in `State`).
    Accept,
    /// The target's close (the tracepoint set sees FIN_WAIT1 / CLOSE in `State`).
    Close,
    Destroy,
    ResetSent,
    ResetReceived,
    /// listen(2) by the target (the tracepoint set sees it as the LISTEN transition in
    /// `State`; tcp_set_state never sees a LISTEN).
    Listen,
}

impl Role {
    /// Without it the family makes no sense; the others are reported missing and skipped.
    fn required(self) -> bool {
        matches!(self, Role::State)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Kprobe(&'static str),
    Kretprobe(&'static str),
    Tracepoint(&'static str, &'static str),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Kprobe(s) => write!(f, "kprobe {s}"),
            Via::Kretprobe(s) => write!(f, "kretprobe {s}"),
            Via::Tracepoint(c, n) => write!(f, "tracepoint {c}:{n}"),
        }
    }
}

#[derive(Debug)]
pub struct HookSpec {
    pub role: Role,
    pub set: Set,
    /// Program in lavtrace-ebpf/src/tcp.rs.
    pub program: &'static str,
    pub via: Via,
    /// Since when the kernel has it, and what to know about it.
    pub note: &'static str,
}

const fn kp(role: Role, program: &'static str, via: Via, note: &'static str) -> HookSpec {
    HookSpec {
        role,
        set: Set::Kprobe,
        program,
        via,
        note,
    }
}

const fn tp(role: Role, program: &'static str, via: Via, note: &'static str) -> HookSpec {
    HookSpec {
        role,
        set: Set::Tracepoint,
        program,
        via,
        note,
    }
}

use Via::{Kprobe as K, Kretprobe as R, Tracepoint as T};

/// Every hook of the family, preferred alternative first within a role.
pub const HOOKS: &[HookSpec] = &[
    kp(
        Role::State,
        "tcp_set_state_kp",
        K("tcp_set_state"),
        "any kernel with kprobes; old state and 4-tuple read from the sock head",
    ),
    tp(
        Role::State,
        "tcp_state_tp",
        T("sock", "inet_sock_set_state"),
        "4.16+",
    ),
    kp(Role::Connect, "tcp_connect_kp", K("tcp_v4_connect"), "any"),
    kp(
        Role::Connect,
        "tcp_connect_ret_kp",
        R("tcp_v4_connect"),
        "any; reports synchronous connect errors",
    ),
    kp(
        Role::Connect,
        "tcp_connect_kp",
        K("tcp_v6_connect"),
        "static: absent when inlined",
    ),
    kp(
        Role::Connect,
        "tcp_connect_ret_kp",
        R("tcp_v6_connect"),
        "static: absent when inlined",
    ),
    kp(
        Role::Accept,
        "tcp_accept_ret_kp",
        R("inet_csk_accept"),
        "any",
    ),
    kp(Role::Close, "tcp_close_kp", K("tcp_close"), "any"),
    kp(
        Role::Destroy,
        "tcp_destroy_kp",
        K("tcp_v4_destroy_sock"),
        "any; IPv6 sockets end there too",
    ),
    tp(
        Role::Destroy,
        "tcp_destroy_tp",
        T("tcp", "tcp_destroy_sock"),
        "4.16+",
    ),
    kp(
        Role::ResetSent,
        "tcp_send_reset_kp",
        K("tcp_send_active_reset"),
        "active resets (abort, linger 0)",
    ),
    tp(
        Role::ResetSent,
        "tcp_send_reset_tp",
        T("tcp", "tcp_send_reset"),
        "4.15+",
    ),
    kp(
        Role::ResetReceived,
        "tcp_receive_reset_kp",
        K("tcp_reset"),
        "any",
    ),
    tp(
        Role::ResetReceived,
        "tcp_receive_reset_tp",
        T("tcp", "tcp_receive_reset"),
        "4.16+",
    ),
    kp(
        Role::Listen,
        "tcp_listen_kp",
        K("inet_csk_listen_start"),
        "any; the socket, for the return",
    ),
    kp(
        Role::Listen,
        "tcp_listen_ret_kp",
        R("inet_csk_listen_start"),
        "any; the port is bound by then",
    ),
];

/// The program column of `lavtrace check`'s line for the byte counters (no hook: a poll).
pub const SOCK_DIAG: &str = "sock_diag";
/// Where the byte counters come from, as `lavtrace check` prints it (`ok via ... [note]`).
pub const SOCK_DIAG_VIA: &str = "sock_diag INET_DIAG tcp_info, polled per interval";
pub const SOCK_DIAG_NOTE: &str = "tcp bytes, retransmits, RTT: tcpi_bytes_acked (4.1+), \
     tcpi_bytes_received (4.2+), tcpi_total_retrans, tcpi_rtt";

/// What this kernel offers, as far as the table cares.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    /// Why kprobes cannot be used at all, if they cannot.
    pub no_kprobes: Option<String>,
    /// Symbols of the table present in /proc/kallsyms.
    pub symbols: HashSet<String>,
    /// Tracepoints of the table present in tracefs, as `category:name`.
    pub tracepoints: HashSet<String>,
}

impl Caps {
    pub fn probe() -> Caps {
        let tracefs = tracefs::tracefs_dir().unwrap_or(tracefs::TRACEFS_DIRS[0]);
        // The kprobe programs read the head of struct sock: check it where kprobes exist.
        let no_kprobes = kernel::kprobe::missing(tracefs).or_else(super::btf::sock_head_mismatch);
        let wanted: HashSet<&str> = HOOKS
            .iter()
            .filter_map(|h| match h.via {
                Via::Kprobe(s) | Via::Kretprobe(s) => Some(s),
                Via::Tracepoint(..) => None,
            })
            .collect();
        let symbols = std::fs::read_to_string("/proc/kallsyms")
            .map(|s| {
                s.lines()
                    .filter_map(|l| l.split_whitespace().nth(2))
                    .filter(|name| wanted.contains(name))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let tracepoints = HOOKS
            .iter()
            .filter_map(|h| match h.via {
                Via::Tracepoint(c, n) => Some((c, n)),
                _ => None,
            })
            .filter(|(c, n)| Path::new(tracefs).join("events").join(c).join(n).is_dir())
            .map(|(c, n)| format!("{c}:{n}"))
            .collect();
        Caps {
            no_kprobes,
            symbols,
            tracepoints,
        }
    }

    /// Why `spec` cannot be attached here, if it cannot.
    pub fn unavailable(&self, spec: &HookSpec) -> Option<String> {
        match spec.via {
            Via::Kprobe(sym) | Via::Kretprobe(sym) => {
                if let Some(why) = &self.no_kprobes {
                    Some(why.clone())
                } else if !self.symbols.contains(sym) {
                    Some(format!(
                        "symbol {sym} not in /proc/kallsyms (inlined, renamed or absent)"
                    ))
                } else {
                    None
                }
            }
            Via::Tracepoint(c, n) => (!self.tracepoints.contains(&format!("{c}:{n}")))
                .then(|| format!("tracepoint {c}:{n} not in tracefs")),
        }
    }
}

/// The sets to try for one role, in order (the first is the choice; the others are
/// fallbacks when attaching fails, auto mode only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub role: Role,
    pub sets: Vec<Set>,
}

fn rows(role: Role, set: Set) -> impl Iterator<Item = &'static HookSpec> {
    HOOKS.iter().filter(move |h| h.role == role && h.set == set)
}

fn roles() -> Vec<Role> {
    let mut roles: Vec<Role> = HOOKS.iter().map(|h| h.role).collect();
    roles.dedup();
    roles
}

/// Why set `set` of `role` cannot be attached here (None: it can; Some("") never happens).
fn set_unavailable(role: Role, set: Set, caps: &Caps) -> Option<String> {
    let mut any = false;
    for spec in rows(role, set) {
        any = true;
        if let Some(why) = caps.unavailable(spec) {
            return Some(format!("{}: {why}", spec.via));
        }
    }
    (!any).then(|| "no such alternative".to_string())
}

/// Chooses the sets for `mode` on a kernel with `caps`. Err: one line saying why the forced
/// set (or a required role) cannot be had.
pub fn select(mode: Mode, caps: &Caps) -> Result<Vec<Plan>, String> {
    if mode == Mode::Kprobe
        && let Some(why) = &caps.no_kprobes
    {
        return Err(format!("--tcp-hooks kprobe: {why}"));
    }
    let mut plans = Vec::new();
    for role in roles() {
        let has = |set| rows(role, set).next().is_some();
        let ok = |set| set_unavailable(role, set, caps).is_none();
        let preference: Vec<Set> = match mode {
            Mode::Auto => vec![Set::Kprobe, Set::Tracepoint],
            // Roles the table gives no kprobe for keep their tracepoint.
            Mode::Kprobe if has(Set::Kprobe) => vec![Set::Kprobe],
            Mode::Kprobe => vec![Set::Tracepoint],
            Mode::Tracepoint => vec![Set::Tracepoint],
        };
        let candidates: Vec<Set> = preference.iter().copied().filter(|&s| has(s)).collect();
        if candidates.is_empty() {
            // e.g. Connect under tracepoints: covered by the State rules.
            continue;
        }
        let sets: Vec<Set> = candidates.iter().copied().filter(|&s| ok(s)).collect();
        if sets.is_empty() {
            let why = set_unavailable(role, candidates[0], caps).unwrap_or_default();
            if mode == Mode::Kprobe || role.required() {
                let flag = match mode {
                    Mode::Auto => String::new(),
                    Mode::Kprobe => "--tcp-hooks kprobe: ".into(),
                    Mode::Tracepoint => "--tcp-hooks tracepoint: ".into(),
                };
                return Err(format!("{flag}{why}"));
            }
            if has(Set::Tracepoint) {
                warn!("tcp: {role:?} not traced: {why}");
            } else {
                // Connect/Accept/Close: the state tracepoint's rules see them.
                debug!("tcp: {role:?} left to the state hook: {why}");
            }
            continue;
        }
        plans.push(Plan { role, sets });
    }
    Ok(plans)
}

/// Attaches the plans, falling back to the next set of a role when one fails. Returns the
/// hooks in use.
pub fn attach(ebpf: &mut Ebpf, mode: Mode, caps: &Caps) -> Result<Vec<Hook>> {
    let plans = select(mode, caps).map_err(Fatal::Unsupported)?;
    let mut hooks = Vec::new();
    for plan in plans {
        let mut last_err = None;
        for &set in &plan.sets {
            match attach_set(ebpf, plan.role, set) {
                Ok(h) => {
                    hooks.extend(h);
                    last_err = None;
                    break;
                }
                Err(e) => {
                    debug!("tcp: {:?} via {set:?} failed: {e:#}", plan.role);
                    last_err = Some(e);
                }
            }
        }
        if let Some(e) = last_err {
            if plan.role.required() || mode != Mode::Auto {
                return Err(e);
            }
            warn!("tcp: {:?} not traced: {e:#}", plan.role);
        }
    }
    Ok(hooks)
}

fn attach_set(ebpf: &mut Ebpf, role: Role, set: Set) -> Result<Vec<Hook>> {
    rows(role, set).map(|spec| attach_one(ebpf, spec)).collect()
}

fn attach_one(ebpf: &mut Ebpf, spec: &HookSpec) -> Result<Hook> {
    match spec.via {
        Via::Tracepoint(c, n) => kernel::attach_tracepoint(ebpf, FAMILY, spec.program, c, n),
        Via::Kprobe(sym) | Via::Kretprobe(sym) => {
            let prog: &mut KProbe = ebpf
                .program_mut(spec.program)
                .with_context(|| format!("program {} missing from the eBPF object", spec.program))?
                .try_into()
                .with_context(|| format!("program {} is not a kprobe", spec.program))?;
            // One program serves tcp_v4_connect and tcp_v6_connect: load it once.
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel rejected program {}", spec.program))?;
            }
            prog.attach(sym, 0).map_err(|e| {
                anyhow::Error::new(Fatal::Unsupported(format!(
                    "cannot attach {} to {}: {e}",
                    spec.program, spec.via
                )))
            })?;
            Ok(Hook {
                family: FAMILY,
                program: spec.program,
                via: spec.via.to_string(),
            })
        }
    }
}

/// Loads (without attaching) every kprobe program of the table into a fresh copy of the
/// object: the verifier checks them even on a kernel that cannot attach them. Returns the
/// programs the kernel refused, with the first line of why.
pub fn verify_kprobe_programs() -> Result<Vec<(&'static str, String)>> {
    let mut overrides = Overrides::default();
    overrides.global_u32(lavtrace_common::filter::TARGET_TGID, std::process::id());
    <super::Tracer as crate::family::Family>::overrides(&Default::default(), &mut overrides);
    let mut ebpf = kernel::load(&overrides)?;
    let mut refused = Vec::new();
    let mut seen = HashSet::new();
    for spec in HOOKS.iter().filter(|h| h.set == Set::Kprobe) {
        if !seen.insert(spec.program) {
            continue;
        }
        let prog: &mut KProbe = ebpf
            .program_mut(spec.program)
            .with_context(|| format!("program {} missing from the eBPF object", spec.program))?
            .try_into()?;
        if let Err(e) = prog.load() {
            refused.push((spec.program, format!("{e:#}")));
        }
    }
    Ok(refused)
}

/// `lavtrace check`: one line per row of the table that is not in `in_use`.
pub fn not_in_use(in_use: &[Hook], caps: &Caps) -> Vec<(&'static str, String)> {
    HOOKS
        .iter()
        .filter(|spec| {
            let via = spec.via.to_string();
            !in_use
                .iter()
                .any(|h| h.program == spec.program && h.via == via)
        })
        .map(|spec| {
            let status = match caps.unavailable(spec) {
                Some(why) => format!("unavailable: {why} [{}; {}]", spec.via, spec.note),
                None => format!("available via {} (not in use) [{}]", spec.via, spec.note),
            };
            (spec.program, status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_caps() -> Caps {
        Caps {
            no_kprobes: None,
            symbols: HOOKS
                .iter()
                .filter_map(|h| match h.via {
                    Via::Kprobe(s) | Via::Kretprobe(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
            tracepoints: HOOKS
                .iter()
                .filter_map(|h| match h.via {
                    Via::Tracepoint(c, n) => Some(format!("{c}:{n}")),
                    _ => None,
                })
                .collect(),
        }
    }

    /// This machine: tracepoints everywhere, no kprobes.
    fn no_kprobe_caps() -> Caps {
        Caps {
            no_kprobes: Some("kprobes are not compiled into this kernel".into()),
            ..all_caps()
        }
    }

    fn chosen(plans: &[Plan]) -> Vec<(Role, Set)> {
        plans.iter().map(|p| (p.role, p.sets[0])).collect()
    }

    #[test]
    fn auto_without_kprobes_takes_every_tracepoint() {
        let plans = select(Mode::Auto, &no_kprobe_caps()).unwrap();
        let c = chosen(&plans);
        assert!(c.iter().all(|&(_, s)| s == Set::Tracepoint), "{c:?}");
        let roles: Vec<Role> = c.iter().map(|&(r, _)| r).collect();
        assert!(roles.contains(&Role::State) && roles.contains(&Role::ResetReceived));
        // Covered by the State rules, nothing to attach.
        assert!(
            !roles.contains(&Role::Connect)
                && !roles.contains(&Role::Accept)
                && !roles.contains(&Role::Listen)
        );
        assert!(plans.iter().all(|p| p.sets == vec![Set::Tracepoint]));
    }

    #[test]
    fn auto_with_kprobes_prefers_them_and_keeps_tracepoints_as_fallback() {
        let plans = select(Mode::Auto, &all_caps()).unwrap();
        let state = plans.iter().find(|p| p.role == Role::State).unwrap();
        assert_eq!(state.sets, vec![Set::Kprobe, Set::Tracepoint]);
        let connect = plans.iter().find(|p| p.role == Role::Connect).unwrap();
        assert_eq!(connect.sets, vec![Set::Kprobe]);
        let listen = plans.iter().find(|p| p.role == Role::Listen).unwrap();
        assert_eq!(listen.sets, vec![Set::Kprobe]);
    }

    #[test]
    fn forced_kprobe_fails_with_the_reason_where_there_are_none() {
        let err = select(Mode::Kprobe, &no_kprobe_caps()).unwrap_err();
        assert!(
            err.starts_with("--tcp-hooks kprobe: kprobes are not compiled"),
            "{err}"
        );
    }

    #[test]
    fn forced_kprobe_uses_kprobes_for_every_role_that_has_one() {
        let plans = select(Mode::Kprobe, &all_caps()).unwrap();
        for p in &plans {
            assert_eq!(p.sets, vec![Set::Kprobe], "{:?}", p.role);
        }
        assert_eq!(plans.len(), roles().len());
    }

    #[test]
    fn a_missing_symbol_falls_back_in_auto_and_fails_when_forced() {
        let mut caps = all_caps();
        caps.symbols.remove("tcp_set_state");
        caps.symbols.remove("tcp_v6_connect");
        let plans = select(Mode::Auto, &caps).unwrap();
        let state = plans.iter().find(|p| p.role == Role::State).unwrap();
        assert_eq!(state.sets, vec![Set::Tracepoint]);
        assert!(!plans.iter().any(|p| p.role == Role::Connect));
        let err = select(Mode::Kprobe, &caps).unwrap_err();
        assert!(
            err.contains("kprobe tcp_set_state: symbol tcp_set_state not in /proc/kallsyms"),
            "{err}"
        );
    }

    #[test]
    fn forced_tracepoint_never_uses_kprobes_and_needs_the_state_tracepoint() {
        let plans = select(Mode::Tracepoint, &all_caps()).unwrap();
        assert!(plans.iter().all(|p| p.sets == vec![Set::Tracepoint]));
        let mut caps = all_caps();
        caps.tracepoints.remove("sock:inet_sock_set_state");
        let err = select(Mode::Tracepoint, &caps).unwrap_err();
        assert!(err.contains("sock:inet_sock_set_state"), "{err}");
        // An optional role missing is skipped, not fatal.
        let mut caps = no_kprobe_caps();
        caps.tracepoints.remove("tcp:tcp_send_reset");
        let plans = select(Mode::Auto, &caps).unwrap();
        assert!(!plans.iter().any(|p| p.role == Role::ResetSent));
    }

    /// The family's price for other processes: no hook on a send, a receive or a syscall.
    #[test]
    fn no_hook_runs_per_send_receive_or_syscall() {
        for spec in HOOKS {
            let name = spec.via.to_string();
            for per_call in [
                "syscalls:",
                "sock_send_length",
                "sock_recv_length",
                "tcp_sendmsg",
            ] {
                assert!(!name.contains(per_call), "{name}");
            }
            assert!(!name.contains("tcp_cleanup_rbuf") && !name.contains("tcp_recvmsg"));
        }
    }

    #[test]
    fn every_program_of_a_role_has_one_kind() {
        for spec in HOOKS {
            let same = HOOKS.iter().filter(|h| h.program == spec.program);
            assert!(
                same.clone()
                    .all(|h| h.role == spec.role && h.set == spec.set)
            );
            let is_tp = matches!(spec.via, Via::Tracepoint(..));
            assert_eq!(is_tp, spec.set == Set::Tracepoint, "{}", spec.program);
        }
    }
}
