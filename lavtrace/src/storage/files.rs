//! The target's descriptors (fd → path) and mounts, as userspace can know them: seeded from
//! /proc at attach, then kept current by the open/close/dup records that arrive in the same
//! ring as the calls, so each call is named after the file its fd meant at that moment.

use std::{collections::HashMap, fs, sync::Arc};

/// openat's "relative to the working directory".
const AT_FDCWD: i32 = -100;

pub struct FdTable {
    pid: u32,
    fds: HashMap<i32, Arc<str>>,
}

impl FdTable {
    /// The descriptors open right now.
    pub fn seed(pid: u32) -> FdTable {
        let mut fds = HashMap::new();
        if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for entry in dir.flatten() {
                let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Ok(target) = fs::read_link(entry.path()) {
                    fds.insert(fd, Arc::from(target.to_string_lossy().as_ref()));
                }
            }
        }
        FdTable { pid, fds }
    }

    /// `fd` was opened as `raw` (relative to `dfd`); empty `raw`: the kernel could not read it.
    pub fn open(&mut self, fd: i32, dfd: i32, raw: &str) {
        let path = if raw.starts_with('/') {
            Some(raw.to_string())
        } else if raw.is_empty() {
            self.proc_link(fd)
        } else {
            let base = if dfd == AT_FDCWD {
                fs::read_link(format!("/proc/{}/cwd", self.pid))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            } else {
                self.fds.get(&dfd).map(|p| p.to_string())
            };
            base.map(|b| {
                format!(
                    "{}/{}",
                    b.trim_end_matches('/'),
                    raw.trim_start_matches("./")
                )
            })
        };
        match path {
            Some(p) => {
                self.fds.insert(fd, Arc::from(p));
            }
            None => {
                self.fds.remove(&fd);
            }
        }
    }

    pub fn close(&mut self, fd: i32) {
        self.fds.remove(&fd);
    }

    pub fn dup(&mut self, new: i32, old: i32) {
        match self.fds.get(&old).cloned() {
            Some(p) => {
                self.fds.insert(new, p);
            }
            None => {
                self.fds.remove(&new);
            }
        }
    }

    /// The path the table holds for `fd`, without asking /proc.
    pub fn known(&self, fd: i32) -> Option<Arc<str>> {
        self.fds.get(&fd).cloned()
    }

    /// The path behind `fd`: from the table, else (an fd we never saw opened) from /proc.
    pub fn path(&mut self, fd: i32) -> Arc<str> {
        if let Some(p) = self.fds.get(&fd) {
            return p.clone();
        }
        let p: Arc<str> = match self.proc_link(fd) {
            Some(p) => Arc::from(p),
            None => return Arc::from(format!("fd {fd} (unknown)")),
        };
        self.fds.insert(fd, p.clone());
        p
    }

    fn proc_link(&self, fd: i32) -> Option<String> {
        fs::read_link(format!("/proc/{}/fd/{fd}", self.pid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: String,
    pub fstype: String,
    pub source: String,
}

/// The target's mounts (its own mount namespace).
pub struct Mounts(Vec<Mount>);

impl Mounts {
    pub fn read(pid: u32) -> Mounts {
        let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        Mounts(text.lines().filter_map(parse_mountinfo).collect())
    }

    /// The mount holding `path`: the longest mount point that contains it (the last one
    /// mounted wins a tie, as in the kernel).
    pub fn of(&self, path: &str) -> Option<&Mount> {
        self.0
            .iter()
            .rev()
            .filter(|m| {
                m.point == "/"
                    || path == m.point
                    || path
                        .strip_prefix(m.point.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|m| m.point.len())
    }
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_mountinfo(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let source = right.next().unwrap_or_default();
    Some(Mount {
        point: unescape(point),
        fstype: fstype.to_string(),
        source: unescape(source),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // At most \377: a larger octal (never written by the kernel) is kept as text.
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                u8::try_from(
                    u32::from(d[0] - b'0') * 64
                        + u32::from(d[1] - b'0') * 8
                        + u32::from(d[2] - b'0'),
                )
                .ok()
            });
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_close_dup_keep_the_table_current() {
        let mut t = FdTable {
            pid: u32::MAX,
            fds: HashMap::new(),
        };
        t.open(5, AT_FDCWD, "/data/msgs.0000000001");
        assert_eq!(&*t.path(5), "/data/msgs.0000000001");
        t.dup(9, 5);
        t.close(5);
        assert_eq!(&*t.path(9), "/data/msgs.0000000001");
        assert_eq!(&*t.path(5), "fd 5 (unknown)");
        t.open(4, AT_FDCWD, "/data");
        t.open(6, 4, "./definitions.amqp");
        assert_eq!(&*t.path(6), "/data/definitions.amqp");
    }

    #[test]
    fn mountinfo_lines_parse() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(m.point, "/mnt 2");
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
    }

    #[test]
    fn the_longest_mount_point_wins() {
        let mounts = Mounts(vec![
            Mount {
                point: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/sda1".into(),
            },
            Mount {
                point: "/var/lib".into(),
                fstype: "xfs".into(),
                source: "/dev/sdb".into(),
            },
        ]);
        assert_eq!(mounts.of("/var/lib/lavinmq").unwrap().fstype, "xfs");
        assert_eq!(mounts.of("/var/library").unwrap().fstype, "ext4");
        assert_eq!(mounts.of("/var/lib").unwrap().fstype, "xfs");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{config, proc_text};

    proptest! {
        #![proptest_config(config(200))]

        /// Any mountinfo text gives mounts (escapes undone) or nothing, and looking a path up
        /// in them never panics.
        #[test]
        fn any_mountinfo_parses_or_is_skipped(
            lines in prop::collection::vec(
                prop_oneof![
                    proc_text(),
                    (proc_text(), "[\\\\0-9 ]{0,12}", proc_text())
                        .prop_map(|(a, p, b)| format!("36 35 98:0 / {p} rw - {a} {b} rw")),
                ],
                0..8,
            ),
            path in proc_text(),
        ) {
            let mounts = Mounts(lines.iter().filter_map(|l| parse_mountinfo(l)).collect());
            let _ = mounts.of(&path);
            let _ = mounts.of(&format!("/{path}"));
        }
    }
}
