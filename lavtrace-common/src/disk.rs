//! A LavinMQ-shaped data dir and what a broker does in it, shared by the storage workload
//! (exact counts for the tests) and `lavtrace demo` (the same calls at a modest rate): the
//! names (`<data>/<sha1 vhost>/<sha1 queue>/msgs.N`, `acks.N`, `definitions.amqp`), segments
//! created with ftruncate, mapped MAP_SHARED with their fd closed at once, madvised, written
//! through the mapping, msynced (MS_ASYNC then MS_SYNC), unmapped and unlinked; ack files
//! mapped and mremapped; definitions.amqp fsynced.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// sha1("/"), the default vhost's directory name.
pub const VHOST_DIR: &str = "42099b4af021e53fd8fd4e056c2568d7c2e3ffa8";
/// sha1("workload"), a queue's directory name.
pub const QUEUE_DIR: &str = "8c6e326cc8ba989509be7aa0485a4a523f4aaa47";
pub const SEGMENT_BYTES: usize = 8 << 20;
/// LavinMQ's ack file size.
pub const ACK_BYTES: usize = 1_597_832;
/// Bytes written (and MS_SYNCed) per segment.
pub const WRITE_BYTES: usize = 64 << 10;
/// Name of the syncfs thread (the kernel keeps 15 bytes: "Publish confirm").
pub const CONFIRM_THREAD: &str = "Publish confirm loop";

pub fn check(rc: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// A broker-shaped data dir, removed on drop.
pub struct DataDir {
    pub queue: PathBuf,
    pub definitions: PathBuf,
    /// O_RDONLY|O_DIRECTORY fd of the root: what LavinMQ passes to syncfs.
    pub fd: i32,
    /// Files, then directories, to remove at the end: prepared up front, so that removing
    /// them allocates nothing (a malloc may move the heap's break: brk calls in the trace).
    files: Vec<CString>,
    dirs: Vec<CString>,
}

impl DataDir {
    /// A fresh data dir under the temp dir.
    pub fn create() -> io::Result<DataDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        DataDir::create_at(
            std::env::temp_dir().join(format!("lavtrace-data-{}-{nanos}", std::process::id())),
        )
    }

    pub fn create_at(root: PathBuf) -> io::Result<DataDir> {
        let vhost = root.join(VHOST_DIR);
        let queue = vhost.join(QUEUE_DIR);
        std::fs::create_dir_all(&queue)?;
        // What makes a directory a LavinMQ data dir.
        std::fs::write(root.join(".lock"), b"")?;
        std::fs::write(root.join("vhosts.json"), b"{}")?;
        let c = cpath(&root)?;
        // SAFETY: valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        check(fd.into(), "opening the data dir")?;
        let definitions = vhost.join("definitions.amqp");
        Ok(DataDir {
            files: vec![
                cpath(&root.join(".lock"))?,
                cpath(&root.join("vhosts.json"))?,
                cpath(&definitions)?,
            ],
            dirs: vec![cpath(&queue)?, cpath(&vhost)?, cpath(&root)?],
            definitions,
            queue,
            fd,
        })
    }

    /// Removes the tree (segments are removed as they are consumed).
    pub fn remove(&self) {
        for f in &self.files {
            // SAFETY: valid NUL-terminated paths; a missing file is fine.
            unsafe { libc::unlink(f.as_ptr()) };
        }
        for d in &self.dirs {
            // SAFETY: as above.
            unsafe { libc::rmdir(d.as_ptr()) };
        }
    }

    pub fn segment(&self, i: u64) -> io::Result<CString> {
        cpath(&self.queue.join(format!("msgs.{i:010}")))
    }

    pub fn acks(&self, i: u64) -> io::Result<CString> {
        cpath(&self.queue.join(format!("acks.{i:010}")))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.fd) };
        self.remove();
    }
}

/// A mapped segment and its mapped ack file.
pub struct Segment {
    addr: usize,
    acks: usize,
    acks_len: usize,
}

