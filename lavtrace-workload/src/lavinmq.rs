//! Mode `lavinmq`: what LavinMQ 2.9.1 does at the syscall level, with exact counts from flags.
//!
//! Facts it reproduces (../shared/lavinmq-facts.md, measured on a real 2.9.1):
//! - comm `lavinmq`, and a second thread also named `lavinmq` that calls syncfs(data dir fd);
//! - the data dir: `.lock`, `vhosts.json` (`name` ↔ `dir` = sha1(name)), `<sha1 vhost>/.vhost`
//!   and `definitions.amqp` (u32 version, then method frames in machine byte order, fsynced on
//!   every declare and delete), queue dirs sha1(name) holding `.queue` (the name);
//! - a segment `msgs.N` is ftruncated to 8 MiB, mapped MAP_SHARED rw, madvised DONTDUMP and
//!   its fd closed right after mmap; `acks.N` is ftruncated to 1,597,832 B and mapped;
//!   `meta.N` is 4 B; a deleted queue's files are unlinked, then unmapped;
//! - Boehm GC stops the world with tgkill SIGPWR to every other thread, which waits in
//!   rt_sigsuspend until SIGXCPU; SIGUSR1 prints the GC stats and fiber list on stdout.
//!
//! Run: `ready <pid>`, go line, `data-dir <path>`, the work, `done`; then, with `--wait`, it
//! answers SIGUSR1 until stdin closes. Everything that would add mapping calls of its own
//! (the thread and its stack, names, buffers) is made before `ready`, and it leaves through
//! `_exit`, so the traced run holds exactly the calls the flags promise.

use std::{
    ffi::CString,
    io::{self, Write as _},
    os::unix::{ffi::OsStrExt as _, thread::JoinHandleExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering},
    },
};

use lavtrace_common::{definitions as names, disk::check};

/// The broker's comm, and its syncfs thread's (fact: both are plain `lavinmq`).
pub const COMM: &str = "lavinmq";
pub const SEGMENT_BYTES: usize = 8 << 20;
/// Fact: the size LavinMQ gives an ack file.
pub const ACK_BYTES: usize = 1_597_832;
const META_BYTES: [u8; 4] = [0; 4];
const VHOST: &str = "/";
/// Boehm GC's stop and restart signals on Linux (fact: SIGPWR then SIGXCPU).
const SIG_SUSPEND: i32 = libc::SIGPWR;
const SIG_RESTART: i32 = libc::SIGXCPU;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Queues declared, each in its own sha1 dir with a `.queue` file.
    #[arg(long, default_value_t = 2)]
    pub queues: u64,
    /// Segments (msgs.N, acks.N, meta.N) per queue.
    #[arg(long, default_value_t = 2)]
    pub segments: u64,
    /// syncfs calls on the data dir from the second `lavinmq` thread.
    #[arg(long, default_value_t = 100)]
    pub syncfs: u64,
    /// Queues deleted (the first ones declared): queue.delete, unlink and munmap.
    #[arg(long, default_value_t = 1)]
    pub delete: u64,
    /// Stop-the-world GC bursts (SIGPWR, rt_sigsuspend, SIGXCPU to every other thread).
    #[arg(long, default_value_t = 3)]
    pub gc_bursts: u64,
    /// The data dir, as the broker's own flag; default: a new one under the temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Leave the data dir in place at the end.
    #[arg(long)]
    pub keep: bool,
    /// After `done`, stay (answering SIGUSR1 with a dump) until stdin closes.
    #[arg(long)]
    pub wait: bool,
    /// The last queue's name instead of `perf-test-N`: one chosen by someone hostile
    /// (escapes, newlines; AMQP allows them), written to its `.queue` and definitions.amqp.
    #[arg(long)]
    pub queue_name: Option<String>,
}

/// Collections done so far: the dump's `garbage collection cycle number`.
static GC_CYCLES: AtomicU64 = AtomicU64::new(0);
/// Threads stopped / resumed in the current burst.
static STOPPED: AtomicU64 = AtomicU64::new(0);
static RESUMED: AtomicU64 = AtomicU64::new(0);

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// One queue's names, made before the run so that the run allocates nothing.
struct Queue {
    declare: Vec<u8>,
    delete: Vec<u8>,
    dir: CString,
    queue_file: CString,
    name: String,
    /// (msgs.N, acks.N, meta.N)
    segments: Vec<[CString; 3]>,
    /// (msgs, acks) addresses once mapped.
    mapped: Vec<(usize, usize)>,
}

