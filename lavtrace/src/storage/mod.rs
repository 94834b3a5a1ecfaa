//! Shared by the storage families (`fsync`, `mmap`): decoding their rings' records, attaching
//! the programs both need (once, whichever family comes first), and the model of the target's
//! descriptors and mappings that names the file of every call.

pub mod files;
pub mod hooks;
pub mod lavinmq;
pub mod maps;
pub mod naming;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::TracePoint};
use lavtrace_common::storage::{CallEvent, FdEvent, OpenEvent, kind};
use tracing::debug;

use crate::{
    error::Fatal,
    kernel::{Hook, tracefs},
    ringbuf::{Drain, decode},
};
use files::FdTable;
use maps::{ANONYMOUS, Mappings, Piece};
use naming::Namer;

/// Syscall numbers of this architecture, as the kernel reports them in each record.
pub mod nr {
    pub const FSYNC: u32 = libc::SYS_fsync as u32;
    pub const FDATASYNC: u32 = libc::SYS_fdatasync as u32;
    pub const SYNCFS: u32 = libc::SYS_syncfs as u32;
    pub const SYNC: u32 = libc::SYS_sync as u32;
    pub const SYNC_FILE_RANGE: u32 = libc::SYS_sync_file_range as u32;
    pub const MSYNC: u32 = libc::SYS_msync as u32;
    pub const MMAP: u32 = libc::SYS_mmap as u32;
    pub const MUNMAP: u32 = libc::SYS_munmap as u32;
    pub const MREMAP: u32 = libc::SYS_mremap as u32;
    pub const MADVISE: u32 = libc::SYS_madvise as u32;
    pub const BRK: u32 = libc::SYS_brk as u32;
}

/// One record of a storage ring.
#[derive(Debug, Clone, Copy)]
pub enum Record {
    Call(CallEvent),
    Open(OpenEvent),
    Close(FdEvent),
    Dup(FdEvent),
}

/// Decodes a record by its kind and exact size; None for anything else (counted as malformed).
pub fn decode_record(bytes: &[u8]) -> Option<Record> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        kind::CALL => decode::<CallEvent>(bytes).map(Record::Call),
        kind::OPEN => decode::<OpenEvent>(bytes).map(Record::Open),
        kind::CLOSE => decode::<FdEvent>(bytes).map(Record::Close),
        kind::DUP => decode::<FdEvent>(bytes).map(Record::Dup),
        _ => None,
    }
}

/// An error return (-4095..-1).
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

/// What a mapping call did to the address space.
#[derive(Debug)]
pub enum MapChange {
    Mapped { file: Arc<str> },
    Unmapped(Vec<Piece>),
    Remapped { file: Option<Arc<str>> },
}

/// The target's descriptors and mappings, kept in ring order.
pub struct Model {
    pub fds: FdTable,
    pub maps: Mappings,
    pub names: Namer,
}

impl Model {
    /// Seeded from /proc; call once the shared programs are attached, so that nothing
    /// between the seed and the first record is missed.
    pub fn seed(pid: u32) -> Model {
        Model {
            fds: FdTable::seed(pid),
            maps: Mappings::seed(pid),
            names: Namer::seed(pid),
        }
    }

    /// Applies fd bookkeeping; returns the record if it is a call (for the family to count).
    pub fn apply(&mut self, record: Record) -> Option<CallEvent> {
        match record {
            Record::Call(c) => Some(c),
            Record::Open(o) => {
                let len = o.path.iter().position(|&b| b == 0).unwrap_or(o.path.len());
                self.fds
                    .open(o.fd, o.dfd, &String::from_utf8_lossy(&o.path[..len]));
                if let Some(path) = self.fds.known(o.fd) {
                    self.names.opened(&path);
                }
                None
            }
            Record::Close(c) => {
                self.fds.close(c.fd);
                None
            }
            Record::Dup(d) => {
                self.fds.dup(d.fd, d.other);
                None
            }
        }
    }

