//! What lavtrace knows about LavinMQ beyond the kernel's view: the names of vhosts and
//! queues behind the sha1 directories, where a broker keeps its data, and the limits it runs
//! into. Wired into the families by the session; nothing here attaches anything.

// Built ahead of its callers: the storage families, `check --pid` and the live view take
// these up when they are wired in (issue 13); until then only the workload uses names.
#![allow(dead_code)]

pub mod data_dir;
pub mod limits;
pub mod names;
