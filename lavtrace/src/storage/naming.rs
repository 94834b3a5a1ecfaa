//! The names an operator knows a storage path by (`vhost / · queue perf-test · msgs.N`),
//! shared by the storage families so that fsync and mmap name files alike.
//!
//! Each path is resolved once and the answer kept: a deleted queue keeps the name it had
//! while its files existed. The data dir is read again only when a path under a queue dir
//! not named yet is opened (`opened`, fed by the openat bookkeeping), never polled.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde::Serialize;

use crate::lavinmq::{
    data_dir,
    names::{Names, Resolved},
};

use super::lavinmq;

/// The `queue` object of a JSON row: names (null when the data dir did not give one, the
/// text then shows the hash marked with `#`) and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueRef {
    pub vhost: Option<String>,
    pub vhost_hash: String,
    pub name: Option<String>,
    pub hash: String,
}

/// What a path is called, worked out once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// Text form: the resolved name, else the shortened hash path (`lavinmq::display`).
    pub display: String,
    /// None outside a queue dir.
    pub queue: Option<QueueRef>,
}

impl Naming {
    fn of(path: &str, resolved: Option<&Resolved>) -> Naming {
        match resolved {
            Some(r) => Naming {
                // Vhost and queue names are anyone's choice (AMQP allows control
                // characters in them): escaped for the terminal, raw in `queue`.
                display: crate::printable::printable(&r.to_string()).into_owned(),
                queue: r.queue.as_ref().map(|q| QueueRef {
                    vhost: r.vhost.name.clone(),
                    vhost_hash: r.vhost.hash.clone(),
                    name: q.name.clone(),
                    hash: q.hash.clone(),
                }),
            },
            None => Naming {
                display: lavinmq::display(path),
                queue: None,
            },
        }
    }
}

/// The kind of `path`, by its name, else by what it holds now or held when it was opened.
impl Namer {
    pub fn kind(&self, path: &Arc<str>) -> lavinmq::Kind {
        match lavinmq::classify_on_disk(path, self.pid) {
            lavinmq::Kind::File if self.data_dirs.contains(path) => lavinmq::Kind::DataDir,
            kind => kind,
        }
    }
}

/// The target's open directories that are data dirs, as it sees them.
fn open_data_dirs(pid: u32) -> HashSet<Arc<str>> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|p| p.to_str().map(Arc::<str>::from))
        .filter(|p| lavinmq::classify_on_disk(p, pid) == lavinmq::Kind::DataDir)
        .collect()
}

/// The target's data dir names, and every path named so far.
pub struct Namer {
    /// None when the target has no LavinMQ data dir we could find: paths keep their
    /// shortened form.
    names: Option<Names>,
    cache: HashMap<Arc<str>, Arc<Naming>>,
    /// Directories recognised as a data dir while they existed (the target's open fds at
    /// attach, then every directory it opens): a ring drained after the broker removed its
    /// data dir (a test workload, a deleted vhost) still calls its syncfs a data dir's.
    data_dirs: HashSet<Arc<str>>,
    pid: u32,
}

fn same_mount_namespace(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    ns("self").is_some_and(|mine| ns(&pid.to_string()) == Some(mine))
}

fn unnamed(r: &Resolved) -> bool {
    r.vhost.fell_back() || r.queue.as_ref().is_some_and(|q| q.fell_back())
}

impl Namer {
    pub fn seed(pid: u32) -> Namer {
        Namer {
            names: data_dir::find(pid).map(|(dir, _)| {
                // Through /proc/PID/root only when the target is in another mount namespace:
                // that link dies with the target, and a ring drained after its exit must
                // still name what it did.
                if same_mount_namespace(pid) {
                    Names::load(std::path::Path::new(&dir))
                } else {
                    Names::load_for_pid(pid, &dir)
                }
            }),
            cache: HashMap::new(),
            data_dirs: open_data_dirs(pid),
            pid,
        }
    }

    #[cfg(test)]
    pub fn with(names: Option<Names>) -> Namer {
        Namer {
            names,
            cache: HashMap::new(),
            data_dirs: HashSet::new(),
            pid: std::process::id(),
        }
    }

