//! uprobes on a target's shared library, attached for that one process: the library as the
//! target maps it (`/proc/PID/maps`), its exported functions' file offsets (aliases share
//! one), and the attach itself. Knows no family: they say which library and functions.
//!
//! A uprobe attached through perf_event_open with a pid puts its breakpoint only into that
//! process's memory (the kernel filters the uprobe consumer by mm), so no other process
//! traps; every thread of the target does.

use std::{collections::HashMap, num::NonZeroU32, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeScope},
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use tracing::debug;

use super::Hook;
use crate::error::Fatal;

/// A shared library mapped by the target.
#[derive(Debug, Clone)]
pub struct Library {
    /// As `/proc/PID/maps` names it (in the target's mount namespace): what `via` shows.
    pub path: String,
    /// The same file as lavtrace opens and attaches it: through `/proc/PID/root`, so a
    /// target in another mount namespace (a container) gets its own file.
    pub open_path: PathBuf,
    /// Exported, defined function symbols → file offset and size.
    symbols: HashMap<String, (u64, u64)>,
}

impl Library {
    /// The library of `pid` whose file is named `soname` (e.g. `libc.so.6`). Err: why there
    /// is none to attach to (a static binary maps none).
    pub fn of(pid: u32, soname: &str) -> Result<Library, String> {
        Library::where_named(pid, |name| name == soname).map_err(|e| {
            e.unwrap_or_else(|| {
                format!("pid {pid} maps no {soname} (a static binary, or no glibc)")
            })
        })
    }

    /// The first library of `pid` whose file name starts with `prefix` (`libssl.so`: any
    /// version). Err: why there is none.
    pub fn with_prefix(pid: u32, prefix: &str) -> Result<Library, String> {
        Library::where_named(pid, |name| name.starts_with(prefix))
            .map_err(|e| e.unwrap_or_else(|| format!("pid {pid} maps no {prefix}*")))
    }

    /// Err(None): no mapping matches.
    fn where_named(pid: u32, matches: impl Fn(&str) -> bool) -> Result<Library, Option<String>> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| Some(format!("cannot read /proc/{pid}/maps: {e}")))?;
        let path = mapped_file_where(&maps, matches).ok_or(None)?;
        Library::at(path, PathBuf::from(format!("/proc/{pid}/root{path}"))).map_err(Some)
    }

    /// The library file at `open_path`, named `path`.
    pub(crate) fn at(path: &str, open_path: PathBuf) -> Result<Library, String> {
        let bytes = std::fs::read(&open_path)
            .map_err(|e| format!("cannot read {}: {e}", open_path.display()))?;
        let symbols = exported_functions(&bytes).map_err(|e| format!("{path}: {e}"))?;
        Ok(Library {
            path: path.to_string(),
            open_path,
            symbols,
        })
    }

    /// The file offset of function `name`, if the library exports it.
    pub fn offset(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).map(|&(offset, _)| offset)
    }

    /// Function `name`'s file offset and machine code (its symbol's size), read from the
    /// file now. None: not exported; Err: the file could not be read.
    pub fn code(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, String> {
        use std::os::unix::fs::FileExt as _;
        let Some(&(offset, size)) = self.symbols.get(name) else {
            return Ok(None);
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s <= 1 << 20)
            .ok_or_else(|| format!("{}:{name}: implausible size {size}", self.path))?;
        let mut code = vec![0; size];
        std::fs::File::open(&self.open_path)
            .and_then(|f| f.read_exact_at(&mut code, offset))
            .map_err(|e| format!("cannot read {}:{name}: {e}", self.path))?;
        Ok(Some((offset, code)))
    }
}

/// The path of the first file mapping named `soname` (its last path component). A file
/// replaced since it was mapped (`(deleted)`) is not the file at that path any more.
#[cfg(test)]
fn mapped_file<'a>(maps: &'a str, soname: &str) -> Option<&'a str> {
    mapped_file_where(maps, |name| name == soname)
}

/// The path of the first file mapping whose last path component `matches`.
fn mapped_file_where(maps: &str, matches: impl Fn(&str) -> bool) -> Option<&str> {
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode path: the path is what follows the fifth field.
            let mut rest = line;
            for _ in 0..5 {
                rest = rest.trim_start().split_once(char::is_whitespace)?.1;
            }
            Some(rest.trim())
        })
        .find(|path| path.starts_with('/') && path.rsplit('/').next().is_some_and(&matches))
}

