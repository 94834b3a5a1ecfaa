//! logs.txt: recent broker logs from journald, and the "Unhandled exception" stack traces in
//! them (Crystal prints the exception line, then one indented `from ...` line per frame).

use std::{process::Command, time::Duration};

use super::run;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Journal lines asked for.
const LINES: &str = "2000";
/// Frames kept per stack trace.
const MAX_FRAMES: usize = 100;

/// `journalctl -u lavinmq` (last `LINES`), or why not.
pub fn journal() -> Result<String, String> {
    let out = run::output(
        Command::new("journalctl").args(["-u", "lavinmq", "-n", LINES, "--no-pager", "-q"]),
        TIMEOUT,
    )?;
    if out.trim().is_empty() || out.contains("-- No entries --") {
        return Err("journalctl has no entries for unit lavinmq".into());
    }
    Ok(out)
}

/// Each "Unhandled exception" line with the frame lines after it.
pub fn stack_traces(logs: &str) -> Vec<String> {
    let lines: Vec<&str> = logs.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].contains("Unhandled exception") {
            let mut trace = vec![lines[i]];
            let mut j = i + 1;
            while j < lines.len() && trace.len() <= MAX_FRAMES && is_frame(lines[j]) {
                trace.push(lines[j]);
                j += 1;
            }
            out.push(trace.join("\n"));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn is_frame(line: &str) -> bool {
    // journald prefixes each line with a date and `lavinmq[PID]: `.
    let body = line.split_once("]: ").map_or(line, |(_, b)| b);
    body.starts_with([' ', '\t']) || body.trim_start().starts_with("from ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_traces_are_the_exception_and_its_frames() {
        let logs = "a\nDec 01 lavinmq[7]: Unhandled exception in spawn: Index out of bounds (IndexError)\n\
                    Dec 01 lavinmq[7]:   from /usr/share/crystal/src/indexable.cr:0:0 in 'index'\n\
                    Dec 01 lavinmq[7]:   from src/lavinmq/queue.cr:1:2 in 'read'\n\
                    Dec 01 lavinmq[7]: INFO next\nUnhandled exception: x\n";
        let t = stack_traces(logs);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].lines().count(), 3);
        assert!(t[0].ends_with("in 'read'"));
        assert_eq!(t[1], "Unhandled exception: x");
    }
}
