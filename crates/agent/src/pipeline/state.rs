//! Where the Kafka output stands: live, in backlog, replaying its spool.
//!
//! ```text
//!          a failure (queue full, a send or a delivery failed)
//!   live ─────────────────────────────────────────────> backlog ──(retry due)──> replay
//!    ^  ^                                               │  ^                       │
//!    │  └──────────────(spool empty)────────────────────┤  └──(segment answered)───┘
//!    │                                                  │
//!    │                                (the spool's last segment sent)
//!    │                                                  v
//!    └───────────(segment answered)─────────────── catching up ──(a failure)──> replay
//! ```

use std::collections::BTreeSet;

/// Where new events go, and what the spool is doing.
pub enum State {
    /// Straight to Kafka; nothing waits in the spool.
    Live,
    /// Into the spool, behind what waits there; no segment in flight (the oldest goes
    /// when the retry is due).
    Backlog,
    /// Into the spool, while its oldest segment is in flight to Kafka.
    Replay(Replay),
    /// Straight to Kafka again, behind the spool's last segment still in flight: a
    /// spool that, under a steady stream of events, would never be seen empty.
    /// librdkafka sends them after it, in order.
    CatchingUp(Replay),
}

/// One spool segment in flight to Kafka.
pub struct Replay {
    pub segment: u64,
    /// The segment's records: a poison one is declared from its bytes.
    pub records: Vec<Vec<u8>>,
    pub outstanding: usize,
    /// A record failed in a way a retry can cure: the segment goes again later.
    pub failed: bool,
    /// The first delivery error of this attempt, for the log.
    pub error: Option<String>,
    /// It holds the spool's last segment: new events may go live behind it.
    pub last: bool,
}

impl State {
    /// Events left in the spool by the last run go first.
    pub fn at_start(spool_waiting: bool) -> State {
        if spool_waiting {
            State::Backlog
        } else {
            State::Live
        }
    }

    /// New events go straight to Kafka.
    pub fn is_live(&self) -> bool {
        matches!(self, State::Live | State::CatchingUp(_))
    }

    pub fn replay(&self) -> Option<&Replay> {
        match self {
            State::Replay(r) | State::CatchingUp(r) => Some(r),
            State::Live | State::Backlog => None,
        }
    }

    pub fn replay_mut(&mut self) -> Option<&mut Replay> {
        match self {
            State::Replay(r) | State::CatchingUp(r) => Some(r),
            State::Live | State::Backlog => None,
        }
    }

    /// New events go to the spool; a segment in flight stays in flight.
    pub fn enter_backlog(&mut self) {
        *self = match std::mem::replace(self, State::Live) {
            State::Live | State::Backlog => State::Backlog,
            State::Replay(r) | State::CatchingUp(r) => State::Replay(r),
        };
    }

    /// New events go straight to Kafka; a segment in flight stays in flight.
    pub fn go_live(&mut self) {
        *self = match std::mem::replace(self, State::Live) {
            State::Live | State::Backlog => State::Live,
            State::Replay(r) | State::CatchingUp(r) => State::CatchingUp(r),
        };
    }

    /// The segment in flight, taken out (every record of it has an answer, or it is
    /// abandoned at stop, to be sent again whole at the next start).
    pub fn take_replay(&mut self) -> Option<Replay> {
        match std::mem::replace(self, State::Live) {
            State::Replay(r) => {
                *self = State::Backlog;
                Some(r)
            }
            State::CatchingUp(r) => Some(r),
            other => {
                *self = other;
                None
            }
        }
    }

    /// A segment goes out (from backlog, with nothing in flight).
    pub fn start_replay(&mut self, r: Replay) {
        *self = if self.is_live() {
            State::CatchingUp(r)
        } else {
            State::Replay(r)
        };
    }
}

/// Records of one segment Kafka refused for good and that were declared lost: never
/// sent again when the segment is retried for its other records.
#[derive(Default)]
pub struct Poisoned(Option<(u64, BTreeSet<usize>)>);

impl Poisoned {
    /// Notes that record `index` of `segment` was refused for good; true the first time
    /// (when it is to be declared).
    pub fn insert(&mut self, segment: u64, index: usize) -> bool {
        match &mut self.0 {
            Some((s, set)) if *s == segment => set.insert(index),
            _ => {
                self.0 = Some((segment, BTreeSet::from([index])));
                true
            }
        }
    }

    /// The records of `segment` not to send again.
    pub fn of(&self, segment: u64) -> BTreeSet<usize> {
        match &self.0 {
            Some((s, set)) if *s == segment => set.clone(),
            _ => BTreeSet::new(),
        }
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(segment: u64) -> Replay {
        Replay {
            segment,
            records: Vec::new(),
            outstanding: 1,
            failed: false,
            error: None,
            last: true,
        }
    }

    #[test]
    fn a_segment_in_flight_survives_a_change_of_route() {
        let mut s = State::at_start(true);
        assert!(!s.is_live());
        s.start_replay(replay(1));
        assert!(matches!(s, State::Replay(_)));
        s.go_live();
        assert!(s.is_live() && s.replay().is_some_and(|r| r.segment == 1));
        s.enter_backlog();
        assert!(matches!(s, State::Replay(_)));
        assert!(s.take_replay().is_some());
        assert!(matches!(s, State::Backlog));
        assert!(s.take_replay().is_none());
    }

    #[test]
    fn a_poisoned_record_is_declared_once_per_segment() {
        let mut p = Poisoned::default();
        assert!(p.insert(3, 1));
        assert!(!p.insert(3, 1));
        assert!(p.insert(3, 2));
        assert_eq!(p.of(3).len(), 2);
        assert!(p.insert(4, 1), "another segment starts afresh");
        assert!(p.of(3).is_empty());
    }
}