/// Defined function symbols of the dynamic symbol table with their file offsets (the
/// address a uprobe takes: the symbol's address within its section, from the section's
/// file offset) and sizes.
fn exported_functions(bytes: &[u8]) -> Result<HashMap<String, (u64, u64)>, String> {
    let obj = object::File::parse(bytes).map_err(|e| format!("not an ELF object: {e}"))?;
    let mut out = HashMap::new();
    for sym in obj.dynamic_symbols() {
        if !sym.is_definition() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let (Ok(name), Some(index)) = (sym.name(), sym.section_index()) else {
            continue;
        };
        let Ok(section) = obj.section_by_index(index) else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        let Some(offset) = sym
            .address()
            .checked_sub(section.address())
            .and_then(|o| o.checked_add(file_offset))
        else {
            continue;
        };
        out.insert(name.to_string(), (offset, sym.size()));
    }
    Ok(out)
}

/// Loads `program` (a uprobe or uretprobe) unless it is loaded already, and attaches it at
/// `offset` of `lib` for `pid` only; `symbol` names the place in the returned `Hook`.
pub fn attach_uprobe(
    ebpf: &mut Ebpf,
    family: &'static str,
    program: &'static str,
    lib: &Library,
    symbol: &str,
    offset: u64,
    pid: u32,
) -> Result<Hook> {
    let prog: &mut UProbe = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a uprobe program"))?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
    }
    let kind = match prog.kind() {
        aya::programs::ProbeKind::Entry => "uprobe",
        aya::programs::ProbeKind::Return => "uretprobe",
    };
    let via = format!("{kind} {}:{symbol} (pid {pid})", lib.path);
    let scope = NonZeroU32::new(pid)
        .map(UProbeScope::OneProcess)
        .with_context(|| format!("{via}: no process 0"))?;
    prog.attach(
        UProbeAttachLocation::AbsoluteOffset(offset),
        &lib.open_path,
        scope,
    )
    .map_err(|e| anyhow::Error::new(Fatal::Unsupported(format!("cannot attach {via}: {e}"))))?;
    debug!(program, "attached: {via}");
    Ok(Hook {
        family,
        program,
        via,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapped_file_is_found_by_its_last_component_only() {
        let maps = "\
7f0000000000-7f0000028000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f00001bd000 r-xp 00028000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1000000000-7f1000001000 rw-p 00000000 00:00 0
7f2000000000-7f2000001000 r--p 00000000 fe:01 99 /opt/libc.so.6.bak
";
        assert_eq!(
            mapped_file(maps, "libc.so.6"),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        let spaced = "7f0-7f1 r-xp 0 fe:01 7 /tmp/a dir/libc.so.6\n";
        assert_eq!(
            mapped_file(spaced, "libc.so.6"),
            Some("/tmp/a dir/libc.so.6")
        );
        assert_eq!(
            mapped_file(
                "7f0-7f1 r-xp 0 fe:01 7 /tmp/libc.so.6 (deleted)\n",
                "libc.so.6"
            ),
            None
        );
        assert_eq!(mapped_file("garbage\n\n  \n", "libc.so.6"), None);
        assert_eq!(
            mapped_file("7f0-7f1 r-xp 0 00:00 0 [vdso]\n", "libc.so.6"),
            None
        );
    }

    /// This test binary's own glibc: aliases resolve to one offset, and the offset is where
    /// the function's code is in the file.
    #[test]
    fn aliases_of_this_processes_libc_share_one_offset() {
        let lib = Library::of(std::process::id(), "libc.so.6").expect("tests link glibc");
        assert!(lib.open_path.starts_with("/proc/"));
        assert!(std::path::Path::new(&lib.path).is_file());
        let fsync = lib.offset("fsync").expect("glibc exports fsync");
        assert!(fsync > 0);
        assert_eq!(lib.offset("mmap"), lib.offset("mmap64"));
        assert_eq!(lib.offset("open"), lib.offset("open64"));
        assert_ne!(lib.offset("fsync"), lib.offset("fdatasync"));
        assert_eq!(lib.offset("no_such_function_here"), None);
    }

    #[test]
    fn anything_but_an_elf_object_is_an_error_not_a_panic() {
        assert!(exported_functions(b"").is_err());
        assert!(exported_functions(&[0x7f, b'E', b'L', b'F', 2, 1, 1]).is_err());
    }
}
