//! Naming files the way a LavinMQ operator thinks of them. A data dir looks like
//! `<data>/<sha1(vhost)>/<sha1(queue)>/msgs.0000000001` (see README): segments, ack files,
//! `definitions.amqp`, and directories named by a 40-hex sha1.

use std::path::Path;

use serde::Serialize;

/// What a path is to LavinMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `msgs.N`: an 8 MiB message segment.
    Segment,
    /// `acks.N`: the ack file of a segment.
    AckFile,
    /// `meta.N`: a segment's metadata (v2).
    Meta,
    /// `definitions.amqp`: a vhost's exchanges, queues and bindings.
    Definitions,
    /// The broker's data dir (holds `vhosts.json`, `schema_version` or `.lock`).
    DataDir,
    /// `<data>/<sha1(vhost)>`.
    VhostDir,
    /// `<data>/<sha1(vhost)>/<sha1(queue)>`.
    QueueDir,
    /// Any other file or directory.
    File,
    /// Not a file: anonymous memory, a socket, the heap...
    Anonymous,
    /// Every filesystem (sync).
    System,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Segment => "segment",
            Kind::AckFile => "ack file",
            Kind::Meta => "meta file",
            Kind::Definitions => "definitions",
            Kind::DataDir => "data dir",
            Kind::VhostDir => "vhost dir",
            Kind::QueueDir => "queue dir",
            Kind::File => "file",
            Kind::Anonymous => "anonymous",
            Kind::System => "system",
        }
    }
}

fn is_sha1(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Classifies `path` by its name alone (no filesystem access).
pub fn classify(path: &str) -> Kind {
    if !path.starts_with('/') {
        // "[anonymous]", "[heap]", "socket:[123]", "anon_inode:...": not a path.
        return Kind::Anonymous;
    }
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let name = parts.next().unwrap_or_default();
    let parent = parts.next().unwrap_or_default();
    let grandparent = parts.next().unwrap_or_default();
    if numbered(name, "msgs.") {
        Kind::Segment
    } else if numbered(name, "acks.") {
        Kind::AckFile
    } else if numbered(name, "meta.") {
        Kind::Meta
    } else if name == "definitions.amqp" {
        Kind::Definitions
    } else if is_sha1(name) && is_sha1(parent) {
        Kind::QueueDir
    } else if is_sha1(name) && !is_sha1(grandparent) {
        Kind::VhostDir
    } else {
        Kind::File
    }
}

/// Like `classify`, and recognises the data dir by what it holds, looking through the
/// target's root (`path` is as the target sees it, maybe in a container).
pub fn classify_on_disk(path: &str, pid: u32) -> Kind {
    match classify(path) {
        Kind::File if is_data_dir(&seen_by(pid, path)) => Kind::DataDir,
        kind => kind,
    }
}

/// `path` as the target sees it: through its root while it lives; once it has exited (a ring
/// drained after its end), as lavtrace sees it, which is the same file unless the target had
/// a mount namespace of its own.
fn seen_by(pid: u32, path: &str) -> std::path::PathBuf {
    let root = format!("/proc/{pid}/root");
    if Path::new(&root).exists() {
        Path::new(&format!("{root}{path}")).to_path_buf()
    } else {
        Path::new(path).to_path_buf()
    }
}

fn is_data_dir(dir: &Path) -> bool {
    dir.is_dir()
        && ["vhosts.json", "schema_version", ".lock"]
            .iter()
            .any(|f| dir.join(f).exists())
}

/// A short name for text output: sha1 directories shortened and labelled, e.g.
/// `vhost:42099b4a/queue:8c6e326c/msgs.0000000001`; other paths unchanged but for control
/// characters, escaped (`printable`): text output and the live view print this name.
pub fn display(path: &str) -> String {
    crate::printable::printable(&shortened(path)).into_owned()
}

fn shortened(path: &str) -> String {
    if !path.starts_with('/') {
        return path.to_string();
    }
    let parts: Vec<&str> = path.split('/').collect();
    let Some(vhost) = parts.iter().position(|p| is_sha1(p)) else {
        return path.to_string();
    };
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate().skip(vhost) {
        match i - vhost {
            0 => out.push(format!("vhost:{}", &part[..8])),
            1 if is_sha1(part) => out.push(format!("queue:{}", &part[..8])),
            _ => out.push((*part).to_string()),
        }
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "/var/lib/lavinmq/42099b4af021e53fd8fd4e056c2568d7c2e3ffa8";
    const Q: &str = "8c6e326cc8ba989509be7aa0485a4a523f4aaa47";

    #[test]
    fn segment_files_are_recognised() {
        assert_eq!(classify(&format!("{V}/{Q}/msgs.0000000001")), Kind::Segment);
        assert_eq!(classify(&format!("{V}/{Q}/acks.0000000012")), Kind::AckFile);
        assert_eq!(classify(&format!("{V}/{Q}/meta.0000000012")), Kind::Meta);
        assert_eq!(classify("/tmp/msgs.txt"), Kind::File);
        assert_eq!(classify("/tmp/msgs."), Kind::File);
    }

    #[test]
    fn definitions_and_directories() {
        assert_eq!(
            classify(&format!("{V}/definitions.amqp")),
            Kind::Definitions
        );
        assert_eq!(classify(V), Kind::VhostDir);
        assert_eq!(classify(&format!("{V}/")), Kind::VhostDir);
        assert_eq!(classify(&format!("{V}/{Q}")), Kind::QueueDir);
        assert_eq!(classify("/var/lib/lavinmq/users.json"), Kind::File);
    }

    #[test]
    fn non_paths_are_anonymous() {
        assert_eq!(classify("[anonymous]"), Kind::Anonymous);
        assert_eq!(classify("[heap]"), Kind::Anonymous);
        assert_eq!(classify("socket:[1234]"), Kind::Anonymous);
    }

    #[test]
    fn display_shortens_sha1_dirs() {
        assert_eq!(
            display(&format!("{V}/{Q}/msgs.0000000001")),
            "vhost:42099b4a/queue:8c6e326c/msgs.0000000001"
        );
        assert_eq!(
            display(&format!("{V}/definitions.amqp")),
            "vhost:42099b4a/definitions.amqp"
        );
        assert_eq!(display("/etc/hosts"), "/etc/hosts");
        assert_eq!(display("[anonymous]"), "[anonymous]");
    }

    #[test]
    fn data_dir_is_recognised_by_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        let me = std::process::id();
        assert_eq!(classify_on_disk(&path, me), Kind::File);
        std::fs::write(dir.path().join("vhosts.json"), "{}").unwrap();
        assert_eq!(classify_on_disk(&path, me), Kind::DataDir);
    }
}
