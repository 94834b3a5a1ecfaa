//! Other programs the bundle asks: the target's own binary for its version, uname,
//! journalctl. Each with a deadline and a cap on what it may print, killed when late.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Output kept from one command.
const MAX_OUTPUT: usize = 1 << 20;

/// stdout of `cmd` if it exits 0 within `timeout`; Err: why not, in one line.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(MAX_OUTPUT as u64).read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                // Our own child, late: end it, and its pipe with it.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name} did not finish within {timeout:?}"));
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{name} failed ({status})"));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
