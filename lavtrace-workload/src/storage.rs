//! Mode `storage`: what a LavinMQ broker does to its disk (see `lavtrace_common::disk`), with
//! counts from flags, and a "Publish confirm loop" thread calling syncfs on the data dir.
//!
//! Everything that would add calls of its own (the thread, its stack, the buffers) is set up
//! before `ready`, and the thread never exits (its exit would madvise its stack), so the
//! traced run holds exactly the calls below.

use std::{
    ffi::CString,
    io,
    sync::{Arc, Barrier},
};

use lavtrace_common::disk::{CONFIRM_THREAD, DataDir, Segment, save_definitions};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Segments (and ack files) to create, map, write, sync, unmap and delete.
    #[arg(long, default_value_t = 4)]
    pub segments: u64,
    /// syncfs calls on the data dir from the "Publish confirm loop" thread.
    #[arg(long, default_value_t = 200)]
    pub syncfs: u64,
    /// A pause between two syncfs calls, to spread them over many intervals.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub syncfs_pace: std::time::Duration,
    /// fsync calls on definitions.amqp (plus one fdatasync through a dup of its fd and one
    /// sync_file_range, when > 0).
    #[arg(long, default_value_t = 3)]
    pub fsyncs: u64,
    /// sync(2) calls (every filesystem of the host).
    #[arg(long, default_value_t = 0)]
    pub sync: u64,
    /// Segments mapped before `ready` (msgs.0000000001, ...; fd closed at once), consumed
    /// during the run: the tracer knows them only from /proc/PID/maps.
    #[arg(long, default_value_t = 0)]
    pub premapped: u64,
    /// A burst of this many msync(MS_ASYNC) and madvise(MADV_NORMAL) on a page mapped before
    /// `ready`: cheap calls, as fast as the CPU goes, and nothing else in the rings.
    #[arg(long, default_value_t = 0)]
    pub burst: u64,
    /// Stay this long after `done` before exiting, so a tracer's intervals cover the run.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub linger: std::time::Duration,
    /// A name chosen by someone hostile (escapes, newlines): the confirm thread takes it
    /// (PR_SET_NAME, the kernel keeps 15 bytes), and the run writes, fsyncs and removes a
    /// file of that name in the queue dir.
    #[arg(long)]
    pub hostile_name: Option<String>,
}

/// The "Publish confirm loop" thread: started (and named) now, it waits at `barrier`, then
/// calls syncfs `n` times on `fd` (`pace` apart), meets `barrier` again and sleeps until the process exits.
/// `rename`: a name for the thread other than CONFIRM_THREAD, set by the thread itself.
pub fn spawn_confirm_loop(
    fd: i32,
    n: u64,
    pace: std::time::Duration,
    barrier: Arc<Barrier>,
    rename: Option<CString>,
) -> io::Result<()> {
    let started = barrier.clone();
    std::thread::Builder::new()
        .name(CONFIRM_THREAD.into())
        .spawn(move || {
            if let Some(name) = rename {
                // SAFETY: PR_SET_NAME reads a NUL-terminated string (at most 16 bytes used).
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            }
            barrier.wait(); // started
            barrier.wait(); // go
            for _ in 0..n {
                // SAFETY: syncfs on a descriptor the process keeps open.
                unsafe { libc::syncfs(fd) };
                if !pace.is_zero() {
                    std::thread::sleep(pace);
                }
            }
            barrier.wait(); // done
            loop {
                std::thread::park();
            }
        })?;
    started.wait();
    Ok(())
}

pub fn run(args: &Args) -> io::Result<()> {
    let dir = DataDir::create()?;
    let barrier = Arc::new(Barrier::new(2));
    let hostile = args
        .hostile_name
        .as_deref()
        .map(|n| {
            let file = CString::new(dir.queue.join(n).into_os_string().into_encoded_bytes());
            Ok::<_, io::Error>((CString::new(n)?, file?))
        })
        .transpose()?;
    spawn_confirm_loop(
        dir.fd,
        args.syncfs,
        args.syncfs_pace,
        barrier.clone(),
        hostile.as_ref().map(|(n, _)| n.clone()),
    )?;
    let mut segments = Vec::with_capacity((args.premapped + args.segments) as usize);
    // Names of every segment, made now rather than during the run (allocations).
    // Numbered from 1 as LavinMQ does; the premapped ones first.
    let names: Vec<(CString, CString)> = (1..=args.premapped + args.segments)
        .map(|i| Ok((dir.segment(i)?, dir.acks(i)?)))
        .collect::<io::Result<_>>()?;
    let (early, late) = names.split_at(args.premapped as usize);
    for (seg, acks) in early {
        segments.push(Segment::publish(seg, acks)?);
    }
    let page = if args.burst > 0 {
        // SAFETY: a fresh anonymous page.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        p
    } else {
        std::ptr::null_mut()
    };
    let result = lavtrace_common::start::ready_then(|| {
        barrier.wait(); // go
        save_definitions(&dir, args.fsyncs)?;
        if let Some((_, file)) = &hostile {
            hostile_file(file)?;
        }
        for _ in 0..args.sync {
            // SAFETY: no arguments.
            unsafe { libc::sync() };
        }
        for _ in 0..args.burst {
            // SAFETY: our own page.
            unsafe {
                libc::msync(page, 4096, libc::MS_ASYNC);
                libc::madvise(page, 4096, libc::MADV_NORMAL);
            }
        }
        for (seg, acks) in late {
            segments.push(Segment::publish(seg, acks)?);
        }
        for (seg, (seg_name, acks_name)) in segments.drain(..).zip(&names) {
            seg.consume(seg_name, acks_name)?;
        }
        barrier.wait(); // done
        Ok(())
    });
    if result.is_ok() {
        std::thread::sleep(args.linger);
        // After the linger: a tracer still catching up finds the data dir as it was.
        dir.remove();
        // Leave without closing the data dir's fd (a record in the rings) and without the
        // runtime's cleanup, which unmaps the main thread's signal stack: the run holds
        // exactly the calls above. The tree is already removed.
        // SAFETY: stdout was flushed by ready_then; nothing else is pending.
        unsafe { libc::_exit(0) };
    }
    drop(dir);
    result
}

/// Creates `path`, writes a byte, fsyncs it once, closes and removes it.
fn hostile_file(path: &CString) -> io::Result<()> {
    use lavtrace_common::disk::check;
    // SAFETY: a NUL-terminated path; the fd is closed below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    check(fd.into(), "open hostile file")?;
    // SAFETY: one byte from a static buffer to our own fd.
    let written = unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    check(written as libc::c_long, "write")?;
    // SAFETY: our own fd.
    check(unsafe { libc::fsync(fd) }.into(), "fsync hostile file")?;
    // SAFETY: our own fd, closed once; the path as above.
    unsafe {
        libc::close(fd);
        libc::unlink(path.as_ptr());
    }
    Ok(())
}
