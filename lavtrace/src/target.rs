//! The traced process: finding it by pid or name, describing it, and noticing when it exits.

use std::{
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{cli::TargetArgs, error::Fatal};

/// The process name traced when neither --pid nor --comm is given.
pub const DEFAULT_COMM: &str = "lavinmq";

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub threads: usize,
}

impl Target {
    pub fn resolve(args: &TargetArgs) -> Result<Target> {
        match (args.pid, args.comm.as_deref()) {
            (Some(pid), _) => Target::from_pid(pid),
            (None, Some(comm)) => Target::from_comm(comm),
            (None, None) => Target::from_comm(DEFAULT_COMM),
        }
    }

    pub fn from_pid(pid: u32) -> Result<Target> {
        let status = fs::read_to_string(proc_path(pid, "status"))
            .map_err(|_| Fatal::Target(format!("no process with pid {pid}")))?;
        let tgid = status_field(&status, "Tgid:").and_then(|v| v.parse::<u32>().ok());
        if tgid != Some(pid) {
            let owner = tgid.map_or_else(|| "?".to_string(), |t| t.to_string());
            return Err(Fatal::Target(format!(
                "pid {pid} is a thread of process {owner}; trace --pid {owner}"
            ))
            .into());
        }
        unsuitable(pid, &status)?;
        Ok(Target {
            pid,
            comm: read_comm(pid).unwrap_or_default(),
            threads: thread_count(pid),
        })
    }

    /// lavtrace itself, which `from_pid` refuses: `check`'s trial attaches filter to it so
    /// that nothing else is touched, and never report.
    pub fn myself() -> Target {
        let pid = std::process::id();
        Target {
            pid,
            comm: read_comm(pid).unwrap_or_default(),
            threads: thread_count(pid),
        }
    }

