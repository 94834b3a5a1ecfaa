//! Vhost and queue names for the paths of a LavinMQ data dir, read from the data dir itself.
//!
//! Facts (LavinMQ 2.9.1, read from a real data dir; ../shared/lavinmq-facts.md, "Names on
//! disk"):
//! - `vhosts.json` is a JSON array whose entries have `"name"` and `"dir"` = sha1(name);
//! - a queue dir is sha1(queue name) and holds `.queue`, whose content is the name;
//! - `<vhost dir>/definitions.amqp` is a u32 schema version, then AMQP 0-9-1 method frames in
//!   the machine's byte order (type u8, channel u16, size u32, payload, 0xCE), where the
//!   payload is class u16, method u16, arguments; queue.declare (50,10) and queue.delete
//!   (50,40) carry a reserved u16 and then the queue name as a shortstr.
//!
//! Nothing here trusts those files: whatever does not parse is counted and the name falls
//! back to the hash.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// AMQP class and method ids (AMQP 0-9-1) of the records that name queues.
pub use lavtrace_common::definitions::dir_hash;
use lavtrace_common::definitions::{
    FRAME_END, FRAME_HEADER, QUEUE_CLASS, QUEUE_DECLARE, QUEUE_DELETE,
};

fn is_sha1(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A vhost or queue: its name when the data dir gave one, always its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    /// None when nothing on disk named it: the text form then shows the hash, marked.
    pub name: Option<String>,
    pub hash: String,
}

impl Label {
    pub fn fell_back(&self) -> bool {
        self.name.is_none()
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => f.write_str(name),
            // Marked so that a hash is never mistaken for a name.
            None => write!(f, "#{}", &self.hash[..8.min(self.hash.len())]),
        }
    }
}

/// What a path in the data dir is to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub vhost: Label,
    /// None for the vhost's own files (definitions.amqp) and the vhost dir itself.
    pub queue: Option<Label>,
    /// What is left of the path below the queue (or vhost) dir, e.g. `msgs.0000000001`;
    /// empty for the directory itself.
    pub file: String,
}

