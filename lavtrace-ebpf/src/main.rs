//! lavtrace's kernel programs: one module per probe family, all in one object. Userspace loads
//! the object once with the target's tgid set as a read-only global, then loads and attaches
//! only the programs of the families asked for.
#![no_std]
#![no_main]
#![expect(
    internal_features,
    reason = "atomic adds on map values (tcp.rs): core's atomics lack fetch_add on the BPF target"
)]
#![feature(core_intrinsics)]

mod amqp;
mod cut;
mod dump;
mod faults;
mod field;
mod filter;
mod floor;
mod fsync;
mod gc;
mod mmap;
mod ring;
mod sched;
mod storage;
mod syscalls;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

// GPL: bpf_probe_read_* and the ring buffer helpers used by later families are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