    /// Updates the mappings for a successful mmap/munmap/mremap (None for other calls and
    /// for failures).
    pub fn map_change(&mut self, c: &CallEvent) -> Option<MapChange> {
        if is_error(c.ret) {
            return None;
        }
        let a = c.args;
        match c.nr {
            nr::MMAP => {
                let file = if a[3] & libc::MAP_ANONYMOUS as u64 != 0 {
                    Arc::from(ANONYMOUS)
                } else {
                    self.fds.path(a[4] as i32)
                };
                self.maps.insert(c.ret as u64, a[1], file.clone());
                Some(MapChange::Mapped { file })
            }
            nr::MUNMAP => Some(MapChange::Unmapped(self.maps.remove(a[0], a[1]))),
            nr::MREMAP => Some(MapChange::Remapped {
                file: self.maps.remap(a[0], a[1], c.ret as u64, a[2]),
            }),
            _ => None,
        }
    }
}

/// Locks a family's state; a panic elsewhere must not stop the reports.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tracepoints that some architectures lack (arm64 has no dup2).
const OPTIONAL: &[&str] = &["sys_enter_dup2", "sys_exit_dup2"];

/// Loads `program` and attaches it to each `syscalls:<tp>`; nothing if it is already loaded
/// (the other storage family attached it).
pub fn attach(
    ebpf: &mut Ebpf,
    family: &'static str,
    program: &'static str,
    tracepoints: &[&str],
) -> Result<Vec<Hook>> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a tracepoint program"))?;
    if prog.fd().is_ok() {
        return Ok(Vec::new());
    }
    prog.load()
        .with_context(|| format!("the kernel rejected program {program}"))?;
    let mut hooks = Vec::new();
    for tp in tracepoints {
        let exists = tracefs::tracefs_dir().is_some_and(|d| {
            std::path::Path::new(d)
                .join("events/syscalls")
                .join(tp)
                .is_dir()
        });
        if !exists && OPTIONAL.contains(tp) {
            debug!(program, "no tracepoint syscalls:{tp} here, skipped");
            continue;
        }
        prog.attach("syscalls", tp).map_err(|e| {
            anyhow::Error::new(Fatal::Unsupported(format!(
                "cannot attach {program} to tracepoint syscalls:{tp}: {e}"
            )))
        })?;
        hooks.push(Hook {
            family,
            program,
            via: format!("tracepoint syscalls:{tp}"),
        });
    }
    Ok(hooks)
}

/// How often a ring is drained without a wakeup: the kernel side wakes the reader only when
/// a quarter of the ring is waiting (`lavtrace-ebpf/src/storage.rs`), so this bounds how
/// late a lone record (a slow fsync for --slow) is seen.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Drains `ring` into `apply`, which gets every decoded record in ring order, on wakeups and
/// every `DRAIN_TICK`.
pub fn spawn<F>(ebpf: &mut Ebpf, ring: &str, mut apply: F) -> Result<Arc<Drain>>
where
    F: FnMut(Record) + Send + 'static,
{
    let drain =
        Arc::new(crate::ringbuf::spawn_drain_raw(
            ebpf,
            ring,
            move |bytes| match decode_record(bytes) {
                Some(r) => {
                    apply(r);
                    true
                }
                None => false,
            },
        )?);
    let weak = Arc::downgrade(&drain);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DRAIN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The family is gone (the session ended): stop.
            let Some(drain) = weak.upgrade() else { return };
            drain.flush().await;
        }
    });
    Ok(drain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_by_kind_and_size() {
        let call = CallEvent {
            kind: kind::CALL,
            nr: nr::SYNCFS,
            ret: -5,
            ..CallEvent::default()
        };
        // SAFETY: reading a Pod struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&call as *const CallEvent).cast::<u8>(),
                size_of::<CallEvent>(),
            )
        };
        assert!(matches!(decode_record(bytes), Some(Record::Call(c)) if c.nr == nr::SYNCFS));
        // Right kind, wrong size; unknown kind; too short for a kind.
        assert!(decode_record(&bytes[..bytes.len() - 8]).is_none());
        let mut bad = bytes.to_vec();
        bad[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert!(decode_record(&bad).is_none());
        assert!(decode_record(&[1, 0]).is_none());
        let close = FdEvent {
            kind: kind::CLOSE,
            tid: 1,
            fd: 7,
            other: 0,
        };
        // SAFETY: as above.
        let bytes =
            unsafe { std::slice::from_raw_parts((&close as *const FdEvent).cast::<u8>(), 16) };
        assert!(matches!(decode_record(bytes), Some(Record::Close(c)) if c.fd == 7));
    }

    #[test]
    fn errors_are_the_kernel_range() {
        assert!(is_error(-1) && is_error(-4095));
        assert!(!is_error(0) && !is_error(-4096) && !is_error(4096));
    }
}
