//! Kernel netlink interfaces, our own code over the kernel ABI.
//!
//! [`proc_connector`] parses process events from the kernel's connector (`cn_proc`):
//! pure functions over byte slices, so they are easy to test and fuzz. [`ProcSocket`] is
//! the thin socket glue around them. No async runtime: callers pick their own threads.
//!
//! Deliberately absent: any interpretation of the events (process tables, `/proc`
//! reads). That belongs to the plugin that uses them.

pub mod proc_connector;
mod socket;

pub use socket::{ProcSocket, RecvError, SocketOptions};
