//! The server-state dump: LavinMQ prints its GC stats and fiber list on stdout when it gets
//! SIGUSR1. lavtrace copies what the target writes to its own fd 1 and 2 while it answers, in
//! the kernel (`lavtrace-ebpf/src/dump.rs`), so the dump is caught whether stdout is journald,
//! a file or a pipe. Nothing else is copied: no other fd, and nothing outside the window.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, RingBuf};
use lavtrace_common::dump::{COUNTERS, DumpChunk, RING, counter};

use crate::kernel::{self, Overrides};

/// How long to wait for the first byte after the signal.
const FIRST_BYTE: Duration = Duration::from_secs(2);
/// The dump is over once the target has been quiet this long after writing.
const QUIET: Duration = Duration::from_millis(300);
/// The whole window, however chatty the target is.
const WINDOW: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// SIGUSR1's disposition in the target, from /proc/PID/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Caught,
    Ignored,
    /// The default action terminates the process: never send it.
    Default,
    Unknown,
}

impl Disposition {
    pub fn of(pid: u32) -> Disposition {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .map_or(Disposition::Unknown, |s| Disposition::parse(&s))
    }

    fn parse(status: &str) -> Disposition {
        let mask = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        let bit = 1u64 << (libc::SIGUSR1 - 1);
        match (mask("SigCgt:"), mask("SigIgn:")) {
            (Some(c), _) if c & bit != 0 => Disposition::Caught,
            (_, Some(i)) if i & bit != 0 => Disposition::Ignored,
            (Some(_), Some(_)) => Disposition::Default,
            _ => Disposition::Unknown,
        }
    }
}

/// What the window caught.
#[derive(Debug, Default)]
pub struct Capture {
    /// The text written to fd 1 and 2, in order.
    pub text: String,
    /// Why there is no dump, or how it was cut: for report.md.
    pub notes: Vec<String>,
    pub copied: u64,
    pub cut: u64,
    pub lost: u64,
    /// Writes dropped because they held bytes that are not text.
    pub binary_writes: u64,
    /// Ring records too short to hold a chunk's header: skipped.
    pub malformed: u64,
}

/// Sends SIGUSR1 to `pid` if it catches it, and collects its fd 1/2 writes until quiet.
pub fn capture(pid: u32) -> Capture {
    let mut cap = Capture::default();
    match Disposition::of(pid) {
        Disposition::Caught => {}
        Disposition::Ignored => {
            cap.notes.push(format!(
                "process {pid} ignores SIGUSR1: no server-state dump"
            ));
            return cap;
        }
        Disposition::Default => {
            cap.notes.push(format!(
                "process {pid} does not handle SIGUSR1 (its default action would terminate it): \
                 not sent, no server-state dump"
            ));
            return cap;
        }
        Disposition::Unknown => {
            cap.notes.push(format!(
                "SIGUSR1's disposition in process {pid} is unknown (/proc/{pid}/status): not sent"
            ));
            return cap;
        }
    }
    if let Err(e) = window(pid, &mut cap) {
        cap.notes.push(format!("server-state dump failed: {e:#}"));
    }
    cap
}

/// fd 1 or 2 of `pid` that is a TCP socket: what is written there may be a client's data.
fn tcp_stdio(pid: u32) -> Option<u32> {
    let tcp: std::collections::HashSet<u64> = crate::tcp::procfs::target_sockets(pid)
        .into_iter()
        .map(|s| s.inode)
        .collect();
    [1, 2].into_iter().find(|fd| {
        fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .and_then(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| tcp.contains(&inode))
    })
}

