//! Thread names for `--per-thread`: /proc/PID/task/TID/comm, read once per thread and cached
//! (a thread that exited before it was first seen stays unnamed).

use std::{collections::HashMap, sync::Arc};

pub struct ThreadNames {
    pid: u32,
    cache: HashMap<u32, Arc<str>>,
}

impl ThreadNames {
    /// Names every thread the target has now, so threads that exit soon still get a name.
    pub fn seed(pid: u32) -> ThreadNames {
        let mut names = ThreadNames {
            pid,
            cache: HashMap::new(),
        };
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for tid in dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
            {
                names.name(tid);
            }
        }
        names
    }

    /// The thread's name, or None if it is gone and was never seen.
    pub fn name(&mut self, tid: u32) -> Option<Arc<str>> {
        if let Some(n) = self.cache.get(&tid) {
            return Some(n.clone());
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.pid)).ok()?;
        let name: Arc<str> = Arc::from(comm.trim_end_matches('\n'));
        self.cache.insert(tid, name.clone());
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_process_threads() {
        let pid = std::process::id();
        let handle = std::thread::Builder::new()
            .name("lt-named".into())
            .spawn(|| {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() } as u32;
                let mut names = ThreadNames::seed(std::process::id());
                names.name(tid)
            })
            .unwrap();
        assert_eq!(handle.join().unwrap().as_deref(), Some("lt-named"));
        let mut names = ThreadNames::seed(pid);
        assert_eq!(names.name(u32::MAX), None, "no such thread");
    }
}
