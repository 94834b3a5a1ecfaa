//! Failures the operator must act on, each with its own exit code (documented in README.md).
//! Everything else is an `anyhow` error with context and exits 1.

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// No such pid, no or several processes with that name, target gone before attach.
    #[error("{0}")]
    Target(String),
    /// The process exists but is no traceable target: lavtrace itself, a kernel thread, a
    /// zombie.
    #[error("{0}")]
    Unsuitable(String),
    /// Not root and missing CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN).
    #[error("{0}")]
    Permission(String),
    /// The kernel lacks something a requested probe family needs (tracefs, a hook, BTF).
    #[error("{0}")]
    Unsupported(String),
    /// The `--metrics` address cannot be listened on (in use, not an address of this host).
    #[error("{0}")]
    Metrics(String),
    /// A binary lavtrace runs is not installed next to it (`lavtrace-workload` for
    /// `demo --amqp`).
    #[error("{0}")]
    Missing(String),
}

impl Fatal {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Fatal::Target(_) => 3,
            Fatal::Permission(_) => 4,
            Fatal::Unsupported(_) => 5,
            Fatal::Metrics(_) => 6,
            Fatal::Missing(_) => 7,
            Fatal::Unsuitable(_) => 8,
        })
    }
}

/// Exit code of an error chain: the first `Fatal` in it decides, anything else is 1.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Fatal>())
        .map_or(ExitCode::FAILURE, Fatal::exit_code)
}
