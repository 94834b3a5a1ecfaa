//! AMQPS: the plaintext of the target's SSL_read, SSL_write, SSL_read_ex and SSL_write_ex
//! (uprobes on its libssl, for its pid only), walked like the bytes of a socket call.
//!
//! - **No uretprobe.** A uretprobe swaps the return address on the stack and keeps its own
//!   stack of pending returns per thread. A Crystal fiber waits for its socket *inside*
//!   SSL_read (its BIO yields), and other fibers run SSL calls on other stacks meanwhile:
//!   the kernel then drops pending returns it takes for abandoned, and a return that finds
//!   none is a SIGILL for the broker. So userspace puts a plain uprobe on every `ret`
//!   instruction of the four functions (`amqp_ssl_return`), and the entry's saved arguments
//!   are found again by the stack pointer, the same at entry and at `ret`.
//! - **Which connection.** An `SSL *` is tied to its socket by the first socket call made
//!   inside one of its calls (the BIO's read or write, on the same thread before any fiber
//!   switch): `bind`, from the socket calls' entry, when the fd is an AMQPS connection. A
//!   first call on any other socket (the client side of the target's own TLS, its HTTPS)
//!   ends the chance (`unbind`): a fiber that waited inside its SSL_read and resumes makes
//!   its next socket call with the thread's last entered `SSL *` being another fiber's, and
//!   binding that one was seen to give one connection's bytes to another.
//! - Only counters and the rare events of the walk leave the kernel, as for the socket calls.

use aya_ebpf::{
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use lavtrace_common::amqp::{
    MAX_SSL_BINDINGS, MAX_SSL_CALLS, MAX_THREADS, Pending, SslCall, call, diag, listener,
};

use super::{AMQP_CONNS, AMQP_WALK_PROGS, IN, OUT, count_diag, read_user_val, walk_transfer};
use crate::filter::current_target_task;

#[map]
static AMQP_SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(MAX_SSL_CALLS, 0);

/// The `SSL *` whose call the thread entered last, until a socket call binds it.
#[map]
static AMQP_SSL_NOW: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_THREADS, 0);

/// `SSL *` → the fd of its AMQPS connection.
#[map]
static AMQP_SSL_FDS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_SSL_BINDINGS, 0);

/// The stack pointer and the return-value register.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn sp_and_ret(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: `regs` is the program's context, the probed thread's user registers.
    unsafe { ((*ctx.regs).rsp, (*ctx.regs).rax) }
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn sp_and_ret(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: `regs` is the program's context, the probed thread's user registers.
    unsafe { ((*ctx.regs).sp, (*ctx.regs).regs[0]) }
}

/// Elsewhere userspace attaches none of these programs (it finds `ret`s on x86-64 only).
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
#[inline(always)]
fn sp_and_ret(_ctx: &ProbeContext) -> (u64, u64) {
    (0, 0)
}

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, dir: u32, ex: bool) {
    let Some((_, tid)) = current_target_task() else {
        return;
    };
    let (sp, _) = sp_and_ret(ctx);
    let ssl = ctx.arg::<u64>(0).unwrap_or(0);
    if sp == 0 || ssl == 0 {
        return;
    }
    let c = SslCall {
        ssl,
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        count_at: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        dir,
        _pad: 0,
    };
    let _ = AMQP_SSL_CALLS.insert(sp, c, 0);
    let _ = AMQP_SSL_NOW.insert(tid, ssl, 0);
}

#[uprobe]
pub fn amqp_ssl_read(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, IN, false);
    0
}

#[uprobe]
pub fn amqp_ssl_write(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, OUT, false);
    0
}

#[uprobe]
pub fn amqp_ssl_read_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, IN, true);
    0
}

#[uprobe]
pub fn amqp_ssl_write_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, OUT, true);
    0
}

/// A socket call of thread `tid` on AMQPS fd `fd`: the `SSL *` the thread is inside is that
/// connection's.
#[inline(always)]
pub(super) fn bind(tid: u32, fd: u32) {
    // SAFETY: a lookup; the value is copied out at once.
    let Some(&ssl) = (unsafe { AMQP_SSL_NOW.get(tid) }) else {
        return;
    };
    let _ = AMQP_SSL_NOW.remove(tid);
    let _ = AMQP_SSL_FDS.insert(ssl, fd, 0);
}

/// A socket call of thread `tid` on a socket that is no AMQPS connection: the `SSL *` the
/// thread entered last (if any) is not one, and no later call may bind it.
#[inline(always)]
pub(super) fn unbind(tid: u32) {
    // SAFETY: a lookup; the value is not kept. (A lookup first: lock-free, where a delete
    // takes the bucket's lock on every socket call of the target.)
    if unsafe { AMQP_SSL_NOW.get(tid) }.is_some() {
        let _ = AMQP_SSL_NOW.remove(tid);
    }
}

/// At a `ret` of one of the four functions: the call's bytes, walked.
#[uprobe]
pub fn amqp_ssl_return(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = current_target_task() else {
        return 0;
    };
    let (sp, ret) = sp_and_ret(&ctx);
    // SAFETY: a lookup; the value is copied out at once.
    let Some(c) = (unsafe { AMQP_SSL_CALLS.get(sp) }).copied() else {
        return 0;
    };
    let _ = AMQP_SSL_CALLS.remove(sp);
    // SAFETY: as above.
    if unsafe { AMQP_SSL_NOW.get(tid) } == Some(&c.ssl) {
        // No socket call inside this call: nothing to bind it to later by mistake.
        let _ = AMQP_SSL_NOW.remove(tid);
    }
    // The functions return int: the upper half of the register is not part of it.
    let ret = ret as u32 as i32;
    let len = if c.count_at != 0 {
        if ret != 1 {
            return 0;
        }
        read_user_val::<u64>(c.count_at).unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    // SAFETY: a lookup; the value is copied out at once.
    let Some(&fd) = (unsafe { AMQP_SSL_FDS.get(c.ssl) }) else {
        count_diag(diag::SSL_UNBOUND);
        return 0;
    };
    // SAFETY: a lookup; the value is not kept.
    if unsafe { AMQP_CONNS.get(fd) }.map(|k| k.kind) != Some(listener::TLS) {
        // The fd was closed (and maybe reused) since: a stale binding.
        let _ = AMQP_SSL_FDS.remove(c.ssl);
        return 0;
    }
    let p = Pending {
        ptr: c.buf,
        len,
        fd,
        dir: c.dir,
        call: call::PLAIN,
        _pad: 0,
    };
    walk_transfer(&ctx, &AMQP_WALK_PROGS, &p, len);
    0
}
