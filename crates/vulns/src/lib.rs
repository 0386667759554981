//! Vulnerability matching: version ordering as each packaging system does it
//! ([`version`]), and the feeds that say which versions are affected ([`feed`]).

pub mod feed;
pub mod version;
