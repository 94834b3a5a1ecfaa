//! What lavtrace knows about LavinMQ beyond the kernel's view: the names of vhosts and
//! queues behind the sha1 directories, where a broker keeps its data, and the limits it runs
//! into. Wired into the families by the session; nothing here attaches anything.

pub mod data_dir;
pub mod limits;
pub mod names;
