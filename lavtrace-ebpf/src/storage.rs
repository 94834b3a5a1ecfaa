//! The shared layer of the storage families (`fsync`, `mmap`): the per-thread table of calls
//! in progress, the programs both families need (fd bookkeeping, mmap/munmap/mremap), both
//! families' rings and the choice of ring(s) each record goes to. The rings are declared here
//! because this is the code that fills them: `fsync.rs` and `mmap.rs` only call in, so imports
//! go one way (family → storage → filter/ring). The one exception: the fsync family's exit
//! counts its call into the syscalls family's table (`syscalls::account`, and `cut`).
//!
//! Naming: what belongs to this layer carries the `storage_`/`STORAGE_` prefix; each ring
//! keeps the name of the family that reads it (`FSYNC_EVENTS`, `MMAP_EVENTS`).
//!
//! Two hook sets feed the same records (userspace picks one, `lavtrace/src/storage/hooks.rs`):
//!
//! - `syscalls:sys_{enter,exit}_<name>` tracepoints (the `*_enter*`/`*_exit` programs). Their
//!   callbacks run only for that syscall, but attaching ANY `syscalls:*` (or raw_syscalls)
//!   tracepoint sets TIF_SYSCALL_TRACEPOINT on every thread of the host: every syscall of
//!   every process then takes the kernel's slow syscall path (measured +120 ns per syscall of
//!   an untraced `dd bs=1` with `--probes fsync,mmap`, issue 12). Cheap for the target
//!   (~0.2 µs a call), not free for anyone else.
//! - uprobes/uretprobes on the target's libc functions (the `*_u*` programs), attached with
//!   the target's pid: only its memory gets the breakpoints, other processes pay nothing, and
//!   the target pays a trap per call (~6 µs), fine for these rare calls. A uprobe sees no
//!   syscall number: each function has its own small entry program with its `ufn` index as a
//!   const generic, and one uretprobe program per owner takes it back from the thread's entry.
//! - kprobes/kretprobes on the syscall functions (`__x64_sys_fsync`, ...; the `*_k*` programs):
//!   every call of the target whatever made it, nothing for other processes or other
//!   syscalls. The functions take the caller's `struct pt_regs *`, read at the offsets
//!   userspace sets (`STORAGE_SYSCALL_ARG_OFFSETS`).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user_str_bytes},
    macros::{kprobe, kretprobe, map, tracepoint, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use lavtrace_common::{
    ring::lost,
    storage::{
        CallEvent, ERRNO_UNSEEN, Entry, FdEvent, MAX_ARGS, MAX_THREADS, OpenEvent, kind, sink, ufn,
    },
};

use crate::{cut, field, filter::current_target_task, ring, syscalls};

/// The fsync family's ring. Sized at load time by userspace
/// (`lavtrace_common::fsync::RING_BYTES` or `--ring-bytes`).
#[map]
static FSYNC_EVENTS: RingBuf = RingBuf::with_byte_size(lavtrace_common::fsync::RING_BYTES, 0);

/// The mmap family's ring. Sized at load time by userspace
/// (`lavtrace_common::mmap::RING_BYTES` or `--ring-bytes`).
#[map]
static MMAP_EVENTS: RingBuf = RingBuf::with_byte_size(lavtrace_common::mmap::RING_BYTES, 0);

/// tid → the call it is in. LRU: threads that exit leave an entry behind, which is evicted
/// instead of ever filling the table.
#[map]
static STORAGE_CALL_START: LruHashMap<u32, Entry> = LruHashMap::with_max_entries(MAX_THREADS, 0);

/// Which rings want the shared records (see `lavtrace_common::storage::sink`); written by
/// userspace when a family attaches.
#[map]
static STORAGE_SINKS: Array<u32> = Array::with_max_entries(sink::LEN, 0);

/// Room for one OpenEvent (272 B, too big for the 512 B stack next to everything else).
#[map]
static STORAGE_OPEN_SCRATCH: PerCpuArray<OpenEvent> = PerCpuArray::with_max_entries(1, 0);

// Every `syscalls:sys_enter_*` record is the kernel's `struct syscall_trace_enter` (`int
// __syscall_nr`, then each argument as an 8-byte slot), every `sys_exit_*` record its `struct
// syscall_trace_exit` (`__syscall_nr`, `long ret`): one layout for all of them, checked at load
// on representative events (`lavtrace_common::storage::FIELDS`).
field::offsets!(
    /// `int __syscall_nr` of the enter and exit records.
    STORAGE_NR_OFFSET,
    /// The first argument slot of an enter record.
    STORAGE_ARGS_OFFSET,
    /// `long ret` of an exit record.
    STORAGE_RET_OFFSET,
);

/// This architecture's syscall number of each `ufn` (`lavtrace_common::storage::FN_NRS`),
/// set at load by userspace: the eBPF target knows no host architecture.
#[unsafe(no_mangle)]
static STORAGE_FN_NRS: [u32; ufn::CALLS] = [0; ufn::CALLS];

/// Byte offsets in the architecture's `struct pt_regs` of the six syscall argument registers
/// (`lavtrace_common::storage::SYSCALL_ARG_OFFSETS`), set at load by userspace, which knows
/// the architecture.
#[unsafe(no_mangle)]
static STORAGE_SYSCALL_ARG_OFFSETS: [u32; 6] = [0; 6];

/// `AT_FDCWD`: what open(2) is relative to, recorded as openat's dfd.
const AT_FDCWD: u64 = -100i64 as u64;

/// asm-generic fcntl commands that duplicate a descriptor (the same on every architecture).
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

/// Who pays when a record cannot be kept.
#[derive(Clone, Copy)]
pub enum Owner {
    Fsync,
    Mmap,
    /// Whichever families want the shared records.
    Shared,
}

#[inline(always)]
fn sink_on(index: u32) -> bool {
    STORAGE_SINKS.get(index).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn count_lost(owner: Owner) {
    match owner {
        Owner::Fsync => ring::count_lost(lost::FSYNC),
        Owner::Mmap => ring::count_lost(lost::MMAP),
        Owner::Shared => {
            if sink_on(sink::FSYNC) {
                ring::count_lost(lost::FSYNC);
            }
            if sink_on(sink::MMAP) {
                ring::count_lost(lost::MMAP);
            }
        }
    }
}

/// Sends `event` to the ring(s) of `owner`, counting each ring that had no room.
#[inline(always)]
fn send<T>(owner: Owner, event: &T) {
    match owner {
        Owner::Fsync => output(&FSYNC_EVENTS, lost::FSYNC, event),
        Owner::Mmap => output(&MMAP_EVENTS, lost::MMAP, event),
        Owner::Shared => {
            if sink_on(sink::FSYNC) {
                output(&FSYNC_EVENTS, lost::FSYNC, event);
            }
            if sink_on(sink::MMAP) {
                output(&MMAP_EVENTS, lost::MMAP, event);
            }
        }
    }
}

/// Like `ring::send`, waking the reader only once a quarter of the ring is waiting: a wakeup
/// per record (an irq_work, then a context switch in the reader) costs more than the record.
/// Userspace also drains each ring every few tens of ms on its own, so a quiet ring is still
/// read promptly.
#[inline(always)]
fn output<T>(ring: &RingBuf, family: u32, event: &T) {
    let waiting = ring.query(BPF_RB_AVAIL_DATA.into());
    let size = ring.query(BPF_RB_RING_SIZE.into());
    let flags = if waiting.saturating_mul(4) >= size {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if ring.output::<T>(event, flags.into()).is_err() {
        ring::count_lost(family);
    }
}

/// Entry half of a timed call: saves the time and the first `N` arguments for this thread.
/// `N` bounds the record bytes read, so the program attaches only to tracepoints that have
/// at least `N` arguments (the kernel checks this at attach).
#[inline(always)]
pub fn enter<const N: usize>(ctx: &TracePointContext, owner: Owner) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    let nr = field::read::<i32>(ctx, &STORAGE_NR_OFFSET) as u32;
    save(tid, nr, 0, tp_args::<N>(ctx), owner);
}

/// The first `N` arguments of a `syscalls:sys_enter_*` record (the amqp family's tracepoints
/// read them too).
#[inline(always)]
pub(crate) fn tp_args<const N: usize>(ctx: &TracePointContext) -> [u64; MAX_ARGS] {
    let mut args = [0u64; MAX_ARGS];
    field::read_u64s::<N>(ctx, &STORAGE_ARGS_OFFSET, &mut args);
    args
}

/// `ret` of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub(crate) fn tp_ret(ctx: &TracePointContext) -> i64 {
    field::read(ctx, &STORAGE_RET_OFFSET)
}

#[inline(always)]
fn save(tid: u32, nr: u32, libc_fn: u32, args: [u64; MAX_ARGS], owner: Owner) {
    let entry = Entry {
        // SAFETY: helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        nr,
        libc_fn,
        args,
    };
    if STORAGE_CALL_START.insert(tid, entry, 0).is_err() {
        count_lost(owner);
    }
}

/// Exit half: the thread's saved call if it matches this exit, with its return value and
/// duration. `None` for calls entered before attach.
#[inline(always)]
pub fn finish(ctx: &TracePointContext) -> Option<CallEvent> {
    let (_, tid) = current_target_task()?;
    let slot = STORAGE_CALL_START.get_ptr_mut(tid)?;
    // SAFETY: map value slot, valid for this program run; only this thread uses its key.
    let entry = unsafe { *slot };
    if entry.start_ns == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).start_ns = 0 };
    let nr = field::read::<i32>(ctx, &STORAGE_NR_OFFSET) as u32;
    let ret = tp_ret(ctx);
    if nr != entry.nr {
        return None; // an entry whose exit we never saw (attached mid-call)
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    Some(CallEvent {
        kind: kind::CALL,
        nr,
        tid,
        interval_half: 0,
        start_ns: entry.start_ns,
        duration_ns: now.saturating_sub(entry.start_ns),
        ret,
        args: entry.args,
    })
}