    pub fn from_comm(comm: &str) -> Result<Target> {
        let me = std::process::id();
        let mut matches: Vec<u32> = all_pids()?
            .into_iter()
            .filter(|&pid| pid != me && read_comm(pid).as_deref() == Some(comm))
            // A process that has exited but is not yet reaped keeps its name: `--follow`
            // would otherwise find the broker it just lost and refuse it as a zombie.
            .filter(|&pid| !is_zombie(pid))
            .collect();
        matches.sort_unstable();
        match matches.as_slice() {
            [] => Err(
                Fatal::Target(format!("no process named {comm:?}; give --pid or --comm")).into(),
            ),
            [pid] => Target::from_pid(*pid),
            // Each with its executable: a process that names itself `lavinmq` is told apart
            // from the broker by what it runs, not by its name.
            many => Err(Fatal::Target(format!(
                "{} processes named {comm:?} (pids {}); pick one with --pid",
                many.len(),
                many.iter()
                    .map(|&pid| format!("{pid} ({})", exe_of(pid)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }
}

/// Processes that exist but cannot be traced: lavtrace itself (its own syscalls, ring drains
/// included, would feed back into what it reports), a kernel thread (no syscalls, files or
/// sockets of its own: every table would stay empty) and a zombie (it has exited). pid 1 and
/// other daemons are traced like any process.
fn unsuitable(pid: u32, status: &str) -> Result<(), Fatal> {
    let comm = read_comm(pid).unwrap_or_default();
    if pid == std::process::id() {
        return Err(Fatal::Unsuitable(format!(
            "pid {pid} is this lavtrace: it cannot trace itself"
        )));
    }
    // `Kthread:` is 6.x; before it, a kernel thread is a child of 0 or kthreadd with no
    // command line.
    let kthread = match status_field(status, "Kthread:") {
        Some(v) => v == "1",
        None => {
            matches!(status_field(status, "PPid:"), Some("0" | "2"))
                && fs::read(proc_path(pid, "cmdline")).is_ok_and(|c| c.is_empty())
        }
    };
    if kthread {
        return Err(Fatal::Unsuitable(format!(
            "pid {pid} ({}) is a kernel thread: it has no syscalls, files or sockets to trace",
            crate::printable::printable(&comm)
        )));
    }
    if let Some(state @ ("Z" | "X")) = status_field(status, "State:").and_then(|s| s.get(..1)) {
        return Err(Fatal::Unsuitable(format!(
            "pid {pid} ({}) is a zombie (state {state}): it has exited, its parent has not reaped it",
            crate::printable::printable(&comm)
        )));
    }
    Ok(())
}

/// `/proc/PID/exe` as the process sees it (`[exe unknown]` when it cannot be read), escaped:
/// the path is the process's own choice.
fn exe_of(pid: u32) -> String {
    fs::read_link(proc_path(pid, "exe")).map_or_else(
        |_| "[exe unknown]".to_string(),
        |p| crate::printable::printable(&p.to_string_lossy()).into_owned(),
    )
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(proc_path(pid, "status")).is_ok_and(|status| {
        matches!(
            status_field(&status, "State:").and_then(|s| s.get(..1)),
            Some("Z" | "X")
        )
    })
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(str::trim)
}

pub fn read_comm(pid: u32) -> Option<String> {
    fs::read_to_string(proc_path(pid, "comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

pub fn thread_count(pid: u32) -> usize {
    fs::read_dir(proc_path(pid, "task")).map_or(0, |d| d.count())
}

fn all_pids() -> Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")
        .context("reading /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// How the target ended, as far as lavtrace can know.
#[derive(Debug, Clone, Serialize)]
pub struct TargetExit {
    /// Exit code, known only when the target is lavtrace's own child (`demo`).
    pub code: Option<i32>,
    /// Terminating signal, likewise.
    pub signal: Option<i32>,
    /// When lavtrace saw it go (the start of a `--follow` gap).
    #[serde(skip)]
    pub seen_at: Option<std::time::Instant>,
}

/// Resolves when the target exits.
pub enum ExitWatch {
    /// Any process: a pidfd turns readable when it exits (status not knowable).
    Pidfd(AsyncFd<OwnedFd>),
}

impl ExitWatch {
    pub fn pidfd(pid: u32) -> Result<ExitWatch> {
        // SAFETY: pidfd_open has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Err(Fatal::Target(format!("process {pid} exited before attach")).into());
            }
            return Err(err).context("pidfd_open");
        }
        // SAFETY: the kernel just handed us this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the descriptor until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("watching the target's pidfd")?;
        Ok(ExitWatch::Pidfd(fd))
    }

    pub async fn wait(&mut self) -> TargetExit {
        let mut exit = self.wait_status().await;
        exit.seen_at = Some(std::time::Instant::now());
        exit
    }

    async fn wait_status(&mut self) -> TargetExit {
        match self {
            ExitWatch::Pidfd(fd) => {
                let _ = fd.readable().await;
                TargetExit {
                    code: None,
                    signal: None,
                    seen_at: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_by_pid_but_refuses_itself() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let t = Target::from_pid(child.id());
        let _ = (child.kill(), child.wait());
        let t = t.unwrap();
        assert_eq!(t.pid, child.id());
        assert!(t.threads >= 1);
        let err = Target::from_pid(std::process::id()).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Fatal>(),
            Some(Fatal::Unsuitable(_))
        ));
    }

    #[test]
    fn unknown_pid_is_a_target_error() {
        let err = Target::from_pid(u32::MAX - 1).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<Fatal>(),
            Some(Fatal::Target(_))
        ));
    }

    #[test]
    fn an_unreaped_process_is_not_found_by_name_and_refused_by_pid() {
        let dir = std::env::temp_dir().join(format!("lvt-zombie-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let name = format!("lvtz{}", std::process::id() % 1_000_000);
        let exe = dir.join(&name);
        fs::copy("/bin/true", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).spawn().unwrap();
        let pid = child.id();
        while !is_zombie(pid) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let by_name = Target::from_comm(&name);
        let by_pid = Target::from_pid(pid);
        let _ = child.wait();
        let _ = fs::remove_dir_all(&dir);
        let err = by_name.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Fatal>(), Some(Fatal::Target(_))),
            "{err}"
        );
        let err = by_pid.unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Fatal>(), Some(Fatal::Unsuitable(_))),
            "{err}"
        );
    }

    #[test]
    fn unknown_comm_is_a_target_error() {
        let err = Target::from_comm("no-such-process-name").unwrap_err();
        assert!(err.to_string().contains("no process named"));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{config, proc_text};

    proptest! {
        #![proptest_config(config(500))]

        /// Any /proc/PID/status text: fields found or not, never a panic, and lavtrace's own
        /// pid refused whatever the text says.
        #[test]
        fn any_status_text_is_read_or_refused(
            text in proc_text(),
            state in prop_oneof![Just("Z (zombie)"), Just("S (sleeping)"), Just(""), Just("é")],
        ) {
            let status = format!("{text}\nState:\t{state}\nTgid:\t{text}\nKthread:\t{text}\n");
            let _ = status_field(&status, "Tgid:").and_then(|v| v.parse::<u32>().ok());
            let _ = status_field(&text, "State:");
            prop_assert!(unsuitable(std::process::id(), &status).is_err());
        }
    }
}
