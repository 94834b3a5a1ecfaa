//! tracefs: where it is mounted, and mounting it where it is missing.

use std::path::Path;

use anyhow::Result;
use tracing::info;

use crate::error::Fatal;

pub const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

pub fn tracefs_dir() -> Option<&'static str> {
    TRACEFS_DIRS
        .into_iter()
        .find(|d| Path::new(d).join("events").is_dir())
}

/// aya resolves tracepoint ids through tracefs; mount it where it is missing, as perf does.
pub fn ensure_tracefs() -> Result<()> {
    if tracefs_dir().is_some() {
        return Ok(());
    }
    let target = TRACEFS_DIRS[0];
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a constant");
    let (src, dst, fstype) = (c("nodev"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && tracefs_dir().is_some() {
        info!("mounted tracefs at {target}");
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(Fatal::Unsupported(format!(
        "tracefs is not mounted and mounting it failed ({err}); run: mount -t tracefs nodev {target}"
    ))
    .into())
}
