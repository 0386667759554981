//! The master's notable things, one small type each (after vector's
//! `src/internal_events/`): its `emit` writes the log line and does what goes with it
//! (an event on the `agent` stream, a change in a plugin's status), in one place, so
//! the two never drift apart.
//!
//! The pipeline's own (sink failures, Kafka backlog, spool losses) live with it, in
//! `pipeline::internal_events`, next to the counters they bump.

pub mod guard;
pub mod plugin;
