//! Kernel netlink interfaces, our own code over the kernel ABI.
//!
//! [`proc_connector`] parses process events from the kernel's connector (`cn_proc`);
//! [`sock_diag`] parses inet socket dumps (`NETLINK_SOCK_DIAG`, what `ss` reads): pure
//! functions over byte slices, so they are easy to test and fuzz. [`ProcSocket`] and
//! [`DiagSocket`] are the thin socket glue around them; a [`DiagSocket`] can be opened
//! in another network namespace. No async runtime: callers pick their own threads.
//!
//! Deliberately absent: any interpretation of the events or sockets (process tables,
//! `/proc` reads, socket owners). That belongs to the plugin that uses them.

pub mod proc_connector;
pub mod sock_diag;
mod socket;

pub use sock_diag::{DiagError, DiagSocket, DumpStats, Family, InetSocket, Protocol};
pub use socket::{ProcSocket, RecvError, SocketOptions};