impl Queue {
    fn new(vhost: &Path, name: String, segments: u64) -> io::Result<Queue> {
        let dir = vhost.join(names::dir_hash(&name));
        let segments = (1..=segments)
            .map(|i| {
                let file = |kind: &str| cpath(&dir.join(format!("{kind}.{i:010}")));
                Ok([file("msgs")?, file("acks")?, file("meta")?])
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Queue {
            declare: names::queue_declare(&name),
            delete: names::queue_delete(&name),
            queue_file: cpath(&dir.join(".queue"))?,
            dir: cpath(&dir)?,
            mapped: Vec::with_capacity(segments.len()),
            segments,
            name,
        })
    }
}

/// The broker's data dir and the descriptors it holds open.
pub struct Broker {
    root: PathBuf,
    /// O_RDONLY|O_DIRECTORY on the root: what the confirm thread passes to syncfs.
    dir_fd: i32,
    /// `.lock`, held open as the broker does (and how lavtrace can find the data dir).
    lock_fd: i32,
    definitions_fd: i32,
    exchange: Vec<u8>,
    queues: Vec<Queue>,
}

impl Broker {
    /// Lays out the data dir up to the vhost (what exists before the broker takes requests).
    pub fn create(
        root: &Path,
        queues: u64,
        segments: u64,
        last_name: Option<&str>,
    ) -> io::Result<Broker> {
        let vhost_hash = names::dir_hash(VHOST);
        let vhost = root.join(&vhost_hash);
        std::fs::create_dir_all(&vhost)?;
        std::fs::write(
            root.join("vhosts.json"),
            format!(r#"[{{"name":"{VHOST}","dir":"{vhost_hash}"}}]"#),
        )?;
        std::fs::write(vhost.join(".vhost"), b"")?;
        std::fs::write(
            vhost.join("definitions.amqp"),
            names::DEFINITIONS_VERSION.to_ne_bytes(),
        )?;
        let open = |p: PathBuf, flags: i32| -> io::Result<i32> {
            let c = cpath(&p)?;
            // SAFETY: a valid NUL-terminated path.
            let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
            Ok(check(fd.into(), "open")? as i32)
        };
        Ok(Broker {
            dir_fd: open(root.to_path_buf(), libc::O_RDONLY | libc::O_DIRECTORY)?,
            lock_fd: open(root.join(".lock"), libc::O_RDWR | libc::O_CREAT)?,
            definitions_fd: open(
                vhost.join("definitions.amqp"),
                libc::O_WRONLY | libc::O_APPEND,
            )?,
            exchange: names::exchange_declare("amq.direct", "direct"),
            queues: (1..=queues)
                .map(|i| {
                    let name = match last_name {
                        Some(n) if i == queues => n.to_string(),
                        _ => format!("perf-test-{i}"),
                    };
                    Queue::new(&vhost, name, segments)
                })
                .collect::<io::Result<_>>()?,
            root: root.to_path_buf(),
        })
    }

    /// Appends one record to definitions.amqp and fsyncs it, as every declare and delete does.
    fn save(&self, record: &[u8]) -> io::Result<()> {
        // SAFETY: our own fd and a live buffer of that length.
        unsafe {
            let n = libc::write(self.definitions_fd, record.as_ptr().cast(), record.len());
            if n != record.len() as isize {
                return Err(io::Error::other("short write to definitions.amqp"));
            }
            check(libc::fsync(self.definitions_fd).into(), "fsync")?;
        }
        Ok(())
    }

    /// exchange.declare, then each queue: queue.declare, its dir, `.queue` and segments.
    pub fn declare_all(&mut self) -> io::Result<()> {
        self.save(&self.exchange)?;
        for i in 0..self.queues.len() {
            self.save(&self.queues[i].declare)?;
            let q = &mut self.queues[i];
            // SAFETY: valid NUL-terminated path.
            let rc = unsafe { libc::mkdir(q.dir.as_ptr(), 0o755) };
            check(rc.into(), "mkdir")?;
            write_file(&q.queue_file, q.name.as_bytes())?;
            for [msgs, acks, meta] in &q.segments {
                let m = map_file(
                    msgs,
                    SEGMENT_BYTES,
                    libc::PROT_READ | libc::PROT_WRITE,
                    true,
                )?;
                // A message, written through the mapping as LavinMQ writes them.
                // SAFETY: the first bytes of a fresh 8 MiB mapping of ours.
                unsafe { std::ptr::write_bytes(m as *mut u8, 0x42, 64) };
                let a = map_file(acks, ACK_BYTES, libc::PROT_WRITE, false)?;
                write_file(meta, &META_BYTES)?;
                q.mapped.push((m, a));
            }
        }
        Ok(())
    }

    /// The first `n` queues: queue.delete saved, then each file unlinked and unmapped.
    pub fn delete_first(&mut self, n: usize) -> io::Result<()> {
        for i in 0..n {
            self.save(&self.queues[i].delete)?;
            let q = &mut self.queues[i];
            for ([msgs, acks, meta], (m, a)) in q.segments.iter().zip(q.mapped.drain(..)) {
                // SAFETY: unlinking valid paths and unmapping our own mappings, which nothing
                // refers to afterwards.
                unsafe {
                    check(libc::unlink(msgs.as_ptr()).into(), "unlink")?;
                    check(libc::munmap(m as *mut _, SEGMENT_BYTES).into(), "munmap")?;
                    check(libc::unlink(acks.as_ptr()).into(), "unlink")?;
                    check(libc::munmap(a as *mut _, ACK_BYTES).into(), "munmap")?;
                    check(libc::unlink(meta.as_ptr()).into(), "unlink")?;
                }
            }
            // SAFETY: valid paths.
            unsafe {
                check(libc::unlink(q.queue_file.as_ptr()).into(), "unlink")?;
                check(libc::rmdir(q.dir.as_ptr()).into(), "rmdir")?;
            }
        }
        Ok(())
    }

    fn close(&self) {
        for fd in [self.dir_fd, self.lock_fd, self.definitions_fd] {
            // SAFETY: our own descriptors, closed once (by Drop).
            unsafe { libc::close(fd) };
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_file(path: &CString, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: a valid path; the fd is ours until closed here; a live buffer.
    unsafe {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let fd = check(libc::open(path.as_ptr(), flags, 0o644).into(), "open")? as i32;
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(io::Error::other("short write"));
        }
    }
    Ok(())
}

/// open, ftruncate, mmap MAP_SHARED, (madvise DONTDUMP), close: the fd is gone right after
/// the mmap, as in LavinMQ 2.x.
fn map_file(path: &CString, len: usize, prot: i32, dontdump: bool) -> io::Result<usize> {
    // SAFETY: a valid path; the fd is ours until closed below; the mapping is fresh.
    unsafe {
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC;
        let fd = check(libc::open(path.as_ptr(), flags, 0o644).into(), "open")? as i32;
        if libc::ftruncate(fd, len as libc::off_t) != 0 {
            libc::close(fd);
            return Err(io::Error::last_os_error());
        }
        let addr = libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0);
        if addr == libc::MAP_FAILED {
            libc::close(fd);
            return Err(io::Error::last_os_error());
        }
        if dontdump {
            check(
                libc::madvise(addr, len, libc::MADV_DONTDUMP).into(),
                "madvise",
            )?;
        }
        libc::close(fd);
        Ok(addr as usize)
    }
}

/// SIGPWR: ack the stop, wait in rt_sigsuspend for SIGXCPU (blocked until then by the
/// handler's mask, so a restart sent early stays pending), ack the restart.
extern "C" fn on_suspend(_: libc::c_int) {
    STOPPED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: sigset functions on a local set; sigsuspend is async-signal-safe.
    unsafe {
        let mut wait: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut wait);
        libc::sigdelset(&mut wait, SIG_RESTART);
        libc::sigsuspend(&wait);
    }
    RESUMED.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_restart(_: libc::c_int) {}

/// SIGUSR1: the dump, in LavinMQ's layout, written with write(2) from a stack buffer (no
/// allocation or lock in a signal handler).
extern "C" fn on_dump(_: libc::c_int) {
    let mut buf = Buf::default();
    buf.push(b"GC\n  garbage collection cycle number: ");
    buf.number(GC_CYCLES.load(Ordering::SeqCst));
    buf.push(b"\n  marker threads: 0\nFibers:\n#<Fiber:0x");
    buf.hex(&GC_CYCLES as *const _ as u64);
    buf.push(b": main>\n#<Fiber:0x");
    buf.hex(&STOPPED as *const _ as u64);
    buf.push(b": Publish confirm loop>\n");
    // SAFETY: write(2) of a live stack buffer; async-signal-safe.
    unsafe { libc::write(1, buf.bytes.as_ptr().cast(), buf.len) };
}

struct Buf {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Buf {
    fn default() -> Buf {
        Buf {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Buf {
    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    fn digits(&mut self, mut v: u64, base: u64) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b"0123456789abcdef"[(v % base) as usize];
            v /= base;
            if v == 0 {
                break;
            }
        }
        self.push(&tmp[i..]);
    }

    fn number(&mut self, v: u64) {
        self.digits(v, 10);
    }

    fn hex(&mut self, v: u64) {
        self.digits(v, 16);
    }
}

fn install(
    sig: i32,
    handler: extern "C" fn(libc::c_int),
    also_block: Option<i32>,
) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handlers are async-signal-safe (above).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if let Some(s) = also_block {
            libc::sigaddset(&mut sa.sa_mask, s);
        }
        check(
            libc::sigaction(sig, &sa, std::ptr::null_mut()).into(),
            "sigaction",
        )?;
    }
    Ok(())
}

/// One collection: every thread in `others` stopped, then restarted, as Boehm GC does.
fn gc_burst(others: &[libc::pthread_t]) {
    STOPPED.store(0, Ordering::SeqCst);
    RESUMED.store(0, Ordering::SeqCst);
    let n = others.len() as u64;
    let signal_all = |sig| {
        for &t in others {
            // SAFETY: live threads of ours (they never exit).
            unsafe { libc::pthread_kill(t, sig) };
        }
    };
    let wait_for = |count: &AtomicU64| {
        while count.load(Ordering::SeqCst) < n {
            std::thread::yield_now();
        }
    };
    signal_all(SIG_SUSPEND);
    wait_for(&STOPPED);
    signal_all(SIG_RESTART);
    wait_for(&RESUMED);
    GC_CYCLES.fetch_add(1, Ordering::SeqCst);
}

/// The second `lavinmq` thread (LavinMQ's publish-confirm loop): syncfs `n` times on `fd`
/// between the go and done meetings, then parked for good (an exit would unmap its stack).
fn spawn_confirm_loop(fd: i32, n: u64, barrier: Arc<Barrier>) -> io::Result<libc::pthread_t> {
    let started = barrier.clone();
    let handle = std::thread::Builder::new()
        .name(COMM.into())
        .spawn(move || {
            barrier.wait(); // started
            barrier.wait(); // go
            for _ in 0..n {
                // SAFETY: syncfs on a descriptor the process keeps open until it exits.
                unsafe { libc::syncfs(fd) };
            }
            barrier.wait(); // done
            loop {
                std::thread::park();
            }
        })?;
    started.wait();
    Ok(handle.into_pthread_t())
}

fn default_root() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("lavtrace-lavinmq-{}-{nanos}", std::process::id()))
}

pub fn run(args: &Args) -> io::Result<()> {
    if args.delete > args.queues {
        return Err(io::Error::other(format!(
            "--delete {} is more than --queues {}",
            args.delete, args.queues
        )));
    }
    reserve_heap();
    let root = args.data_dir.clone().unwrap_or_else(default_root);
    let mut broker = Broker::create(
        &root,
        args.queues,
        args.segments,
        args.queue_name.as_deref(),
    )?;
    install(SIG_SUSPEND, on_suspend, Some(SIG_RESTART))?;
    install(SIG_RESTART, on_restart, None)?;
    install(libc::SIGUSR1, on_dump, None)?;
    let barrier = Arc::new(Barrier::new(2));
    let confirm = spawn_confirm_loop(broker.dir_fd, args.syncfs, barrier.clone())?;
    let announce = format!("data-dir {}", root.display());
    let result = lavtrace_common::start::ready_then(|| {
        println!("{announce}");
        barrier.wait(); // go
        broker.declare_all()?;
        broker.delete_first(args.delete as usize)?;
        barrier.wait(); // done: the confirm thread is parked
        for _ in 0..args.gc_bursts {
            gc_burst(&[confirm]);
        }
        Ok(())
    });
    if result.is_ok() && args.wait {
        super::wait_for_eof()?;
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(broker.root());
    }
    if result.is_ok() {
        io::stdout().flush()?;
        // Leave without the runtime's cleanup (it unmaps the main thread's signal stack) and
        // without closing the fds: the run holds exactly the calls above.
        // SAFETY: stdout is flushed; nothing else is pending.
        unsafe { libc::_exit(0) };
    }
    result
}

/// Grows the heap once, now, and keeps it: the traced run, its data dir's removal included,
/// must make no brk (the mmap family counts every one), whatever else the binary allocated.
fn reserve_heap() {
    // SAFETY: mallopt with integer arguments, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    drop(std::hint::black_box(vec![0u8; 4 << 20]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_is_held_open() {
        // What lavtrace finds the data dir by when the command line does not say.
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::create(dir.path(), 1, 1, None).unwrap();
        let lock = std::fs::read_link(format!("/proc/self/fd/{}", broker.lock_fd)).unwrap();
        assert_eq!(lock, dir.path().join(".lock"));
    }

    #[test]
    fn the_dump_has_the_cycle_number() {
        let mut buf = Buf::default();
        buf.push(b"n: ");
        buf.number(1234);
        buf.push(b" 0x");
        buf.hex(0xbeef);
        assert_eq!(&buf.bytes[..buf.len], b"n: 1234 0xbeef");
    }
}
