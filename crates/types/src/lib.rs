//! The documents every part of the HIDS agrees on: the event model (Elastic Common
//! Schema field names, so existing pipelines read our events without a mapping) and the
//! agent's status document.
//!
//! This crate is serde only (plus a text table layout for people): no I/O, no runtime.
//! Producing the values (reading `/proc`, talking to the kernel) belongs to the crates
//! that own those sources.

pub mod alert;
pub mod desired;
pub mod event;
pub mod fleet;
pub mod guard;
pub mod ledger;
pub mod package;
pub mod stagger;
pub mod status;
pub mod text;
mod timestamp;
pub mod update;

pub use timestamp::Timestamp;
