//! Program runs the kernel skipped. A BPF program does not run inside another on the same
//! CPU: a kprobe or tracepoint hit by a softirq that interrupted a lavtrace program (a state
//! change on packet receive, say) is dropped, and so is a raw tracepoint program re-entered.
//! The kernel counts these per program (`recursion_misses`, in the program fd's fdinfo since
//! 5.12; tracepoint programs' skips are counted there on 6.2+, kprobe programs' on 6.7+; an
//! older kernel skips without counting). Each skipped run is an event lost, and lavtrace
//! reports it as one.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::Ebpf;

/// The runs of `program` the kernel skipped so far (0 where the kernel does not say).
pub fn recursion_misses(ebpf: &Ebpf, program: &str) -> u64 {
    let Some(fd) = ebpf.program(program).and_then(|p| p.fd().ok()) else {
        return 0;
    };
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    std::fs::read_to_string(path)
        .ok()
        .and_then(|info| parse(&info))
        .unwrap_or(0)
}

fn parse(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_line_and_nothing_else() {
        let info = "prog_type:\t5\nprog_id:\t2386\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                    recursion_misses:\t7\nverified_insns:\t98429\n";
        assert_eq!(parse(info), Some(7));
        // A kernel before 5.12 has no such line.
        assert_eq!(parse("prog_type:\t5\nrun_cnt:\t3\n"), None);
        assert_eq!(parse("recursion_misses:\tx\n"), None);
    }

    #[test]
    fn an_unknown_program_has_none() {
        // No object loaded: nothing to read, no panic.
        let ebpf = aya::EbpfLoader::new().load(&[]);
        if let Ok(ebpf) = ebpf {
            assert_eq!(recursion_misses(&ebpf, "nosuch"), 0);
        }
    }
}