impl std::fmt::Display for Resolved {
    /// `vhost / · queue perf-test · msgs.0000000001`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vhost {}", self.vhost)?;
        if let Some(q) = &self.queue {
            write!(f, " · queue {q}")?;
        }
        if !self.file.is_empty() {
            write!(f, " · {}", self.file)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Vhost {
    name: Option<String>,
    /// Queue hash → name, from `.queue` files and definitions.amqp.
    queues: HashMap<String, String>,
    /// How far definitions.amqp has been read: it is an append log, so a re-read starts here.
    definitions_read: u64,
}

/// The names of one data dir.
#[derive(Debug)]
pub struct Names {
    /// The data dir as the target sees it: the prefix of the paths to resolve.
    root: String,
    /// Where to read it (differs from `root` when the target is in another mount namespace).
    disk: PathBuf,
    vhosts: HashMap<String, Vhost>,
    malformed: u64,
}

#[derive(Deserialize)]
struct VhostEntry {
    name: String,
    dir: Option<String>,
}

impl Names {
    /// Reads the data dir `root` (as this process sees it).
    pub fn load(root: &Path) -> Names {
        Names::load_as(root.to_string_lossy().into_owned(), root.to_path_buf())
    }

    /// Reads the data dir that process `pid` knows as `root`, through its mount namespace.
    pub fn load_for_pid(pid: u32, root: &str) -> Names {
        let disk = PathBuf::from(format!("/proc/{pid}/root{root}"));
        Names::load_as(root.to_string(), disk)
    }

    fn load_as(root: String, disk: PathBuf) -> Names {
        let mut names = Names {
            root: root.trim_end_matches('/').to_string(),
            disk,
            vhosts: HashMap::new(),
            malformed: 0,
        };
        names.read_vhosts();
        let dirs: Vec<String> = fs::read_dir(&names.disk)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_sha1(n))
            .collect();
        for vhost in dirs {
            names.read_vhost(&vhost);
        }
        names
    }

    /// Files that were there but did not parse, since the load.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by the tests only until a report shows it")
    )]
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    fn read_vhosts(&mut self) {
        let Ok(text) = fs::read(self.disk.join("vhosts.json")) else {
            return;
        };
        let Ok(entries) = serde_json::from_slice::<Vec<VhostEntry>>(&text) else {
            self.malformed += 1;
            return;
        };
        for e in entries {
            let hash = e
                .dir
                .filter(|d| is_sha1(d))
                .unwrap_or_else(|| dir_hash(&e.name));
            self.vhosts.entry(hash).or_default().name = Some(e.name);
        }
    }

    fn read_vhost(&mut self, vhost: &str) {
        let dir = self.disk.join(vhost);
        let queue_dirs: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_sha1(n))
            .collect();
        self.read_definitions(vhost);
        for q in queue_dirs {
            self.read_queue_file(vhost, &q);
        }
    }

    /// `.queue` names its dir; a name that does not hash to the dir is not believed.
    fn read_queue_file(&mut self, vhost: &str, queue: &str) -> bool {
        let Ok(bytes) = fs::read(self.disk.join(vhost).join(queue).join(".queue")) else {
            return false;
        };
        match String::from_utf8(bytes) {
            Ok(name) if dir_hash(&name) == queue => {
                self.vhosts
                    .entry(vhost.to_string())
                    .or_default()
                    .queues
                    .insert(queue.to_string(), name);
                true
            }
            _ => {
                self.malformed += 1;
                false
            }
        }
    }

    /// Reads what was appended to `<vhost>/definitions.amqp` since the last read.
    fn read_definitions(&mut self, vhost: &str) {
        let path = self.disk.join(vhost).join("definitions.amqp");
        let Ok(mut file) = fs::File::open(&path) else {
            return;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < 4 {
            self.malformed += 1;
            return;
        }
        let entry = self.vhosts.entry(vhost.to_string()).or_default();
        // A file shorter than what was read was rewritten (compacted): start over.
        let from = match entry.definitions_read {
            n if (4..=len).contains(&n) => n,
            _ => 4,
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return;
        }
        let (records, consumed, bad) = queue_records(&bytes);
        entry.definitions_read = from + consumed as u64;
        for (op, name) in records {
            let hash = dir_hash(&name);
            match op {
                QueueOp::Declare => {
                    entry.queues.insert(hash, name);
                }
                // A deleted queue's dir goes with it; forgetting it keeps the map bounded.
                QueueOp::Delete => {
                    entry.queues.remove(&hash);
                }
            }
        }
        if bad {
            self.malformed += 1;
        }
    }

    /// Names `path` from what is known, without touching the disk.
    pub fn resolve(&self, path: &str) -> Option<Resolved> {
        let (vhost, queue, file) = split(&self.root, path)?;
        let known = self.vhosts.get(vhost);
        Some(Resolved {
            vhost: Label {
                name: known.and_then(|v| v.name.clone()),
                hash: vhost.to_string(),
            },
            queue: queue.map(|q| Label {
                name: known.and_then(|v| v.queues.get(q).cloned()),
                hash: q.to_string(),
            }),
            file: file.to_string(),
        })
    }

    /// Like `resolve`, and first reads what names a vhost or queue dir not known yet: the
    /// queue's `.queue`, else the tail of definitions.amqp, and vhosts.json for a new vhost.
    /// Meant for the openat of an unknown queue dir, so that the disk is read once per new
    /// queue, never polled.
    pub fn resolve_fresh(&mut self, path: &str) -> Option<Resolved> {
        let (vhost, queue, _) = split(&self.root, path)?;
        let (vhost, queue) = (vhost.to_string(), queue.map(str::to_string));
        if self.vhosts.get(&vhost).is_none_or(|v| v.name.is_none()) {
            self.read_vhosts();
        }
        if let Some(q) = queue {
            let named = self
                .vhosts
                .get(&vhost)
                .is_some_and(|v| v.queues.contains_key(&q));
            if !named && !self.read_queue_file(&vhost, &q) {
                self.read_definitions(&vhost);
            }
        }
        self.resolve(path)
    }
}