/// Exit of a call reported by `owner`.
#[inline(always)]
pub fn exit(ctx: &TracePointContext, owner: Owner) {
    if let Some(mut event) = finish(ctx) {
        if let Owner::Fsync = owner {
            // The syscall table's count of this call, placed by one read of the cut; the
            // record carries that placement and userspace follows it: the two tables cannot
            // disagree on its interval, even when the cut was written late.
            let returned = event.start_ns + event.duration_ns;
            let half = cut::half(returned);
            syscalls::account(event.tid, event.nr, half, event.duration_ns, event.ret);
            event.interval_half = half + 1;
        }
        send(owner, &event);
    }
}

// mmap, munmap and mremap: the mmap family reports them; the fsync family needs them too, to
// know which file an msync address belongs to.

#[tracepoint]
pub fn storage_map_enter2(ctx: TracePointContext) -> u32 {
    enter::<2>(&ctx, Owner::Shared);
    0
}

#[tracepoint]
pub fn storage_map_enter5(ctx: TracePointContext) -> u32 {
    enter::<5>(&ctx, Owner::Shared);
    0
}

#[tracepoint]
pub fn storage_map_enter6(ctx: TracePointContext) -> u32 {
    enter::<6>(&ctx, Owner::Shared);
    0
}

#[tracepoint]
pub fn storage_map_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx, Owner::Shared);
    0
}