/// Opens, sizes and maps `path` MAP_SHARED, then closes the fd at once (as LavinMQ v2 does).
fn map_file(path: &CString, len: usize) -> io::Result<usize> {
    // SAFETY: valid path; the fd is ours until closed below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    check(fd.into(), "open")?;
    // SAFETY: our fd; a fresh shared mapping at an address the kernel picks.
    let addr = unsafe {
        if libc::ftruncate(fd, len as libc::off_t) != 0 {
            libc::close(fd);
            return Err(io::Error::last_os_error());
        }
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        libc::close(fd);
        addr
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(addr as usize)
}

impl Segment {
    /// msgs.N: map, madvise(DONTDUMP), write WRITE_BYTES, msync MS_ASYNC (4 bytes, as v1 does)
    /// and MS_SYNC; acks.N: map, write, mremap to twice its size.
    pub fn publish(segment: &CString, acks: &CString) -> io::Result<Segment> {
        let addr = map_file(segment, SEGMENT_BYTES)?;
        let acks = map_file(acks, ACK_BYTES)?;
        // SAFETY: both mappings are ours, of the sizes given, and backed by files that long.
        unsafe {
            check(
                libc::madvise(addr as *mut _, SEGMENT_BYTES, libc::MADV_DONTDUMP).into(),
                "madvise",
            )?;
            std::ptr::write_bytes(addr as *mut u8, 0x42, WRITE_BYTES);
            check(
                libc::msync(addr as *mut _, 4, libc::MS_ASYNC).into(),
                "msync",
            )?;
            check(
                libc::msync(addr as *mut _, WRITE_BYTES, libc::MS_SYNC).into(),
                "msync",
            )?;
            std::ptr::write_bytes(acks as *mut u8, 1, 4);
            let grown = libc::mremap(
                acks as *mut _,
                ACK_BYTES,
                2 * ACK_BYTES,
                libc::MREMAP_MAYMOVE,
            );
            if grown == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(Segment {
                addr,
                acks: grown as usize,
                acks_len: 2 * ACK_BYTES,
            })
        }
    }

    /// Fully consumed: madvise(DONTNEED), unmap and delete both files.
    pub fn consume(self, segment: &CString, acks: &CString) -> io::Result<()> {
        // SAFETY: unmapping our own mappings; nothing refers to them afterwards.
        unsafe {
            check(
                libc::madvise(self.addr as *mut _, SEGMENT_BYTES, libc::MADV_DONTNEED).into(),
                "madvise",
            )?;
            check(
                libc::munmap(self.addr as *mut _, SEGMENT_BYTES).into(),
                "munmap",
            )?;
            check(libc::unlink(segment.as_ptr()).into(), "unlink")?;
            check(
                libc::munmap(self.acks as *mut _, self.acks_len).into(),
                "munmap",
            )?;
            check(libc::unlink(acks.as_ptr()).into(), "unlink")?;
        }
        Ok(())
    }
}

/// definitions.amqp: write, `fsyncs` × fsync, one fdatasync through a dup of the fd, one
/// sync_file_range; the fds are closed before the calls are reported.
pub fn save_definitions(dir: &DataDir, fsyncs: u64) -> io::Result<()> {
    if fsyncs == 0 {
        return Ok(());
    }
    let path = cpath(&dir.definitions)?;
    // SAFETY: valid path and buffers; fds are ours.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        );
        check(fd.into(), "open definitions.amqp")?;
        let body = b"{\"queues\":[\"workload\"]}\n";
        libc::write(fd, body.as_ptr().cast(), body.len());
        for _ in 0..fsyncs {
            check(libc::fsync(fd).into(), "fsync")?;
        }
        let dup = check(libc::dup(fd).into(), "dup")? as i32;
        check(libc::fdatasync(dup).into(), "fdatasync")?;
        check(
            libc::sync_file_range(fd, 0, 4096, libc::SYNC_FILE_RANGE_WRITE).into(),
            "sync_file_range",
        )?;
        libc::close(dup);
        libc::close(fd);
    }
    Ok(())
}
