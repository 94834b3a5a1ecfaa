//! Records shared by the two storage families (`fsync`, `mmap`): both rings carry the timed
//! calls of their family and the fd bookkeeping (open/close/dup) that lets userspace name the
//! file of each call. The first `u32` of every record is its kind; userspace matches on it and
//! checks the record's exact size before reading it.

use crate::field::FieldSpec;

/// The record fields of the storage layer's programs, needed by both storage families. All
/// `syscalls:sys_enter_*` records share one layout (the kernel's `struct syscall_trace_enter`:
/// `__syscall_nr`, then 8-byte argument slots) and all `sys_exit_*` records another
/// (`syscall_trace_exit`), so representative events stand for the rest: openat and close,
/// attached by both families, and mmap, the one with six arguments.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec::new(
        "STORAGE_NR_OFFSET",
        "syscalls",
        "sys_enter_openat",
        "__syscall_nr",
        4,
    ),
    FieldSpec::new(
        "STORAGE_NR_OFFSET",
        "syscalls",
        "sys_exit_openat",
        "__syscall_nr",
        4,
    ),
    FieldSpec::new(
        "STORAGE_NR_OFFSET",
        "syscalls",
        "sys_enter_close",
        "__syscall_nr",
        4,
    ),
    FieldSpec::new(
        "STORAGE_ARGS_OFFSET",
        "syscalls",
        "sys_enter_openat",
        "dfd",
        8,
    ),
    FieldSpec::new(
        "STORAGE_ARGS_OFFSET",
        "syscalls",
        "sys_enter_close",
        "fd",
        8,
    ),
    FieldSpec::new(
        "STORAGE_ARGS_OFFSET",
        "syscalls",
        "sys_enter_mmap",
        "addr",
        8,
    ),
    FieldSpec::new(
        "STORAGE_RET_OFFSET",
        "syscalls",
        "sys_exit_openat",
        "ret",
        8,
    ),
    FieldSpec::new("STORAGE_RET_OFFSET", "syscalls", "sys_exit_close", "ret", 8),
];

/// Record kinds (the first field of every record).
pub mod kind {
    /// A completed, timed syscall: [`super::CallEvent`].
    pub const CALL: u32 = 1;
    /// A successful openat: [`super::OpenEvent`] (the path as the target passed it).
    pub const OPEN: u32 = 2;
    /// A close (seen at entry): [`super::FdEvent`].
    pub const CLOSE: u32 = 3;
    /// dup/dup2/dup3/fcntl(F_DUPFD*): [`super::FdEvent`], `fd` the new fd, `other` the old one.
    pub const DUP: u32 = 4;
}

/// Bytes of path kept from an openat (with its NUL); LavinMQ's longest are ~120.
pub const PATH_LEN: usize = 256;
/// Syscall arguments kept per call (mmap has six).
pub const MAX_ARGS: usize = 6;
/// Threads of the target that can be inside a traced storage call at once.
pub const MAX_THREADS: u32 = 16_384;

/// Indexes of the `STORAGE_SINKS` array: non-zero when that family's ring wants the records
/// that both families need (fd bookkeeping, mmap/munmap/mremap for msync attribution).
pub mod sink {
    pub const FSYNC: u32 = 0;
    pub const MMAP: u32 = 1;
    pub const LEN: u32 = 2;
}

/// The libc functions the uprobe set hooks, as the const generic of their entry programs.
/// A uprobe sees no syscall number, so userspace writes this architecture's numbers of the
/// first [`ufn::CALLS`] into the read-only global [`FN_NRS`] at load.
pub mod ufn {
    pub const FSYNC: usize = 0;
    pub const FDATASYNC: usize = 1;
    pub const SYNCFS: usize = 2;
    pub const SYNC: usize = 3;
    pub const SYNC_FILE_RANGE: usize = 4;
    pub const MSYNC: usize = 5;
    pub const MADVISE: usize = 6;
    pub const BRK: usize = 7;
    pub const MMAP: usize = 8;
    pub const MUNMAP: usize = 9;
    pub const MREMAP: usize = 10;
    /// The calls reported as [`super::CallEvent`]s (they have a syscall number).
    pub const CALLS: usize = 11;
    /// open, openat, dup, dup2, dup3, fcntl: fd bookkeeping, no number needed.
    pub const FD: usize = 11;
}