// fd bookkeeping: the path of each descriptor as the target opened it, in the same ring and
// order as the calls that use it, so a call is named after the file it really hit even when
// the fd was closed or reused since.

/// dup, dup2, dup3: the old fd.
#[tracepoint]
pub fn storage_fd_enter1(ctx: TracePointContext) -> u32 {
    enter::<1>(&ctx, Owner::Shared);
    0
}

/// openat: dfd, filename.
#[tracepoint]
pub fn storage_fd_enter2(ctx: TracePointContext) -> u32 {
    enter::<2>(&ctx, Owner::Shared);
    0
}

#[tracepoint]
pub fn storage_fd_open_exit(ctx: TracePointContext) -> u32 {
    if let Some(call) = finish(&ctx) {
        opened(&call);
    }
    0
}

/// A successful open: its path, read from the target's memory, to the rings.
#[inline(always)]
fn opened(call: &CallEvent) {
    if call.ret < 0 {
        return;
    }
    let Some(event) = STORAGE_OPEN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, used only during this program run.
    let event = unsafe { &mut *event };
    event.kind = kind::OPEN;
    event.tid = call.tid;
    event.fd = call.ret as i32;
    event.dfd = call.args[0] as i32;
    // SAFETY: the helper reads user memory safely (a fault returns an error); the target's
    // filename pointer was valid at entry and openat does not free it.
    if unsafe { bpf_probe_read_user_str_bytes(call.args[1] as *const u8, &mut event.path) }.is_err()
    {
        event.path[0] = 0; // userspace falls back to /proc/PID/fd
    }
    send(Owner::Shared, event);
}