/// `<root>/<vhost>[/<queue>][/file...]` → its parts; None outside a vhost dir.
fn split<'a>(root: &str, path: &'a str) -> Option<(&'a str, Option<&'a str>, &'a str)> {
    let rest = path.strip_prefix(root)?.strip_prefix('/')?;
    let rest = rest.trim_end_matches('/');
    let (vhost, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if !is_sha1(vhost) {
        return None;
    }
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if is_sha1(first) {
        Some((vhost, Some(first), tail))
    } else {
        Some((vhost, None, rest))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueOp {
    Declare,
    Delete,
}

/// The queue.declare and queue.delete records in `bytes` (frames of definitions.amqp from a
/// frame boundary), how many bytes were used (up to an incomplete trailing frame, to resume
/// from once the broker has finished appending it), and whether a frame was malformed.
fn queue_records(bytes: &[u8]) -> (Vec<(QueueOp, String)>, usize, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + FRAME_HEADER) else {
            return (out, at, false);
        };
        let size = u32::from_ne_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let payload_at = at + FRAME_HEADER;
        let Some(end) = payload_at.checked_add(size) else {
            return (out, at, true);
        };
        let Some(&frame_end) = bytes.get(end) else {
            return (out, at, false);
        };
        if frame_end != FRAME_END {
            // Out of step: nothing after this can be trusted.
            return (out, bytes.len(), true);
        }
        if let Some(record) = queue_record(&bytes[payload_at..end]) {
            out.push(record);
        }
        at = end + 1;
    }
    (out, at, false)
}

/// class u16, method u16, reserved u16, queue shortstr, ...
fn queue_record(payload: &[u8]) -> Option<(QueueOp, String)> {
    let u16_at = |i: usize| {
        payload
            .get(i..i + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let op = match (u16_at(0)?, u16_at(2)?) {
        (QUEUE_CLASS, QUEUE_DECLARE) => QueueOp::Declare,
        (QUEUE_CLASS, QUEUE_DELETE) => QueueOp::Delete,
        _ => return None,
    };
    let len = *payload.get(6)? as usize;
    let name = payload.get(7..7 + len)?;
    Some((op, String::from_utf8(name.to_vec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lavtrace_common::definitions::{
        DEFINITIONS_VERSION, exchange_declare, queue_declare, queue_delete,
    };

    const ROOT_VHOST: &str = "42099b4af021e53fd8fd4e056c2568d7c2e3ffa8";
    const PERF_TEST: &str = "96e488d035f3c5aec50b494f6a7973ff287b6bdd";

    #[test]
    fn hashes_match_the_real_broker() {
        assert_eq!(dir_hash("/"), ROOT_VHOST);
        assert_eq!(dir_hash("perf-test"), PERF_TEST);
    }

    #[test]
    fn exchange_declare_is_byte_for_byte_the_facts_example() {
        // The record from the facts, on a little-endian machine.
        let mut want = vec![1, 0, 0, 0x1d, 0, 0, 0, 0x28, 0, 0x0a, 0, 0, 0, 0x0a];
        want.extend_from_slice(b"amq.direct");
        want.push(6);
        want.extend_from_slice(b"direct");
        want.extend_from_slice(&[2, 0, 0, 0, 0, 0xce]);
        if cfg!(target_endian = "little") {
            assert_eq!(exchange_declare("amq.direct", "direct"), want);
        }
    }

    fn definitions(records: &[Vec<u8>]) -> Vec<u8> {
        let mut b = DEFINITIONS_VERSION.to_ne_bytes().to_vec();
        for r in records {
            b.extend_from_slice(r);
        }
        b
    }

    /// A data dir as LavinMQ 2.9.1 leaves it: vhosts.json, one queue named by `.queue`, one
    /// only by definitions.amqp, one deleted, one named by nothing.
    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join(ROOT_VHOST);
        fs::create_dir_all(v.join(PERF_TEST)).unwrap();
        fs::write(v.join(PERF_TEST).join(".queue"), "perf-test").unwrap();
        for q in ["declared-only", "gone", "nameless"] {
            fs::create_dir_all(v.join(dir_hash(q))).unwrap();
        }
        fs::write(
            dir.path().join("vhosts.json"),
            format!(r#"[{{"name":"/","dir":"{ROOT_VHOST}","tags":[]}}]"#),
        )
        .unwrap();
        fs::write(
            v.join("definitions.amqp"),
            definitions(&[
                exchange_declare("amq.direct", "direct"),
                queue_declare("declared-only"),
                queue_declare("gone"),
                queue_delete("gone"),
            ]),
        )
        .unwrap();
        dir
    }

    fn path(dir: &tempfile::TempDir, rest: &str) -> String {
        format!("{}/{rest}", dir.path().display())
    }

    #[test]
    fn names_come_from_vhosts_json_queue_files_and_definitions() {
        let dir = data_dir();
        let names = Names::load(dir.path());
        let seg = names
            .resolve(&path(
                &dir,
                &format!("{ROOT_VHOST}/{PERF_TEST}/msgs.0000000001"),
            ))
            .unwrap();
        assert_eq!(
            seg.to_string(),
            "vhost / · queue perf-test · msgs.0000000001"
        );
        assert_eq!(seg.vhost.hash, ROOT_VHOST);
        assert_eq!(seg.queue.as_ref().unwrap().hash, PERF_TEST);
        let declared = format!("{ROOT_VHOST}/{}/acks.0000000002", dir_hash("declared-only"));
        assert_eq!(
            names.resolve(&path(&dir, &declared)).unwrap().to_string(),
            "vhost / · queue declared-only · acks.0000000002"
        );
        let defs = names
            .resolve(&path(&dir, &format!("{ROOT_VHOST}/definitions.amqp")))
            .unwrap();
        assert_eq!(defs.to_string(), "vhost / · definitions.amqp");
        assert_eq!(names.malformed(), 0);
    }

    #[test]
    fn unnamed_and_deleted_queues_fall_back_to_their_hash_marked() {
        let dir = data_dir();
        let names = Names::load(dir.path());
        for q in ["gone", "nameless"] {
            let h = dir_hash(q);
            let r = names
                .resolve(&path(&dir, &format!("{ROOT_VHOST}/{h}/msgs.0000000001")))
                .unwrap();
            let label = r.queue.unwrap();
            assert!(label.fell_back(), "{q}");
            assert_eq!(label.to_string(), format!("#{}", &h[..8]));
        }
        assert_eq!(names.resolve(&path(&dir, "vhosts.json")), None);
        assert_eq!(names.resolve("/elsewhere/x"), None);
    }

    #[test]
    fn json_has_both_name_and_hash() {
        let dir = data_dir();
        let names = Names::load(dir.path());
        let r = names
            .resolve(&path(&dir, &format!("{ROOT_VHOST}/{PERF_TEST}")))
            .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["vhost"]["name"], "/");
        assert_eq!(v["vhost"]["hash"], ROOT_VHOST);
        assert_eq!(v["queue"]["name"], "perf-test");
        assert_eq!(v["queue"]["hash"], PERF_TEST);
        assert_eq!(v["file"], "");
    }

    #[test]
    fn a_new_queue_is_read_on_demand_from_the_tail_of_definitions() {
        let dir = data_dir();
        let mut names = Names::load(dir.path());
        let h = dir_hash("late");
        let p = path(&dir, &format!("{ROOT_VHOST}/{h}/msgs.0000000001"));
        assert!(names.resolve(&p).unwrap().queue.unwrap().fell_back());
        // The broker appends the declare, half a frame first (a read in mid-append).
        let defs = dir.path().join(ROOT_VHOST).join("definitions.amqp");
        let mut bytes = fs::read(&defs).unwrap();
        let record = queue_declare("late");
        bytes.extend_from_slice(&record[..5]);
        fs::write(&defs, &bytes).unwrap();
        assert!(names.resolve_fresh(&p).unwrap().queue.unwrap().fell_back());
        bytes.extend_from_slice(&record[5..]);
        fs::write(&defs, &bytes).unwrap();
        let r = names.resolve_fresh(&p).unwrap();
        assert_eq!(r.queue.unwrap().name.as_deref(), Some("late"));
        assert_eq!(names.malformed(), 0);
    }

    #[test]
    fn malformed_files_are_counted_never_fatal() {
        let dir = data_dir();
        fs::write(dir.path().join("vhosts.json"), "{not json").unwrap();
        let v = dir.path().join(ROOT_VHOST);
        // A .queue whose content does not hash to its dir.
        fs::write(v.join(dir_hash("nameless")).join(".queue"), "liar").unwrap();
        // A frame whose size runs past its end marker.
        let mut defs = definitions(&[queue_declare("declared-only")]);
        let mut bad = queue_declare("x");
        bad[3] = 0xff;
        defs.extend_from_slice(&bad);
        defs.extend_from_slice(&[0; 300]);
        fs::write(v.join("definitions.amqp"), defs).unwrap();
        let names = Names::load(dir.path());
        assert_eq!(names.malformed(), 3);
        let r = names
            .resolve(&path(
                &dir,
                &format!("{ROOT_VHOST}/{PERF_TEST}/msgs.0000000001"),
            ))
            .unwrap();
        assert!(r.vhost.fell_back());
        assert_eq!(r.queue.unwrap().name.as_deref(), Some("perf-test"));
        let declared = format!("{ROOT_VHOST}/{}", dir_hash("declared-only"));
        assert!(
            !names
                .resolve(&path(&dir, &declared))
                .unwrap()
                .queue
                .unwrap()
                .fell_back()
        );
    }

    #[test]
    fn truncated_and_garbage_definitions_do_not_panic() {
        for n in 0..40 {
            let dir = data_dir();
            let defs = dir.path().join(ROOT_VHOST).join("definitions.amqp");
            let mut bytes = fs::read(&defs).unwrap();
            bytes.truncate(n);
            bytes.extend(std::iter::repeat_n(0xffu8, n % 7));
            fs::write(&defs, bytes).unwrap();
            let _ = Names::load(dir.path());
        }
    }
}

#[cfg(test)]
mod fuzz {
    use lavtrace_common::definitions::{DEFINITIONS_VERSION, frame, queue_declare, queue_delete};
    use proptest::{collection::vec, prelude::*};

    use super::*;
    use crate::fuzz::{config, garbage};

    /// A queue name as anyone may choose one: escapes, newlines, any character.
    fn hostile_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("q\u{1b}[2J\nevil\u{7}".to_string()),
            vec(any::<char>(), 0..12).prop_map(String::from_iter),
        ]
    }

    /// definitions.amqp frames: the broker's own, truncated or corrupt ones, garbage.
    fn definition_frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            hostile_name().prop_map(|n| queue_declare(&n)),
            hostile_name().prop_map(|n| queue_delete(&n)),
            (any::<u16>(), any::<u16>(), garbage(40)).prop_map(|(c, m, a)| frame(c, m, &a)),
            (hostile_name(), any::<usize>()).prop_map(|(n, cut)| {
                let f = queue_declare(&n);
                f[..cut % (f.len() + 1)].to_vec()
            }),
            garbage(24),
        ]
    }

    proptest! {
        // Each case writes a small data dir.
        #![proptest_config(config(150))]

        /// Any vhosts.json, .queue and definitions.amqp: names or hashes, never a panic;
        /// every file that does not parse is counted.
        #[test]
        fn any_data_dir_names_or_falls_back(
            vhosts in prop_oneof![
                garbage(64),
                hostile_name().prop_map(|n| {
                    serde_json::json!([{ "name": n, "dir": dir_hash(&n) }]).to_string().into_bytes()
                }),
            ],
            queue in hostile_name(),
            queue_file in prop_oneof![
                Just(None),
                Just(Some(Vec::new())),
                garbage(16).prop_map(Some),
            ],
            frames in vec(definition_frame(), 0..8),
            tail in vec(definition_frame(), 0..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let vhost = dir_hash("/");
            let qdir = dir.path().join(&vhost).join(dir_hash(&queue));
            fs::create_dir_all(&qdir).unwrap();
            fs::write(dir.path().join("vhosts.json"), &vhosts).unwrap();
            let queue_bytes = queue_file.unwrap_or_else(|| queue.clone().into_bytes());
            fs::write(qdir.join(".queue"), &queue_bytes).unwrap();
            let mut defs = DEFINITIONS_VERSION.to_ne_bytes().to_vec();
            defs.extend(frames.concat());
            let defs_path = dir.path().join(&vhost).join("definitions.amqp");
            fs::write(&defs_path, &defs).unwrap();

            let mut names = Names::load(dir.path());
            let file = format!("{}/msgs.0000000001", qdir.display());
            let resolved = names.resolve(&file);
            prop_assert!(resolved.is_some());
            // The broker appends; the next openat reads the tail.
            defs.extend(tail.concat());
            fs::write(&defs_path, &defs).unwrap();
            let other = format!("{}/{vhost}/{}/acks.1", dir.path().display(), dir_hash("x"));
            let _ = names.resolve_fresh(&other);
            let _ = names.resolve_fresh(&file);
            let _ = names.resolve(&format!("{}/{vhost}", dir.path().display()));
            prop_assert!(names.malformed() <= 3 + 2 * 2);
            // A .queue naming its dir is believed, whatever the name holds.
            if queue_bytes == queue.as_bytes() {
                let q = names.resolve(&file).unwrap().queue.unwrap();
                prop_assert_eq!(q.name.as_deref(), Some(queue.as_str()));
            }
        }

        /// definitions.amqp bytes from any frame boundary: the consumed length never passes
        /// the end, and resuming from it reads the same records as reading it all at once.
        #[test]
        fn any_definitions_bytes_parse_or_count(frames in vec(definition_frame(), 0..10)) {
            let bytes = frames.concat();
            let (records, consumed, _) = queue_records(&bytes);
            prop_assert!(consumed <= bytes.len());
            let (again, _, _) = queue_records(&bytes[..consumed]);
            prop_assert_eq!(again, records);
        }
    }
}
