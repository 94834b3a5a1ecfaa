//! Syscall and errno names of this architecture, from the kernel's tables (the `syscalls`
//! crate): the one lookup every family uses.

/// The kernel's name for syscall `nr`, if this architecture has one.
pub fn syscall(nr: u32) -> Option<&'static str> {
    syscalls::Sysno::new(nr as usize).map(|s| s.name())
}

/// Name of a syscall number, `syscall_N` for one the table lacks.
pub fn syscall_name(nr: u32) -> String {
    syscall(nr).map_or_else(|| format!("syscall_{nr}"), str::to_string)
}

/// Symbolic name of a positive errno (`EAGAIN`).
pub fn errno_name(errno: u32) -> String {
    syscalls::Errno::new(errno as i32)
        .name()
        .map_or_else(|| format!("errno_{errno}"), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_kernel_tables() {
        assert_eq!(syscall_name(libc::SYS_getppid as u32), "getppid");
        assert_eq!(syscall_name(libc::SYS_syncfs as u32), "syncfs");
        assert_eq!(syscall_name(511), "syscall_511");
        assert_eq!(
            syscall(libc::SYS_sync_file_range as u32),
            Some("sync_file_range")
        );
        assert_eq!(syscall(libc::SYS_madvise as u32), Some("madvise"));
        assert_eq!(errno_name(libc::EAGAIN as u32), "EAGAIN");
        assert_eq!(errno_name(libc::EBADF as u32), "EBADF");
    }
}