/// fcntl: only the duplicating commands are remembered.
#[tracepoint]
pub fn storage_fd_fcntl(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let args = tp_args::<2>(&ctx);
    if args[1] == F_DUPFD || args[1] == F_DUPFD_CLOEXEC {
        let nr = field::read::<i32>(&ctx, &STORAGE_NR_OFFSET) as u32;
        save(tid, nr, 0, args, Owner::Shared);
    }
    0
}

#[tracepoint]
pub fn storage_fd_dup_exit(ctx: TracePointContext) -> u32 {
    if let Some(call) = finish(&ctx) {
        duplicated(&call);
    }
    0
}

#[inline(always)]
fn duplicated(call: &CallEvent) {
    if call.ret < 0 {
        return;
    }
    let event = FdEvent {
        kind: kind::DUP,
        tid: call.tid,
        fd: call.ret as i32,
        other: call.args[0] as i32,
    };
    send(Owner::Shared, &event);
}

/// close, at entry: the descriptor is gone once it returns (even on EINTR), and a failed
/// close (EBADF) names an fd that was not open anyway.
#[tracepoint]
pub fn storage_fd_close(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    closed(tid, tp_args::<1>(&ctx)[0]);
    0
}

#[inline(always)]
fn closed(tid: u32, fd: u64) {
    let event = FdEvent {
        kind: kind::CLOSE,
        tid,
        fd: fd as i32,
        other: 0,
    };
    send(Owner::Shared, &event);
}

// The uprobe set: the same records from the target's libc functions.

/// Entry of libc function `F` (a `ufn` index) taking `N` arguments (the user call's argument
/// registers, which `ProbeContext::arg` reads from the trapped registers).
#[inline(always)]
pub fn uenter<const F: usize, const N: usize>(ctx: &ProbeContext, owner: Owner) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    save(tid, fn_nr::<F>(), F as u32 + 1, uargs::<N>(ctx), owner);
}

#[inline(always)]
fn uargs<const N: usize>(ctx: &ProbeContext) -> [u64; MAX_ARGS] {
    let mut args = [0u64; MAX_ARGS];
    let mut i = 0;
    while i < N && i < MAX_ARGS {
        args[i] = ctx.arg::<u64>(i).unwrap_or(0);
        i += 1;
    }
    args
}

