//! `/proc` for the HIDS: parsers over byte slices (no I/O, easy to fuzz) and
//! [`ProcDir`], a reader pinned to one process.
//!
//! Every parser accepts whatever the kernel (or an attacker naming a process) can put in
//! these files: non-UTF-8 bytes, `)` and spaces in a command name, missing lines on old
//! kernels. Text is decoded lossily; nothing panics.
//!
//! [`usage::Sampler`] samples the CPU and memory of a set of process trees.
//!
//! [`fds::socket_owners`] maps socket inodes to the processes holding them in one
//! bounded walk of `/proc/*/fd`; [`fds::net_namespaces`] lists the network namespaces
//! in use, one live process each.
//!
//! Deliberately absent: caching and interpretation (process tables, user names).

mod parse;
mod reader;

pub use fds::{
    holds_socket, net_namespaces, socket_owners, socket_owners_of, FdOwner, Owners, SocketOwners,
    WalkOptions, WalkStats,
};
pub use parse::*;
pub use reader::{list_pids, ProcDir, ReadOutcome};

/// The kernel's `USER_HZ`: `/proc` times are in these ticks. Fixed at 100 by the Linux
/// ABI on every architecture we run on, whatever `CONFIG_HZ` is.
pub const TICKS_PER_SEC: u64 = 100;

pub mod fds;
pub mod host;
pub mod tracefs;
pub mod usage;
