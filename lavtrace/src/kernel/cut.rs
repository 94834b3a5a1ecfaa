//! The interval cut (`lavtrace_common::cut`): the session writes it, the programs that place
//! calls in intervals read it.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lavtrace_common::cut::{LEAD_NS, MAP, encode};

pub struct Cut(Array<MapData, u64>);

impl Cut {
    /// Takes the cut map out of `ebpf` (the session owns it).
    pub fn take(ebpf: &mut Ebpf) -> Result<Cut> {
        let map = ebpf
            .take_map(MAP)
            .with_context(|| format!("map {MAP} missing"))?;
        Ok(Cut(Array::try_from(map)?))
    }

    /// Ends interval `seq` a moment from now (`LEAD_NS`); returns the cut as written.
    pub fn set(&mut self, seq: u64) -> Result<u64> {
        let at = encode(now_ns() + LEAD_NS, seq);
        self.0
            .set(0, at, 0)
            .with_context(|| format!("writing the interval cut to {MAP}"))?;
        Ok(at)
    }
}

/// CLOCK_MONOTONIC in ns: the kernel's `bpf_ktime_get_ns`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC cannot fail on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