    /// The target opened `path`: named now, reading the data dir again if the path is under
    /// a vhost or queue not named yet (a queue just declared), while its files exist.
    pub fn opened(&mut self, path: &Arc<str>) {
        if lavinmq::classify_on_disk(path, self.pid) == lavinmq::Kind::DataDir {
            self.data_dirs.insert(path.clone());
        }
        let Some(names) = self.names.as_mut() else {
            return;
        };
        if self.cache.get(path).is_some_and(|n| {
            n.queue
                .as_ref()
                .is_none_or(|q| q.name.is_some() && q.vhost.is_some())
        }) {
            return;
        }
        let resolved = match names.resolve(path) {
            Some(r) if unnamed(&r) => names.resolve_fresh(path),
            r => r,
        };
        self.cache
            .insert(path.clone(), Arc::new(Naming::of(path, resolved.as_ref())));
    }

    /// How `path` is shown; resolved (with one re-read if it is not named yet) on first use.
    pub fn name(&mut self, path: &Arc<str>) -> Arc<Naming> {
        if let Some(n) = self.cache.get(path) {
            return n.clone();
        }
        let resolved = self
            .names
            .as_mut()
            .and_then(|names| match names.resolve(path) {
                Some(r) if unnamed(&r) => names.resolve_fresh(path),
                r => r,
            });
        let naming = Arc::new(Naming::of(path, resolved.as_ref()));
        self.cache.insert(path.clone(), naming.clone());
        naming
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lavtrace_common::definitions::dir_hash;

    #[test]
    fn a_data_dir_stays_one_after_it_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join(".lock"), "").unwrap();
        let path: Arc<str> = Arc::from(root.to_str().unwrap());
        let mut namer = Namer::with(None);
        namer.opened(&path);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(namer.kind(&path), lavinmq::Kind::DataDir);
        // Never seen while it held a data dir's files: a plain file.
        assert_eq!(Namer::with(None).kind(&path), lavinmq::Kind::File);
    }

    #[test]
    fn hostile_vhost_and_queue_names_are_escaped_in_display_and_raw_in_json() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (vname, qname) = ("v\x1b]0;owned\x07", "q\x1b[2J\nevil");
        let (v, q) = (dir_hash(vname), dir_hash(qname));
        std::fs::write(
            root.join("vhosts.json"),
            serde_json::json!([{ "name": vname, "dir": v }]).to_string(),
        )
        .unwrap();
        std::fs::create_dir_all(root.join(&v).join(&q)).unwrap();
        std::fs::write(root.join(&v).join(&q).join(".queue"), qname).unwrap();
        let mut namer = Namer::with(Some(Names::load(root)));
        let seg: Arc<str> = Arc::from(format!("{}/{v}/{q}/msgs.0000000001", root.display()));
        let n = namer.name(&seg);
        assert_eq!(
            n.display,
            r"vhost v\x1b]0;owned\x07 · queue q\x1b[2J\nevil · msgs.0000000001"
        );
        let queue = n.queue.as_ref().unwrap();
        assert_eq!(queue.name.as_deref(), Some(qname));
        assert_eq!(queue.vhost.as_deref(), Some(vname));
    }

    #[test]
    fn a_queue_keeps_the_name_it_had_when_its_files_existed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (v, q) = (dir_hash("/"), dir_hash("perf-test-2"));
        std::fs::write(
            root.join("vhosts.json"),
            format!(r#"[{{"name":"/","dir":"{v}"}}]"#),
        )
        .unwrap();
        std::fs::create_dir_all(root.join(&v).join(&q)).unwrap();
        let mut namer = Namer::with(Some(Names::load(root)));
        // Declared after the load: named on its open.
        std::fs::write(root.join(&v).join(&q).join(".queue"), "perf-test-2").unwrap();
        let seg: Arc<str> = Arc::from(format!("{}/{v}/{q}/msgs.0000000001", root.display()));
        namer.opened(&seg);
        std::fs::remove_dir_all(root.join(&v).join(&q)).unwrap();
        let n = namer.name(&seg);
        assert_eq!(n.display, "vhost / · queue perf-test-2 · msgs.0000000001");
        assert_eq!(
            n.queue,
            Some(QueueRef {
                vhost: Some("/".into()),
                vhost_hash: v.clone(),
                name: Some("perf-test-2".into()),
                hash: q.clone(),
            })
        );
        // Never named: the hash, marked.
        let other = dir_hash("gone");
        let path: Arc<str> = Arc::from(format!("{}/{v}/{other}/acks.0000000001", root.display()));
        let n = namer.name(&path);
        assert_eq!(
            n.display,
            format!("vhost / · queue #{} · acks.0000000001", &other[..8])
        );
        assert_eq!(n.queue.as_ref().unwrap().name, None);
        // Outside the data dir: unchanged.
        assert_eq!(namer.name(&Arc::from("/etc/hosts")).display, "/etc/hosts");
    }
}
