//! Processes already running when capture began. Neither backend tells of them, so they
//! are read from `/proc` and reported once per plugin start, a few at a time between
//! live batches (live events never wait behind the whole list), from a moment shifted
//! by the host's stagger offset (a fleet resumed at once does not report all at once).

use std::time::{Duration, Instant};

/// Processes read per turn of the enrichment loop, between two looks at the live queue.
pub const PER_TURN: usize = 32;

/// The window the host's offset falls in: short enough that an agent started on an idle
/// host shows its first events within seconds.
pub const STAGGER: Duration = Duration::from_secs(5);

/// What is left to report, and what was left out and why.
#[derive(Debug, Default)]
pub struct Running {
    /// Pids still to read, the next one last.
    pending: Vec<u32>,
    not_before: Option<Instant>,
    pub reported: usize,
    pub kernel_threads: usize,
    pub zombies: usize,
    /// Gone before they were read, or not readable (hidepid, an LSM).
    pub unreadable: usize,
}

impl Running {
    /// Nothing to report (`--report-running false`).
    pub fn none() -> Self {
        Running::default()
    }

    /// Every pid in `proc_root` now, to be reported from `host_id`'s offset within
    /// [`STAGGER`] on.
    pub fn list(proc_root: &str, host_id: &str) -> Self {
        let not_before = Instant::now() + hids_types::stagger::offset(host_id, STAGGER);
        let mut pending = match hids_procfs::list_pids(proc_root) {
            Ok(pids) => pids,
            Err(e) => {
                tracing::warn!("cannot list {proc_root} ({e}): running processes not reported");
                Vec::new()
            }
        };
        pending.reverse();
        Running {
            pending,
            not_before: Some(not_before),
            ..Running::default()
        }
    }

    /// How long the loop may wait before the next chunk is due (`None`: nothing left).
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        if self.pending.is_empty() {
            return None;
        }
        Some(
            self.not_before
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
        )
    }

    /// The next pids to read, if their time has come.
    pub fn next_chunk(&mut self, now: Instant) -> Vec<u32> {
        if self.due_in(now) != Some(Duration::ZERO) {
            return Vec::new();
        }
        let keep = self.pending.len().saturating_sub(PER_TURN);
        let mut chunk = self.pending.split_off(keep);
        chunk.reverse();
        chunk
    }

    /// True once, after the last chunk was taken: time to say what was reported.
    pub fn take_finished(&mut self) -> bool {
        let finished = self.pending.is_empty() && self.not_before.is_some();
        if finished {
            self.not_before = None;
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_in_pid_order_once_due_and_end() {
        let now = Instant::now();
        let mut r = Running {
            pending: (1..=70).rev().collect(),
            not_before: Some(now + Duration::from_secs(1)),
            ..Running::default()
        };
        assert!(r.next_chunk(now).is_empty(), "not before its offset");
        assert_eq!(r.due_in(now), Some(Duration::from_secs(1)));
        let later = now + Duration::from_secs(1);
        let first = r.next_chunk(later);
        assert_eq!(first, (1..=32).collect::<Vec<u32>>());
        assert_eq!(r.next_chunk(later), (33..=64).collect::<Vec<u32>>());
        assert!(!r.take_finished());
        assert_eq!(r.next_chunk(later), (65..=70).collect::<Vec<u32>>());
        assert!(r.take_finished());
        assert!(!r.take_finished(), "said once");
        assert_eq!(r.due_in(later), None);
        assert!(r.next_chunk(later).is_empty());
    }

    #[test]
    fn none_reports_nothing_and_never_finishes() {
        let mut r = Running::none();
        assert_eq!(r.due_in(Instant::now()), None);
        assert!(r.next_chunk(Instant::now()).is_empty());
        assert!(!r.take_finished());
    }
}
