//! The running kernel's BTF, shared by the attach phase: the loader relocates the object with
//! it and a tp_btf program loads against it. A whole parse holds about 10 MiB, so it lives only
//! until the families that need it have attached (`AttachPhase`), and never two at once (aya's
//! loader parses one of its own first, dropped before this one is made: `kernel::load`).

use std::sync::{Arc, Mutex};

use aya::Btf;

static VMLINUX: Mutex<Option<Arc<Btf>>> = Mutex::new(None);

/// The kernel's BTF (`/sys/kernel/btf/vmlinux`), parsed on first use; None where there is none.
pub fn vmlinux() -> Option<Arc<Btf>> {
    let mut held = VMLINUX.lock().unwrap_or_else(|e| e.into_inner());
    if held.is_none() {
        match Btf::from_sys_fs() {
            Ok(btf) => *held = Some(Arc::new(btf)),
            Err(e) => tracing::debug!("no kernel BTF: {e}"),
        }
    }
    held.clone()
}

/// Held across an attach phase: when it goes, failed or not, the parse goes with it and the
/// freed heap is given back (see `return_load_memory`).
pub struct AttachPhase(());

pub fn attach_phase() -> AttachPhase {
    AttachPhase(())
}

impl AttachPhase {
    /// Nothing more loads against the BTF: drop the parse now (a later `vmlinux` parses again).
    pub fn done_with_btf(&self) {
        if VMLINUX
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            super::return_load_memory();
        }
    }
}

impl Drop for AttachPhase {
    fn drop(&mut self) {
        self.done_with_btf();
        super::return_load_memory();
    }
}
