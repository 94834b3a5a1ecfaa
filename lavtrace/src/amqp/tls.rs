//! AMQPS through the target's OpenSSL (LavinMQ links libssl dynamically): uprobes on its
//! SSL_read, SSL_write, SSL_read_ex and SSL_write_ex, for its pid only, whose plaintext the
//! kernel walks as it walks the socket calls' bytes (`lavtrace-ebpf/src/amqp/ssl.rs`).
//!
//! Each function gets a uprobe at its entry and one at each of its `ret` instructions, never
//! a uretprobe: a uretprobe rewrites the return address on the stack and keeps a stack of
//! pending returns per thread, which Crystal's fibers break. A fiber waits for its socket
//! inside SSL_read (its BIO yields) while other fibers of the thread run SSL calls on other
//! stacks; the kernel drops the pending returns it takes for abandoned, and a return that
//! then finds none gets SIGILL: the broker would die. The `ret`s are found by decoding the
//! functions (`kernel::returns`); a function that can leave another way is not probed, and
//! the AMQPS connections are then counted as "TLS, not parsed", with the reason.
//!
//! With kTLS (`--tls-ktls`), OpenSSL still returns the plaintext from these calls, so this
//! covers it too.

use aya::Ebpf;
use lavtrace_common::amqp::{SSL_ENTRY_PROGRAMS, SSL_RETURN_PROGRAM};
use tracing::debug;

use crate::kernel::{
    Hook, returns,
    uprobe::{Library, attach_uprobe},
};

/// Where the SSL probes of `pid` go: (program, the place's name, its file offset), returns
/// before their function's entry, so no entry is saved without its return probed.
pub struct Places {
    pub library: Library,
    pub places: Vec<(&'static str, String, u64)>,
}

impl Places {
    /// "SSL_read (1 ret), ...": what `check` says of them.
    pub fn summary(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        for (function, _) in SSL_ENTRY_PROGRAMS {
            let rets = self
                .places
                .iter()
                .filter(|(p, name, _)| {
                    *p == SSL_RETURN_PROGRAM
                        && name
                            .strip_prefix(function)
                            .is_some_and(|r| r.starts_with("+"))
                })
                .count();
            if rets > 0 {
                out.push(format!("{function} ({rets} ret)"));
            }
        }
        format!("plaintext from {}: {}", self.library.path, out.join(", "))
    }
}

/// The places in `pid`'s libssl; Err: why the plaintext cannot be had.
pub fn places(pid: u32) -> Result<Places, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("the SSL calls' returns are found on x86-64 only".into());
    }
    let lib = Library::with_prefix(pid, "libssl.so")?;
    let mut places = Vec::new();
    for (function, entry) in SSL_ENTRY_PROGRAMS {
        let Some((offset, code)) = lib.code(function)? else {
            // OpenSSL before 1.1.1 has no _ex forms.
            if function.ends_with("_ex") {
                continue;
            }
            return Err(format!("{} exports no {function}", lib.path));
        };
        let rets =
            returns::ret_offsets(&code).map_err(|e| format!("{}:{function}: {e}", lib.path))?;
        for r in rets {
            places.push((SSL_RETURN_PROGRAM, format!("{function}+{r:#x}"), offset + r));
        }
        places.push((entry, function.to_string(), offset));
    }
    Ok(Places {
        library: lib,
        places,
    })
}

/// The hooks, and the library they are in; Err: why the plaintext cannot be had. Every place
/// is found first: a function that cannot be probed leaves nothing attached.
pub fn attach(ebpf: &mut Ebpf, pid: u32) -> Result<(Vec<Hook>, String), String> {
    let Places {
        library: lib,
        places,
    } = places(pid)?;
    let mut hooks = Vec::with_capacity(places.len());
    for (program, symbol, offset) in places {
        let hook = attach_uprobe(ebpf, super::FAMILY, program, &lib, &symbol, offset, pid)
            .map_err(|e| format!("{e:#}"))?;
        hooks.push(hook);
    }
    debug!(
        hooks = hooks.len(),
        library = lib.path,
        "amqp: SSL calls probed"
    );
    Ok((hooks, lib.path))
}
