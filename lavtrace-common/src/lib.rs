//! Types that cross the kernel/user boundary. Every type here is `#[repr(C)]`, made of
//! fixed-width fields laid out without padding, so both sides agree byte for byte.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod definitions;
#[cfg(feature = "std")]
pub mod disk;
#[cfg(feature = "std")]
pub mod start;

pub mod amqp;
pub mod cut;
pub mod dump;
pub mod faults;
pub mod field;
pub mod filter;
pub mod fsync;
pub mod gc;
pub mod mmap;
pub mod ring;
pub mod sched;
pub mod storage;
pub mod syscalls;
pub mod tcp;

/// Marks a wire type as plain old data for aya (userspace only).
#[macro_export]
macro_rules! pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), fixed-width integer fields only, no padding (checked by the
            // layout tests in each module).
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
