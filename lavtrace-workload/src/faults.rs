//! Mode `faults`: page faults whose number is known, for the faults family's tests. Every
//! file is created and mapped before `ready`; after go, in order:
//!
//! - `--pages N`: writes one byte to each page of a fresh N-page file mapped MAP_SHARED
//!   (`touched`): N write faults on it (a write fault maps one page: no fault-around). A
//!   second N-page mapping (`untouched`) is never touched.
//! - `--retouch M`: MADV_DONTNEED over `touched`, then writes to its first M pages again.
//! - `--major N`: an N-page file written, fsynced and dropped from the page cache
//!   (POSIX_FADV_DONTNEED) before `ready`, mapped read-only with MADV_RANDOM (no readahead,
//!   so no neighbour is in the cache for fault-around to map): reading one byte per page
//!   faults N times, each a major fault.
//! - `--segment-msgs K --msg-bytes B`: a LavinMQ-shaped 8 MiB segment `msgs.0000000001` in a
//!   queue dir (ftruncate, mmap MAP_SHARED): the u32 schema version at 0, then K messages of
//!   B bytes copied in: ceil((4 + K*B) / 4096) pages touched, each by a write.
//! - `--dirty-mib X`: X MiB written with write(2) to a file (dirty throttling under a low
//!   `vm.dirty_bytes`), then fsynced and removed.
//!
//! With `--in-thread` the phases run in a thread started after go. Each phase prints `phase NAME minflt A majflt B` (its own getrusage(RUSAGE_THREAD)
//! deltas: ground truth), and each file `file ROLE PATH`. After `done` the mappings stay
//! until stdin closes, so a tracer reads them while they exist.

use std::{
    ffi::CString,
    io::{self, Write as _},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use lavtrace_common::disk::{DataDir, check};

const PAGE: usize = 4096;
const SEGMENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 0)]
    pub pages: usize,
    #[arg(long, default_value_t = 0)]
    pub retouch: usize,
    #[arg(long, default_value_t = 0)]
    pub major: usize,
    #[arg(long, default_value_t = 0)]
    pub segment_msgs: usize,
    #[arg(long, default_value_t = 1000)]
    pub msg_bytes: usize,
    #[arg(long, default_value_t = 0)]
    pub dirty_mib: usize,
    /// Benchmark: N write faults on anonymous memory (1024-page rounds, MADV_DONTNEED between),
    /// timed; prints `result {"faults":N,"ns":T}` and exits (no wait for stdin).
    #[arg(long, default_value_t = 0)]
    pub anon_faults: u64,
    /// Run the phases in a thread started after go (a thread the tracer did not see at
    /// attach).
    #[arg(long)]
    pub in_thread: bool,
    /// Where the files go: a real disk (major faults need pages that can be dropped).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// A file mapped for the whole run, removed at the end.
struct Mapped {
    path: PathBuf,
    addr: *mut u8,
    len: usize,
}

impl Mapped {
    /// A fresh file of `len` bytes (sparse, or written with `fill` and dropped from the
    /// page cache), mapped with `prot`.
    fn create(path: PathBuf, len: usize, prot: i32, dropped: bool) -> io::Result<Mapped> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid path; plain syscalls on our own descriptor.
        unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o600,
            );
            check(fd.into(), "creating a file to map")?;
            if dropped {
                let buf = vec![0x5au8; len];
                let n = libc::write(fd, buf.as_ptr().cast(), len);
                check(n as libc::c_long, "writing the file")?;
                check(libc::fsync(fd).into(), "fsync")?;
                // The pages are clean now: DONTNEED drops them from the page cache.
                let rc = libc::posix_fadvise(fd, 0, len as i64, libc::POSIX_FADV_DONTNEED);
                if rc != 0 {
                    return Err(io::Error::from_raw_os_error(rc));
                }
            } else {
                check(libc::ftruncate(fd, len as i64).into(), "ftruncate")?;
            }
            let addr = libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
            libc::close(fd);
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(Mapped {
                path,
                addr: addr.cast(),
                len,
            })
        }
    }

    fn write_touch(&self, pages: usize) {
        for i in 0..pages.min(self.len / PAGE) {
            // SAFETY: inside our writable mapping.
            unsafe { std::ptr::write_volatile(self.addr.add(i * PAGE), 1) };
        }
    }

    fn read_touch(&self) -> u64 {
        let mut sum = 0u64;
        for i in 0..self.len / PAGE {
            // SAFETY: inside our readable mapping.
            sum += u64::from(unsafe { std::ptr::read_volatile(self.addr.add(i * PAGE)) });
        }
        sum
    }
}

// SAFETY: the mapping is owned by the process; one thread at a time touches it (the phase
// thread, while the main thread waits for it in `thread::scope`).
unsafe impl Sync for Mapped {}
// SAFETY: as above.
unsafe impl Send for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
        let _ = std::fs::remove_file(&self.path);
    }
}

fn faults_now() -> (i64, i64) {
    // SAFETY: getrusage fills the struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    (u.ru_minflt, u.ru_majflt)
}

/// Runs `work` and prints its own fault counts.
fn phase(name: &str, work: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let before = faults_now();
    work()?;
    let after = faults_now();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "phase {name} minflt {} majflt {}",
        after.0 - before.0,
        after.1 - before.1
    )?;
    out.flush()
}

