//! Shared by the families that send events: the lost-event counter.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use lavtrace_common::ring::lost;

/// Events that did not fit in their family's ring, per family (see `lavtrace_common::ring::lost`).
#[map]
static RING_LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::LEN, 0);

/// Sends `event` through `ring`, or counts it as lost for `family`.
#[inline(always)]
pub fn send<T>(ring: &RingBuf, family: u32, event: &T) {
    if ring.output::<T>(event, 0).is_err() {
        count_lost(family);
    }
}

#[inline(always)]
pub fn count_lost(family: u32) {
    if let Some(counter) = RING_LOST_EVENTS.get_ptr_mut(family) {
        // SAFETY: this CPU's slot of a per-cpu array.
        unsafe { *counter += 1 };
    }
}
