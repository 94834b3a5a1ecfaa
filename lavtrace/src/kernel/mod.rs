//! The kernel loader: loads the embedded object with the load-time settings the families ask
//! for, and owns nothing family-specific. Every program and link belongs to the returned `Ebpf`
//! (file descriptors), so when lavtrace exits, however it exits, the kernel detaches everything.

mod attach;
pub mod btf;
pub mod caps;
pub mod cut;
pub mod fields;
pub mod kprobe;
mod misses;
mod reach;
pub mod returns;
pub mod tracefs;
pub mod uprobe;

use anyhow::Result;
use aya::{Ebpf, EbpfLoader};
use lavtrace_common::field::FieldSpec;
use tracing::debug;

pub use attach::{Hook, attach_raw_tracepoint, attach_tracepoint, unload};
pub use misses::recursion_misses;
pub use reach::Bystanders;

use crate::error::Fatal;

/// The object built by build.rs from `lavtrace-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lavtrace"));

/// Checks that can fail in ways an operator can fix, before touching the kernel.
pub fn preflight() -> Result<()> {
    caps::check_privileges()?;
    tracefs::ensure_tracefs()?;
    raise_memlock();
    Ok(())
}

/// Everything set in the object before it is loaded: read-only globals (so the verifier
/// prunes what they turn off) and ring sizes. The session fills it from the target and from
/// each loaded family; anything else read at load (tracepoint field offsets, say) adds to it
/// here too, so `load` stays the one place that applies them.
#[derive(Debug, Default)]
pub struct Overrides {
    /// (global name, value bytes in the kernel's layout).
    globals: Vec<(&'static str, Vec<u8>)>,
    /// (ring map name, bytes).
    rings: Vec<(&'static str, u32)>,
    /// (family, the tracepoint fields its programs read): resolved against tracefs in `load`.
    fields: Vec<(&'static str, &'static [FieldSpec])>,
}

impl Overrides {
    pub fn global_u32(&mut self, name: &'static str, value: u32) -> &mut Self {
        self.globals.push((name, value.to_ne_bytes().to_vec()));
        self
    }

    /// A `[u32; N]` global.
    pub fn global_u32s(&mut self, name: &'static str, values: &[u32]) -> &mut Self {
        let bytes = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.globals.push((name, bytes));
        self
    }

    pub fn global_u8(&mut self, name: &'static str, value: u8) -> &mut Self {
        self.globals.push((name, vec![value]));
        self
    }

    pub fn fields(&mut self, family: &'static str, table: &'static [FieldSpec]) -> &mut Self {
        if !table.is_empty() {
            self.fields.push((family, table));
        }
        self
    }

    pub fn ring(&mut self, name: &'static str, bytes: u32) -> &mut Self {
        self.rings.push((name, bytes));
        self
    }
}

/// Gives back to the kernel the heap that loading freed. The kernel's BTF (parsed whole, about
/// 10 MiB) and the parsed object are gone once the programs attach, but glibc keeps freed pages
/// below the top of its heap: without this they stayed in lavtrace's RSS for the whole trace.
pub fn return_load_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas; it touches no
    // live allocation and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's threshold for serving an allocation from its own mapping at the default
/// 128 KiB. Left dynamic, freeing the loader's large buffers raised it to their size, and the
/// next BTF parse then grew the heap instead, which no trim gives back.
pub fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Loads the object with `overrides` applied. A tracepoint field a family reads that this
/// kernel lacks, or has at another size, fails the load naming the family (exit 5).
pub fn load(overrides: &Overrides) -> Result<Ebpf> {
    let offsets = match tracefs::tracefs_dir() {
        Some(dir) => {
            fields::from_tracefs(std::path::Path::new(dir), overrides.fields.iter().copied())
                .map_err(Fatal::Unsupported)?
        }
        None if overrides.fields.is_empty() => fields::Overrides::default(),
        None => return Err(Fatal::Unsupported("tracefs is not mounted".into()).into()),
    };
    let mut loader = EbpfLoader::new();
    // `new` parses the kernel's BTF for itself, and aya 0.14 cannot hand that parse on. Dropping
    // it before the shared parse exists keeps one in memory at a time (two at once were the
    // peak of lavtrace's RSS); the tp_btf program then loads against the same one.
    loader.btf(None);
    let btf = btf::vmlinux();
    loader.btf(btf.as_deref());
    for (name, bytes) in &overrides.globals {
        loader.override_global(name, bytes.as_slice(), true);
    }
    for (global, offset) in &offsets.offsets {
        loader.override_global(global, offset, true);
    }
    for (global, flag) in &offsets.flags {
        loader.override_global(global, flag, true);
    }
    for &(ring, bytes) in &overrides.rings {
        loader.map_max_entries(ring, bytes);
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { ref io_error, .. })
            if io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            anyhow::Error::new(Fatal::Permission(format!(
                "the kernel refused to create BPF maps ({io_error}); run as root"
            )))
        }
        other => anyhow::Error::new(other).context("loading the eBPF object"),
    })?;
    // Kernel-side diagnostics (rare: a full table); absent if no program logs.
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => spawn_logger(logger),
        Err(e) => debug!("no kernel-side log channel: {e}"),
    }
    drop(loader);
    // The relocation scratch and the parsed object are free now.
    return_load_memory();
    Ok(ebpf)
}

fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use the memory cgroup
/// and may not let us raise it at all, which is then harmless.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain struct argument.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