/// Symbol of the read-only `[u32; ufn::CALLS]` global: the syscall number of each [`ufn`].
pub const FN_NRS: &str = "STORAGE_FN_NRS";

/// Symbol of the read-only `[u32; 6]` global: the byte offsets in `struct pt_regs` of the six
/// syscall argument registers, which the kprobe set reads from the `struct pt_regs *` the
/// syscall functions take.
pub const SYSCALL_ARG_OFFSETS: &str = "STORAGE_SYSCALL_ARG_OFFSETS";

/// The `ret` of a failed call seen by a uretprobe on libc: libc returned -1 (or MAP_FAILED)
/// and left the errno in the thread's `errno`, which the uretprobe does not read. It is in
/// the kernel's error range (it counts as an error) and names no errno (4095 is none).
pub const ERRNO_UNSEEN: i64 = -4095;

/// One completed syscall, sent at its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallEvent {
    /// `kind::CALL`.
    pub kind: u32,
    /// Syscall number (this architecture's).
    pub nr: u32,
    pub tid: u32,
    /// 1 + the half of the interval cut (`cut::half`) in which the kernel counted this call
    /// into the syscall table, for the calls the fsync family counts there; 0 for the others.
    /// Userspace places the record by it, so the two tables agree even when the cut was
    /// written late (a slow guest).
    pub interval_half: u32,
    /// Entry time, CLOCK_MONOTONIC ns (bpf_ktime_get_ns).
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Return value; -4095..-1 is an errno.
    pub ret: i64,
    /// The syscall's arguments in order; unused ones are 0.
    pub args: [u64; MAX_ARGS],
}

/// A successful openat, sent at its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenEvent {
    /// `kind::OPEN`.
    pub kind: u32,
    pub tid: u32,
    /// The new fd.
    pub fd: i32,
    /// The directory fd the path is relative to (AT_FDCWD = -100).
    pub dfd: i32,
    /// NUL-terminated (all zero when the kernel could not read it).
    pub path: [u8; PATH_LEN],
}

/// close or dup of a descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdEvent {
    /// `kind::CLOSE` or `kind::DUP`.
    pub kind: u32,
    pub tid: u32,
    /// The closed fd, or the new fd of a dup.
    pub fd: i32,
    /// The old fd of a dup (0 for close).
    pub other: i32,
}

/// A thread's call in progress: saved at entry, consumed at exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// 0 once consumed, so an exit never pairs with a stale entry.
    pub start_ns: u64,
    pub nr: u32,
    /// 0 for an entry seen by a syscall tracepoint; 1 + its [`ufn`] index for one seen by a
    /// uprobe on libc (the uretprobe needs it to read the return value at its width).
    pub libc_fn: u32,
    pub args: [u64; MAX_ARGS],
}

impl Default for OpenEvent {
    fn default() -> Self {
        OpenEvent {
            kind: kind::OPEN,
            tid: 0,
            fd: 0,
            dfd: 0,
            path: [0; PATH_LEN],
        }
    }
}

crate::pod!(CallEvent, OpenEvent, FdEvent, Entry);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(size_of::<CallEvent>(), 16 + 24 + 8 * MAX_ARGS);
        assert_eq!(size_of::<OpenEvent>(), 16 + PATH_LEN);
        assert_eq!(size_of::<FdEvent>(), 16);
        assert_eq!(size_of::<Entry>(), 16 + 8 * MAX_ARGS);
    }

    #[test]
    fn record_sizes_differ_so_kind_and_size_agree() {
        let sizes = [
            size_of::<CallEvent>(),
            size_of::<OpenEvent>(),
            size_of::<FdEvent>(),
        ];
        assert!(sizes[0] != sizes[1] && sizes[1] != sizes[2] && sizes[0] != sizes[2]);
    }
}
