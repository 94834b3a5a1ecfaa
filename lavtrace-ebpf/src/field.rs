//! Tracepoint record fields at the offsets the running kernel's tracefs format files give.
//! Userspace reads `events/<category>/<event>/format` at load, checks each field's name and
//! size, and sets one `u32` read-only global per field (`lavtrace/src/fields.rs`, tables in
//! `lavtrace_common::<family>::FIELDS`).

use aya_ebpf::{helpers::bpf_probe_read_kernel_buf, programs::TracePointContext};

/// Declares `u32` offset globals. The placeholder is never used: a program that reads a
/// field is attached only after userspace has set its offset.
macro_rules! offsets {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$meta])*
            #[unsafe(no_mangle)]
            static $name: u32 = 0;
        )*
    };
}
pub(crate) use offsets;

/// The field of the record at the offset held by `offset` (a global declared by `offsets!`);
/// zero if the kernel cannot copy it (it can: userspace checked the field is in the record).
///
/// The copy goes through bpf_probe_read_kernel, not a direct context load: the verifier knows
/// a read-only global's value, but a direct load must carry its offset in the instruction,
/// and adding even a known constant to the context pointer is refused (6.18: "dereference of
/// modified ctx ptr R2 off=8 disallowed"). aya's `TracePointContext::read_at` does the same.
#[inline(always)]
pub fn read<T: Copy + Default>(ctx: &TracePointContext, offset: &'static u32) -> T {
    // SAFETY: a plain read of a global; volatile so the build-time placeholder is not folded.
    let at = unsafe { core::ptr::read_volatile(offset) } as usize;
    // SAFETY: the helper copes with any address (a bad one only fails); this one is inside
    // the record.
    unsafe { ctx.read_at::<T>(at) }.unwrap_or_default()
}

/// `N` consecutive 8-byte slots from the offset held by `offset`, in one helper call; zeros
/// if the kernel cannot copy them.
#[inline(always)]
pub fn read_u64s<const N: usize>(ctx: &TracePointContext, offset: &'static u32, out: &mut [u64]) {
    // SAFETY: as in `read`.
    let at = unsafe { core::ptr::read_volatile(offset) } as usize;
    let mut bytes = [0u8; 8 * MAX_SLOTS];
    if N == 0 || N > MAX_SLOTS {
        return;
    }
    let src = aya_ebpf::EbpfContext::as_ptr(ctx)
        .cast::<u8>()
        .wrapping_add(at);
    // SAFETY: as in `read`; the helper writes only into `bytes`.
    if unsafe { bpf_probe_read_kernel_buf(src, &mut bytes[..8 * N]) }.is_err() {
        return;
    }
    let mut i = 0;
    while i < N && i < out.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
        out[i] = u64::from_ne_bytes(word);
        i += 1;
    }
}

/// Most slots `read_u64s` copies (a syscall's arguments).
const MAX_SLOTS: usize = 6;