/// Return of a libc function whose entry a uprobe saved, with its return value in the
/// kernel's convention: libc's -1 / MAP_FAILED becomes `ERRNO_UNSEEN`. Functions returning
/// `int` are read as 32 bits: the upper half of rax is not part of an `int` return.
#[inline(always)]
fn ufinish(ctx: &RetProbeContext) -> Option<CallEvent> {
    let (_, tid) = current_target_task()?;
    let slot = STORAGE_CALL_START.get_ptr_mut(tid)?;
    // SAFETY: map value slot, valid for this program run; only this thread uses its key.
    let entry = unsafe { *slot };
    if entry.start_ns == 0 || entry.libc_fn == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).start_ns = 0 };
    let f = entry.libc_fn as usize - 1;
    let mut ret: i64 = match f {
        ufn::MMAP | ufn::MREMAP => ctx.ret::<i64>(),
        ufn::SYNC => 0, // void
        _ => i64::from(ctx.ret::<i32>()),
    };
    if ret == -1 {
        ret = ERRNO_UNSEEN;
    } else if f == ufn::BRK && ret == 0 {
        // glibc's brk returns 0 where the kernel returns the new break, which is then the
        // requested one (brk(0), a query, stays 0: userspace knows it sets no break).
        ret = entry.args[0] as i64;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    Some(CallEvent {
        kind: kind::CALL,
        nr: entry.nr,
        tid,
        interval_half: 0,
        start_ns: entry.start_ns,
        duration_ns: now.saturating_sub(entry.start_ns),
        ret,
        args: entry.args,
    })
}

/// Return of a call reported by `owner`. Not counted into the syscall table: the uprobe set is
/// used only when the syscalls family is not (or when forced, and then the syscalls family
/// counts the call itself: `SYSCALLS_COUNTED_ELSEWHERE` is left empty).
#[inline(always)]
pub fn uexit(ctx: &RetProbeContext, owner: Owner) {
    if let Some(event) = ufinish(ctx) {
        send(owner, &event);
    }
}

#[inline(always)]
fn fn_nr<const F: usize>() -> u32 {
    if F < ufn::CALLS {
        // SAFETY: a plain read of a global; volatile so the build-time zeros are not folded.
        unsafe { core::ptr::read_volatile(&STORAGE_FN_NRS[F]) }
    } else {
        u32::MAX
    }
}

/// Entry of syscall function `F` (a `ufn` index) taking `N` arguments, at a kprobe on its
/// `__<arch>_sys_<name>` wrapper: its one argument is the caller's `struct pt_regs *`.
/// Saved as a tracepoint's entry is (kernel return convention, no libc function).
#[inline(always)]
pub fn kenter<const F: usize, const N: usize>(ctx: &ProbeContext, owner: Owner) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    save(tid, fn_nr::<F>(), 0, kargs::<N>(ctx), owner);
}

#[inline(always)]
pub(crate) fn kargs<const N: usize>(ctx: &ProbeContext) -> [u64; MAX_ARGS] {
    let regs = ctx.arg::<u64>(0).unwrap_or(0);
    let mut args = [0u64; MAX_ARGS];
    let mut i = 0;
    while i < N && i < MAX_ARGS {
        // SAFETY: a plain read of a global; volatile so the build-time zeros are not folded.
        let at = unsafe { core::ptr::read_volatile(&STORAGE_SYSCALL_ARG_OFFSETS[i]) };
        let src = regs.wrapping_add(u64::from(at)) as *const u64;
        // SAFETY: the helper copes with any address (a bad one only fails); this one is a
        // register slot of the kernel's saved user registers.
        args[i] = unsafe { bpf_probe_read_kernel(src) }.unwrap_or(0);
        i += 1;
    }
    args
}

/// Return of a syscall function whose entry a kprobe saved: its return value is the
/// syscall's, in the kernel's convention.
#[inline(always)]
fn kfinish(ctx: &RetProbeContext) -> Option<CallEvent> {
    let (_, tid) = current_target_task()?;
    let slot = STORAGE_CALL_START.get_ptr_mut(tid)?;
    // SAFETY: map value slot, valid for this program run; only this thread uses its key.
    let entry = unsafe { *slot };
    if entry.start_ns == 0 || entry.libc_fn != 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).start_ns = 0 };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    Some(CallEvent {
        kind: kind::CALL,
        nr: entry.nr,
        tid,
        interval_half: 0,
        start_ns: entry.start_ns,
        duration_ns: now.saturating_sub(entry.start_ns),
        ret: ctx.ret::<i64>(),
        args: entry.args,
    })
}

/// Return of a syscall reported by `owner` (not counted into the syscall table, as `uexit`).
#[inline(always)]
pub fn kexit(ctx: &RetProbeContext, owner: Owner) {
    if let Some(event) = kfinish(ctx) {
        send(owner, &event);
    }
}