fn file_line(role: &str, path: &Path) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "file {role} {}", path.display())?;
    out.flush()
}

/// The benchmark mode: what tracing adds to one page fault of the process.
fn anon_faults(n: u64) -> io::Result<()> {
    const ROUND: usize = 1024;
    // SAFETY: a fresh anonymous mapping of ROUND pages.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ROUND * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let p = addr.cast::<u8>();
    lavtrace_common::start::announce_ready_then_wait_go()?;
    let start = std::time::Instant::now();
    let mut done = 0u64;
    while done < n {
        let pages = (n - done).min(ROUND as u64) as usize;
        for i in 0..pages {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(p.add(i * PAGE), 1) };
        }
        // SAFETY: our own mapping; its pages are dropped, so the next round faults again.
        let rc = unsafe { libc::madvise(addr, ROUND * PAGE, libc::MADV_DONTNEED) };
        check(rc.into(), "madvise(MADV_DONTNEED)")?;
        done += pages as u64;
    }
    let ns = start.elapsed().as_nanos();
    let mut out = io::stdout().lock();
    writeln!(out, "result {{\"faults\":{n},\"ns\":{ns}}}")?;
    out.flush()
}

pub fn run(args: &Args) -> io::Result<()> {
    if args.anon_faults > 0 {
        return anon_faults(args.anon_faults);
    }
    let tag = format!("lavtrace-faults-{}", std::process::id());
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let mut files = Vec::new();
    let touched = (args.pages > 0)
        .then(|| {
            let t = Mapped::create(
                args.dir.join(format!("{tag}-touched")),
                args.pages * PAGE,
                rw,
                false,
            )?;
            let u = Mapped::create(
                args.dir.join(format!("{tag}-untouched")),
                args.pages * PAGE,
                rw,
                false,
            )?;
            files.push(("touched", t.path.clone()));
            files.push(("untouched", u.path.clone()));
            Ok::<_, io::Error>((t, u))
        })
        .transpose()?;
    let major = (args.major > 0)
        .then(|| {
            let m = Mapped::create(
                args.dir.join(format!("{tag}-major")),
                args.major * PAGE,
                libc::PROT_READ,
                true,
            )?;
            // SAFETY: our own mapping.
            let rc = unsafe { libc::madvise(m.addr.cast(), m.len, libc::MADV_RANDOM) };
            check(rc.into(), "madvise(MADV_RANDOM)")?;
            files.push(("major", m.path.clone()));
            Ok::<_, io::Error>(m)
        })
        .transpose()?;
    let data = (args.segment_msgs > 0).then(DataDir::create).transpose()?;
    let segment = match &data {
        Some(d) => {
            let path = d.queue.join("msgs.0000000001");
            let s = Mapped::create(path, SEGMENT_BYTES, rw, false)?;
            files.push(("segment", s.path.clone()));
            Some(s)
        }
        None => None,
    };
    let message = vec![0xabu8; args.msg_bytes];
    let dirty_path = args.dir.join(format!("{tag}-dirty"));
    let chunk = vec![0x11u8; 1024 * 1024];
    lavtrace_common::start::ready_then(|| {
        let work = || -> io::Result<()> {
            for (role, path) in &files {
                file_line(role, path)?;
            }
            if let Some((t, _)) = &touched {
                phase("touch", || {
                    t.write_touch(args.pages);
                    Ok(())
                })?;
                if args.retouch > 0 {
                    phase("retouch", || {
                        // SAFETY: our own mapping.
                        let rc =
                            unsafe { libc::madvise(t.addr.cast(), t.len, libc::MADV_DONTNEED) };
                        check(rc.into(), "madvise(MADV_DONTNEED)")?;
                        t.write_touch(args.retouch);
                        Ok(())
                    })?;
                }
            }
            if let Some(m) = &major {
                phase("major", || {
                    std::hint::black_box(m.read_touch());
                    Ok(())
                })?;
            }
            if let Some(s) = &segment {
                phase("segment", || {
                    // SAFETY: the segment is 8 MiB; the copies stay inside it (checked).
                    unsafe { std::ptr::write_volatile(s.addr.cast::<u32>(), 1) };
                    let mut at = 4;
                    for _ in 0..args.segment_msgs {
                        if at + message.len() > s.len {
                            break;
                        }
                        // SAFETY: inside the mapping, as checked above.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                message.as_ptr(),
                                s.addr.add(at),
                                message.len(),
                            )
                        };
                        at += message.len();
                    }
                    let mut out = io::stdout().lock();
                    writeln!(out, "segment pages {}", at.div_ceil(PAGE))?;
                    Ok(())
                })?;
            }
            if args.dirty_mib > 0 {
                phase("dirty", || {
                    let mut f = std::fs::File::create(&dirty_path)?;
                    for _ in 0..args.dirty_mib {
                        f.write_all(&chunk)?;
                    }
                    f.sync_all()?;
                    drop(f);
                    std::fs::remove_file(&dirty_path)
                })?;
            }
            Ok(())
        };
        if args.in_thread {
            std::thread::scope(|s| {
                s.spawn(work)
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the phase thread panicked")))
            })
        } else {
            work()
        }
    })?;
    crate::wait_for_eof()?;
    drop((touched, major, segment));
    drop(data);
    Ok(())
}