fn window(pid: u32, cap: &mut Capture) -> Result<()> {
    if let Some(fd) = tcp_stdio(pid) {
        anyhow::bail!(
            "fd {fd} of process {pid} is a TCP socket, so what it writes there may be a client's \
             data: not captured, SIGUSR1 not sent"
        );
    }
    kernel::preflight()?;
    let mut overrides = Overrides::default();
    overrides
        .global_u32(lavtrace_common::filter::TARGET_TGID, pid)
        .fields("dump", lavtrace_common::dump::FIELDS);
    let mut bpf = kernel::load(&overrides)?;
    for (program, name) in [
        ("dump_write", "sys_enter_write"),
        ("dump_writev", "sys_enter_writev"),
    ] {
        kernel::attach_tracepoint(&mut bpf, "dump", program, "syscalls", name)?;
    }
    let mut ring = RingBuf::try_from(bpf.take_map(RING).context("dump ring missing")?)
        .context("the dump ring is not a ring buffer")?;
    // SAFETY: kill(2) with a pid and a signal the target catches (checked above).
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
        anyhow::bail!("kill -USR1 {pid}: {}", std::io::Error::last_os_error());
    }
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    let mut bytes = Vec::new();
    loop {
        let mut got = false;
        while let Some(item) = ring.next() {
            got = true;
            take_chunk(&item, &mut bytes, cap);
        }
        let now = Instant::now();
        if got {
            last = Some(now);
        }
        let done = match last {
            Some(t) => now - t >= QUIET,
            None => now - start >= FIRST_BYTE,
        };
        if done || now - start >= WINDOW {
            break;
        }
        std::thread::sleep(POLL);
    }
    if last.is_none() {
        cap.notes.push(format!(
            "process {pid} caught SIGUSR1 but wrote nothing to stdout or stderr within {FIRST_BYTE:?}"
        ));
    }
    let counters: Array<_, u64> = Array::try_from(bpf.map(COUNTERS).context("dump counters")?)?;
    cap.copied = counters.get(&counter::COPIED, 0).unwrap_or(0);
    cap.cut = counters.get(&counter::CUT, 0).unwrap_or(0);
    cap.lost = counters.get(&counter::LOST, 0).unwrap_or(0);
    if cap.cut > 0 || cap.lost > 0 {
        cap.notes.push(format!(
            "dump cut: {} bytes not copied (caps per write and in total), {} writes lost",
            cap.cut, cap.lost
        ));
    }
    if cap.malformed > 0 {
        cap.notes.push(format!(
            "{} records of the dump ring were malformed and skipped",
            cap.malformed
        ));
    }
    if cap.binary_writes > 0 {
        cap.notes.push(format!(
            "{} writes held bytes that are not text and were left out",
            cap.binary_writes
        ));
    }
    cap.text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(())
}

fn take_chunk(item: &[u8], out: &mut Vec<u8>, cap: &mut Capture) {
    let Some(head) = item.get(..8) else {
        cap.malformed += 1;
        return;
    };
    let len = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let Some(data) = item
        .get(8..)
        .and_then(|d| d.get(..len.min(std::mem::size_of::<DumpChunk>() - 8)))
    else {
        cap.malformed += 1;
        return;
    };
    if is_text(data) {
        out.extend_from_slice(data);
    } else {
        cap.binary_writes += 1;
    }
}

/// Printable ASCII, tab, newline, carriage return: a dump or a log line, never a payload.
pub fn is_text(data: &[u8]) -> bool {
    data.iter()
        .all(|&b| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_come_from_the_masks() {
        let s = |cgt: &str, ign: &str| format!("Name:\tx\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n");
        assert_eq!(
            Disposition::parse(&s("0000000000000200", "0")),
            Disposition::Caught
        );
        assert_eq!(
            Disposition::parse(&s("0", "0000000000000200")),
            Disposition::Ignored
        );
        assert_eq!(
            Disposition::parse(&s("0000000000000100", "0000000000000400")),
            Disposition::Default
        );
        assert_eq!(Disposition::parse("garbage"), Disposition::Unknown);
        assert_eq!(
            Disposition::of(std::process::id()),
            Disposition::parse(&fs::read_to_string("/proc/self/status").unwrap())
        );
    }

    #[test]
    fn only_text_is_kept() {
        assert!(is_text(b"GC\n  heap size: 2.95MiB\n"));
        assert!(!is_text(b"\x00\x01binary"));
        assert!(!is_text("caf\u{e9}".as_bytes()));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{config, garbage, proc_text};

    proptest! {
        #![proptest_config(config(400))]

        /// Any dump record: text kept, binary counted, a record shorter than its header or
        /// than the length it claims counted as malformed; the kept text is only text.
        #[test]
        fn dump_records_are_kept_or_counted(
            records in prop::collection::vec(garbage(std::mem::size_of::<DumpChunk>() + 16), 0..8),
        ) {
            let mut cap = Capture::default();
            let mut out = Vec::new();
            for r in &records {
                take_chunk(r, &mut out, &mut cap);
            }
            let kept = records.len() as u64 - cap.malformed - cap.binary_writes;
            prop_assert!(kept <= records.len() as u64);
            prop_assert!(is_text(&out));
        }

        #[test]
        fn status_masks_never_panic(status in proc_text()) {
            let _ = Disposition::parse(&status);
        }
    }
}
