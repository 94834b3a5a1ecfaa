//! Who pays for a hook while it is attached: the target only, the callers of one kernel
//! function or event anywhere on the host, or every syscall of every process.
//!
//! The last case is the one an operator must know about. Any program on a `raw_syscalls:*`
//! or `syscalls:*` tracepoint (and the raw `sys_enter`/`sys_exit` ones) makes the kernel set
//! the syscall-tracepoint work flag on every thread of the host (`syscall_regfunc`), so every
//! syscall of every process leaves the fast path, runs the tracepoint callbacks and returns
//! through the slow path, whether or not it is the syscall hooked and whatever the program's
//! filter says. The other kinds only run where they are hooked: a kprobe or tracepoint on a
//! kernel function costs its callers, a uprobe attached for one pid costs that process.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Hook;

/// Where a hook's cost lands.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Every syscall of every process on the host takes the syscall slow path.
    EverySyscall,
    /// Every process that reaches this kernel event or function (`sock:inet_sock_set_state`,
    /// `tcp_sendmsg`) runs the program; other syscalls pay nothing.
    Callers(String),
    /// Only the target: uprobes attached for its pid.
    Target,
}

/// The reference figure for `EverySyscall`: empty programs on the raw syscall tracepoints,
/// added to each syscall of an untraced process (BENCHMARKS.md, "floor" and "tracing another
/// process", on the project's 2-core VM with retpolines). Another host pays its own figure;
/// this one says the order of magnitude.
pub const SLOW_PATH_REFERENCE_NS: u64 = 275;

impl Hook {
    /// Where this hook's cost lands, from how it is attached (`via`).
    pub fn reach(&self) -> Reach {
        let via = self.via.as_str();
        let (kind, point) = via.split_once(' ').unwrap_or((via, ""));
        // The point's own name, without a "(pid N)" or similar qualifier.
        let point = point.split(" (").next().unwrap_or(point);
        match kind {
            "raw_tracepoint" if matches!(point, "sys_enter" | "sys_exit") => Reach::EverySyscall,
            "tracepoint"
                if point.starts_with("raw_syscalls:") || point.starts_with("syscalls:") =>
            {
                Reach::EverySyscall
            }
            // A uprobe or a perf event opened for the target's threads runs for them only.
            "uprobe" | "uretprobe" | "perf_event" if via.contains("(pid ") => Reach::Target,
            _ => Reach::Callers(point.to_string()),
        }
    }
}

/// What the attached hooks cost processes other than the target, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Bystanders {
    /// Families whose hooks put every syscall on the host on the slow path (empty: none).
    pub every_syscall: Vec<&'static str>,
    /// Per family, the kernel events or functions whose callers anywhere run its programs.
    pub callers: BTreeMap<&'static str, Vec<String>>,
    /// Families attached for the target's pid only (uprobes).
    pub target_only: Vec<&'static str>,
}

impl Bystanders {
    pub fn of(hooks: &[Hook]) -> Bystanders {
        let mut b = Bystanders::default();
        for h in hooks {
            let add = |v: &mut Vec<&'static str>| {
                if !v.contains(&h.family) {
                    v.push(h.family);
                }
            };
            match h.reach() {
                Reach::EverySyscall => add(&mut b.every_syscall),
                Reach::Target => add(&mut b.target_only),
                Reach::Callers(p) => {
                    let points = b.callers.entry(h.family).or_default();
                    if !points.contains(&p) {
                        points.push(p);
                    }
                }
            }
        }
        b
    }

    /// One family's line for `check`: what other processes pay while it is attached.
    pub fn family_line(&self, family: &str) -> String {
        if self.every_syscall.contains(&family) {
            return format!(
                "other processes: every syscall on the host takes the syscall-tracepoint slow \
                 path (+~{SLOW_PATH_REFERENCE_NS} ns each on the reference VM)"
            );
        }
        match self.callers.get(family) {
            Some(points) => format!(
                "other processes: +0 per syscall; a program runs when they reach {}",
                points.join(", ")
            ),
            None if self.target_only.contains(&family) => {
                "other processes: +0 (hooks attached for the target's pid only)".to_string()
            }
            None => "other processes: +0".to_string(),
        }
    }

    /// The header's note while the host-wide price is paid (None: it is not).
    pub fn header_note(&self) -> Option<String> {
        (!self.every_syscall.is_empty()).then(|| {
            format!(
                "every syscall on the host pays the syscall slow path ({})",
                self.every_syscall.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(family: &'static str, via: &str) -> Hook {
        Hook {
            family,
            program: "p",
            via: via.to_string(),
        }
    }

    #[test]
    fn syscall_tracepoints_of_any_kind_reach_every_syscall() {
        for via in [
            "raw_tracepoint sys_enter",
            "raw_tracepoint sys_exit",
            "tracepoint raw_syscalls:sys_enter",
            "tracepoint syscalls:sys_enter_fsync",
            "tracepoint syscalls:sys_exit_listen",
        ] {
            assert_eq!(hook("f", via).reach(), Reach::EverySyscall, "{via}");
        }
    }

    #[test]
    fn other_hooks_reach_their_callers_or_the_target() {
        assert_eq!(
            hook("tcp", "tracepoint sock:inet_sock_set_state").reach(),
            Reach::Callers("sock:inet_sock_set_state".into())
        );
        assert_eq!(
            hook("tcp", "kretprobe inet_csk_accept").reach(),
            Reach::Callers("inet_csk_accept".into())
        );
        assert_eq!(
            hook("x", "raw_tracepoint sched_switch").reach(),
            Reach::Callers("sched_switch".into())
        );
        assert_eq!(
            hook(
                "fsync",
                "uprobe /usr/lib/x86_64-linux-gnu/libc.so.6:fsync (pid 42)"
            )
            .reach(),
            Reach::Target
        );
        // A uprobe for every process is not the target's alone.
        assert_eq!(
            hook("fsync", "uprobe /lib/libc.so.6:fsync").reach(),
            Reach::Callers("/lib/libc.so.6:fsync".into())
        );
    }

    #[test]
    fn lines_say_who_pays() {
        let b = Bystanders::of(&[
            hook("syscalls", "raw_tracepoint sys_enter"),
            hook("fsync", "tracepoint syscalls:sys_enter_fsync"),
            hook("tcp", "tracepoint sock:inet_sock_set_state"),
            hook("tcp", "tracepoint tcp:tcp_destroy_sock"),
            hook("tcp", "tracepoint sock:inet_sock_set_state"),
            hook("mmap", "uprobe /lib/libc.so.6:mmap (pid 7)"),
        ]);
        assert_eq!(b.every_syscall, ["syscalls", "fsync"]);
        assert!(b.family_line("fsync").contains("every syscall on the host"));
        assert_eq!(
            b.family_line("tcp"),
            "other processes: +0 per syscall; a program runs when they reach \
             sock:inet_sock_set_state, tcp:tcp_destroy_sock"
        );
        assert_eq!(
            b.family_line("mmap"),
            "other processes: +0 (hooks attached for the target's pid only)"
        );
        assert_eq!(
            b.header_note().unwrap(),
            "every syscall on the host pays the syscall slow path (syscalls, fsync)"
        );
        assert_eq!(
            Bystanders::of(&[hook("tcp", "kprobe tcp_set_state")]).header_note(),
            None
        );
    }
}