#[kprobe]
pub fn storage_map_kenter_mmap(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::MMAP }, 6>(&ctx, Owner::Shared);
    0
}

#[kprobe]
pub fn storage_map_kenter_munmap(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::MUNMAP }, 2>(&ctx, Owner::Shared);
    0
}

#[kprobe]
pub fn storage_map_kenter_mremap(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::MREMAP }, 5>(&ctx, Owner::Shared);
    0
}

#[kretprobe]
pub fn storage_map_kexit(ctx: RetProbeContext) -> u32 {
    kexit(&ctx, Owner::Shared);
    0
}

/// openat (dfd, filename) and dup/dup2/dup3 (the old fd first).
#[kprobe]
pub fn storage_fd_kenter2(ctx: ProbeContext) -> u32 {
    kenter::<{ ufn::FD }, 2>(&ctx, Owner::Shared);
    0
}

#[kretprobe]
pub fn storage_fd_open_kexit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfinish(&ctx) {
        opened(&call);
    }
    0
}

#[kprobe]
pub fn storage_fd_kfcntl(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let args = kargs::<2>(&ctx);
    if args[1] == F_DUPFD || args[1] == F_DUPFD_CLOEXEC {
        save(tid, u32::MAX, 0, args, Owner::Shared);
    }
    0
}

#[kretprobe]
pub fn storage_fd_dup_kexit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfinish(&ctx) {
        duplicated(&call);
    }
    0
}

#[kprobe]
pub fn storage_fd_kclose(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    closed(tid, kargs::<1>(&ctx)[0]);
    0
}

#[uprobe]
pub fn storage_map_uenter_mmap(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::MMAP }, 6>(&ctx, Owner::Shared);
    0
}

#[uprobe]
pub fn storage_map_uenter_munmap(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::MUNMAP }, 2>(&ctx, Owner::Shared);
    0
}

/// mremap(old, old_size, new_size, flags, new_address): variadic in C, but the fifth
/// argument still arrives in the fifth argument register.
#[uprobe]
pub fn storage_map_uenter_mremap(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::MREMAP }, 5>(&ctx, Owner::Shared);
    0
}

#[uretprobe]
pub fn storage_map_uexit(ctx: RetProbeContext) -> u32 {
    uexit(&ctx, Owner::Shared);
    0
}

/// open(path, flags, mode) and glibc's internal `__open_nocancel`: saved as openat(AT_FDCWD,
/// path), so one exit serves both.
#[uprobe]
pub fn storage_fd_uenter_open(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let mut args = [0u64; MAX_ARGS];
    args[0] = AT_FDCWD;
    args[1] = ctx.arg::<u64>(0).unwrap_or(0);
    save(tid, u32::MAX, ufn::FD as u32 + 1, args, Owner::Shared);
    0
}

/// openat(dfd, path, ...), and dup/dup2/dup3 (the old fd first).
#[uprobe]
pub fn storage_fd_uenter2(ctx: ProbeContext) -> u32 {
    uenter::<{ ufn::FD }, 2>(&ctx, Owner::Shared);
    0
}

#[uretprobe]
pub fn storage_fd_open_uexit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = ufinish(&ctx) {
        opened(&call);
    }
    0
}

/// fcntl: only the duplicating commands are remembered.
#[uprobe]
pub fn storage_fd_ufcntl(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let args = uargs::<2>(&ctx);
    if args[1] == F_DUPFD || args[1] == F_DUPFD_CLOEXEC {
        save(tid, u32::MAX, ufn::FD as u32 + 1, args, Owner::Shared);
    }
    0
}

#[uretprobe]
pub fn storage_fd_dup_uexit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = ufinish(&ctx) {
        duplicated(&call);
    }
    0
}

/// close and glibc's internal `__close_nocancel`, at entry (as the tracepoint).
#[uprobe]
pub fn storage_fd_uclose(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    closed(tid, ctx.arg::<u64>(0).unwrap_or(0));
    0
}
