//! Probe family `gc`: Boehm-GC stop-the-world pauses of the target.
//!
//! bdwgc stops the world on Linux with signals: the collecting thread sends the suspend
//! signal (SIGPWR) with tgkill to every other registered thread, each thread's handler acks
//! and waits in sigsuspend, and the collector later sends the restart signal (SIGXCPU). So a
//! pause is seen from `signal:signal_generate` (in the sender: the collector) and
//! `signal:signal_deliver` (in each receiver), plus the handler's sigsuspend (a kprobe on
//! the syscall, or a uprobe on the target's libc `sigsuspend`). Every program filters on the
//! current task's tgid first: other processes pay the filter only when they send or take a
//! signal.
//!
//! The pause state has one writer, the collector (a signal_generate of the target); a
//! thread's entry is written by the collector before its signal can be taken (the sender
//! holds the receiver's siglock across the tracepoint, the receiver takes it to dequeue),
//! then only by the thread. So no atomics. The kernel sends a record when the suspend phase
//! ends (the first restart signal) and one per thread when it resumes (takes the restart
//! signal); userspace joins them by the pause's sequence number.

use aya_ebpf::{
    bindings::task_struct,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, kprobe, map, tracepoint, uprobe},
    maps::{Array, LruHashMap, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use lavtrace_common::{
    gc::{GcRecord, GcState, MAX_THREADS, RING_BYTES, ThreadGc, kind, syscall},
    ring::lost,
};

use crate::{
    field,
    filter::{current_target_task, target_tgid},
    ring,
};

/// tid → its part in its latest pause. LRU: the entries of threads that exited (never
/// removed: nothing tells the family a thread is gone) make room for new ones.
#[map]
static GC_THREADS: LruHashMap<u32, ThreadGc> = LruHashMap::with_max_entries(MAX_THREADS, 0);

#[map]
static GC_STATE: Array<GcState> = Array::with_max_entries(1, 0);

#[map]
static GC_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// The runtime's signals (`--gc-signals`; bdwgc's defaults SIGPWR and SIGXCPU).
#[unsafe(no_mangle)]
static GC_SUSPEND_SIGNAL: u32 = 30;
#[unsafe(no_mangle)]
static GC_RESTART_SIGNAL: u32 = 24;

/// Offsets from BTF (`lavtrace_common::gc::*_OFFSET`); the tp_btf program is attached only
/// after they are set.
#[unsafe(no_mangle)]
static GC_TASK_TGID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static GC_TASK_STATE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static GC_REGS_ORIG_AX_OFFSET: u32 = 0;

field::offsets!(
    /// `int sig` of signal:signal_generate.
    GC_GEN_SIG_OFFSET,
    /// `pid_t pid` of signal:signal_generate: the signalled thread.
    GC_GEN_PID_OFFSET,
    /// `int sig` of signal:signal_deliver.
    GC_DELIVER_SIG_OFFSET,
);

#[inline(always)]
fn global(g: &'static u32) -> u32 {
    // SAFETY: a plain read of a global; volatile so the build-time placeholder is not folded.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// signal_generate with the signalled task's registers: its syscall when the signal came.
/// TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result).
#[btf_tracepoint(function = "signal_generate")]
pub fn gc_signal_generate_btf(ctx: BtfTracePointContext) -> i32 {
    let Some((_, sender)) = current_target_task() else {
        return 0;
    };
    let sig: i32 = ctx.arg(0);
    let sig = sig as u32;
    let (suspend, restart) = (global(&GC_SUSPEND_SIGNAL), global(&GC_RESTART_SIGNAL));
    if sig != suspend && sig != restart {
        return 0;
    }
    let task: *mut task_struct = ctx.arg(2);
    let base = task as *const u8;
    let at = base.wrapping_add(global(&GC_TASK_TGID_OFFSET) as usize);
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one only fails. `pid`
    // precedes `tgid` (checked at load), so one copy takes both.
    let Ok([tid, tgid]) = (unsafe { bpf_probe_read_kernel(at.wrapping_sub(4) as *const [u32; 2]) })
    else {
        return 0;
    };
    if tgid != target_tgid() {
        return 0;
    }
    if sig == restart {
        restart_sent(now());
        return 0;
    }
    let at = base.wrapping_add(global(&GC_TASK_STATE_OFFSET) as usize);
    // SAFETY: as above.
    let state = unsafe { bpf_probe_read_kernel(at as *const u32) }.unwrap_or(0);
    // The tracepoint runs after the signal's wake-up: a thread still not runnable is held
    // where it is (in D, or with the signal blocked), and its registers say where.
    let nr = if state == 0 {
        syscall::RUNNABLE
    } else {
        // SAFETY: `task` is the tracepoint's BTF task argument, as the helper requires.
        let regs = unsafe { aya_ebpf::helpers::bpf_task_pt_regs(task) } as usize as *const u8;
        let at = regs.wrapping_add(global(&GC_REGS_ORIG_AX_OFFSET) as usize);
        // SAFETY: as above.
        match unsafe { bpf_probe_read_kernel(at as *const i64) } {
            Ok(n) if n >= 0 => n as i32,
            Ok(_) => syscall::NOT_A_SYSCALL,
            Err(_) => syscall::UNKNOWN,
        }
    };
    suspend_sent(sender, tid, now(), nr);
    0
}

/// signal_generate from the record (kernels without tp_btf or bpf_task_pt_regs): the same,
/// without the syscall. The record has the signalled tid but no tgid: the collector's
/// tgkill targets its own threads.
#[tracepoint]
pub fn gc_signal_generate(ctx: TracePointContext) -> u32 {
    let Some((_, sender)) = current_target_task() else {
        return 0;
    };
    let sig: u32 = field::read(&ctx, &GC_GEN_SIG_OFFSET);
    if sig == global(&GC_RESTART_SIGNAL) {
        restart_sent(now());
    } else if sig == global(&GC_SUSPEND_SIGNAL) {
        let tid: u32 = field::read(&ctx, &GC_GEN_PID_OFFSET);
        if tid != 0 {
            suspend_sent(sender, tid, now(), syscall::UNKNOWN);
        }
    }
    0
}

/// signal_deliver runs in the thread taking the signal, as its handler is set up.
#[tracepoint]
pub fn gc_signal_deliver(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let sig: u32 = field::read(&ctx, &GC_DELIVER_SIG_OFFSET);
    let (suspend, restart) = (global(&GC_SUSPEND_SIGNAL), global(&GC_RESTART_SIGNAL));
    if sig != suspend && sig != restart {
        return 0;
    }
    let Some(t) = GC_THREADS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: the map's value slot, valid for this run; only this thread writes it now.
    let t = unsafe { &mut *t };
    if t.done != 0 {
        return 0;
    }
    let now = now();
    if sig == suspend {
        if t.answered_ns == 0 {
            t.answered_ns = now;
        }
        return 0;
    }
    let record = GcRecord {
        seq: t.seq,
        kind: kind::THREAD,
        tid,
        t0: t.sent_ns,
        t1: t.answered_ns,
        t2: t.parked_ns,
        t3: now,
        syscall: t.syscall,
        ..GcRecord::default()
    };
    t.done = 1;
    ring::send(&GC_EVENTS, lost::GC, &record);
    0
}

/// The handler parks: rt_sigsuspend entered by a thread that has taken its suspend signal.
#[kprobe]
pub fn gc_sigsuspend_kprobe(_ctx: ProbeContext) -> u32 {
    parked();
    0
}

/// The same from the target's libc `sigsuspend` (bdwgc calls it there).
#[uprobe]
pub fn gc_sigsuspend_uprobe(_ctx: ProbeContext) -> u32 {
    parked();
    0
}

#[inline(always)]
fn parked() {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 != target_tgid() {
        return;
    }
    let Some(t) = GC_THREADS.get_ptr_mut(pid_tgid as u32) else {
        return;
    };
    // SAFETY: as in `gc_signal_deliver`.
    let t = unsafe { &mut *t };
    if t.done == 0 && t.answered_ns != 0 && t.parked_ns == 0 {
        t.parked_ns = now();
    }
}

/// The collector `sender` sent the suspend signal to `tid`: a new pause if none is in its
/// suspend phase, else one more thread of it (or a resend to one already signalled).
#[inline(always)]
fn suspend_sent(sender: u32, tid: u32, now: u64, nr: i32) {
    let Some(st) = GC_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the one slot of the array; written only by the collector (see the module doc).
    let st = unsafe { &mut *st };
    if st.seq == 0 || st.restarts > 0 {
        *st = GcState {
            seq: st.seq + 1,
            begin_ns: now,
            collector_tid: sender,
            ..GcState::default()
        };
    }
    if let Some(t) = GC_THREADS.get_ptr(tid) {
        // SAFETY: as above; only its `seq` is read.
        if unsafe { (*t).seq } == st.seq {
            st.resends += 1;
            return;
        }
    }
    let entry = ThreadGc {
        seq: st.seq,
        sent_ns: now,
        syscall: nr,
        ..ThreadGc::default()
    };
    if GC_THREADS.insert(tid, entry, 0).is_ok() {
        st.signalled += 1;
    } else {
        ring::count_lost(lost::GC);
    }
}

/// A restart signal: the first one of a pause ends its suspend phase and sends its record.
#[inline(always)]
fn restart_sent(now: u64) {
    let Some(st) = GC_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `suspend_sent`.
    let st = unsafe { &mut *st };
    if st.seq == 0 {
        return;
    }
    if st.restarts == 0 {
        let record = GcRecord {
            seq: st.seq,
            kind: kind::PAUSE,
            tid: st.collector_tid,
            t0: st.begin_ns,
            t3: now,
            count: st.signalled,
            resends: st.resends,
            ..GcRecord::default()
        };
        ring::send(&GC_EVENTS, lost::GC, &record);
    }
    st.restarts += 1;
}
