//! `--slow DURATION`: every durability call slower than the threshold, printed as it
//! completes (like bcc's fsslower): time, thread name, syscall, file, duration.

use std::{
    collections::HashMap,
    io::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::units;

pub struct SlowLog {
    threshold_ns: u64,
    json: bool,
    pid: u32,
    /// tid → thread name (/proc/PID/task/TID/comm), read once per thread.
    names: HashMap<u32, String>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC (the kernel's timestamps are monotonic).
    offset_ns: i128,
    header_done: bool,
}

#[derive(Serialize)]
struct SlowRecord<'a> {
    r#type: &'static str,
    time_unix_ns: i128,
    tid: u32,
    thread: &'a str,
    syscall: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<&'a str>,
    duration_ns: u64,
    ret: i64,
}

/// One slow call, as the family saw it.
pub struct SlowCall<'a> {
    pub start_ns: u64,
    pub tid: u32,
    pub syscall: &'a str,
    pub path: &'a str,
    pub display: &'a str,
    pub flags: Option<&'a str>,
    pub duration_ns: u64,
    pub ret: i64,
}

impl SlowLog {
    pub fn new(threshold: Duration, json: bool, pid: u32) -> SlowLog {
        SlowLog {
            threshold_ns: threshold.as_nanos().min(u128::from(u64::MAX)) as u64,
            json,
            pid,
            names: HashMap::new(),
            offset_ns: realtime_minus_monotonic(),
            header_done: false,
        }
    }

    pub fn is_slow(&self, duration_ns: u64) -> bool {
        duration_ns >= self.threshold_ns
    }

    fn thread_name(&mut self, tid: u32) -> String {
        let pid = self.pid;
        self.names
            .entry(tid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_else(|_| "?".into())
            })
            .clone()
    }

    pub fn print(&mut self, call: &SlowCall<'_>) {
        let thread = self.thread_name(call.tid);
        let time_unix_ns = i128::from(call.start_ns) + self.offset_ns;
        let line = if self.json {
            let rec = SlowRecord {
                r#type: "slow",
                time_unix_ns,
                tid: call.tid,
                thread: &thread,
                syscall: call.syscall,
                path: call.path,
                flags: call.flags,
                duration_ns: call.duration_ns,
                ret: call.ret,
            };
            match serde_json::to_string(&rec) {
                Ok(s) => s + "\n",
                Err(_) => return,
            }
        } else {
            let mut s = String::new();
            if !self.header_done {
                s.push_str(&format!(
                    "{:<15} {:<15} {:>8} {:<22} {:>8}  FILE\n",
                    "SLOW (UTC)", "THREAD", "TID", "SYSCALL", "LATENCY"
                ));
                self.header_done = true;
            }
            let name = match call.flags {
                Some(f) => format!("{} {f}", call.syscall),
                None => call.syscall.to_string(),
            };
            let err = if call.ret == lavtrace_common::storage::ERRNO_UNSEEN {
                "  (error; a uprobe on libc does not see the errno)".to_string()
            } else if call.ret < 0 {
                format!("  (error {})", crate::names::errno_name((-call.ret) as u32))
            } else {
                String::new()
            };
            s.push_str(&format!(
                "{:<15} {:<15} {:>8} {:<22} {:>8}  {}{err}\n",
                clock(time_unix_ns),
                crate::printable::printable(&thread),
                call.tid,
                name,
                units::ns(call.duration_ns),
                call.display
            ));
            s
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

pub(crate) fn realtime_minus_monotonic() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    real - mono
}

/// `HH:MM:SS.uuuuuu` (UTC) of a Unix time in ns.
pub(crate) fn clock(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        // 2026-01-01T12:34:56.789012Z
        let t = 1_767_270_896_789_012_000i128;
        assert_eq!(clock(t), "12:34:56.789012");
    }

    #[test]
    fn threshold_is_inclusive() {
        let s = SlowLog::new(Duration::from_millis(1), false, 1);
        assert!(s.is_slow(1_000_000));
        assert!(!s.is_slow(999_999));
    }
}
