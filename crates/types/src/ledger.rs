//! Which sequence numbers of a plugin run arrived, which the host declared lost, and
//! what is missing: the account shared by `hidsctl reconcile` (one pass over a topic)
//! and `hids-server` (continuously, for every run of the fleet).
//!
//! Sets of sequence numbers are kept as sorted inclusive ranges, so a run that loses
//! nothing costs one range however many events it sends: memory grows with the gaps,
//! not with the events. Everything here takes numbers from the network, so nothing
//! overflows or panics at `u64::MAX`; counts saturate instead.
//!
//! Deliberately left out: when a gap counts as loss (a grace period, the run's end) and
//! what to do about it. That is the caller's policy; this module only keeps the account.

/// A set of sequence numbers as sorted, disjoint, non-adjacent inclusive ranges:
/// memory grows with the gaps, not with the numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    ranges: Vec<(u64, u64)>,
}

impl SeqSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one number; false when it was already in (a duplicate).
    pub fn insert(&mut self, seq: u64) -> bool {
        self.insert_range(seq, seq) == 1
    }

    /// Adds from..=to (from > to: nothing); returns how many were new (saturating).
    pub fn insert_range(&mut self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        // Events mostly arrive in order: the next one extends the last range.
        if let Some(last) = self.ranges.last_mut() {
            if last.1.checked_add(1) == Some(from) {
                last.1 = to;
                // `from` > 0 here, so the width fits.
                return to - from + 1;
            }
        }
        // The ranges that overlap or touch from..=to are [first, end): they merge.
        let first = self
            .ranges
            .partition_point(|&(_, e)| e.saturating_add(1) < from);
        let end = self
            .ranges
            .partition_point(|&(s, _)| s <= to.saturating_add(1));
        if first == end {
            // Most runs never leave one range: a first range costs 16 bytes, not the 64
            // of Vec's default first allocation (measured: 200 -> 152 bytes per run).
            if self.ranges.is_empty() {
                self.ranges.reserve_exact(1);
            }
            self.ranges.insert(first, (from, to));
            return saturate(width(from, to));
        }
        let already: u128 = self.ranges[first..end]
            .iter()
            .map(|&(s, e)| width(s.max(from), e.min(to)))
            .sum();
        let merged = (
            from.min(self.ranges[first].0),
            to.max(self.ranges[end - 1].1),
        );
        self.ranges[first] = merged;
        self.ranges.drain(first + 1..end);
        saturate(width(from, to) - already)
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, e)| e < seq);
        self.ranges.get(i).is_some_and(|&(s, _)| s <= seq)
    }

    /// Numbers held (saturating at u64::MAX).
    pub fn count(&self) -> u64 {
        count(&self.ranges)
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    pub fn min(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.0)
    }

    /// The ranges of from..=to not in the set.
    pub fn missing(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if from > to {
            return out;
        }
        let first = self.ranges.partition_point(|&(_, e)| e < from);
        // `None` once the set covers the rest of from..=to.
        let mut next = Some(from);
        for &(s, e) in &self.ranges[first..] {
            let Some(n) = next else { break };
            if s > to {
                break;
            }
            if s > n {
                out.push((n, s - 1));
            }
            next = e.checked_add(1).filter(|&n| n <= to);
        }
        if let Some(n) = next {
            out.push((n, to));
        }
        out
    }
}

impl FromIterator<u64> for SeqSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut set = Self::new();
        for seq in iter {
            set.insert(seq);
        }
        set
    }
}

/// Numbers in from..=to; up to 2^64, hence u128.
fn width(from: u64, to: u64) -> u128 {
    if from > to {
        0
    } else {
        u128::from(to - from) + 1
    }
}

fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Events in the ranges, without overflow (a lying peer can send u64::MAX).
pub fn count(ranges: &[(u64, u64)]) -> u64 {
    saturate(
        ranges
            .iter()
            .map(|&(a, b)| width(a, b))
            .fold(0, u128::saturating_add),
    )
}

/// `ranges` minus the set.
pub fn subtract(ranges: &[(u64, u64)], minus: &SeqSet) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .flat_map(|&(a, b)| minus.missing(a, b))
        .collect()
}

/// One plugin run's account, as events arrive (in any order) and as the host's
/// pipeline declares drops and the run's end.
#[derive(Debug, Clone, Default)]
pub struct RunLedger {
    pub received: SeqSet,
    pub duplicates: u64,
    /// Events that arrived after a later one of the same run.
    pub out_of_order: u64,
    /// The highest `events_emitted` the run's own stats records claimed.
    pub emitted: u64,
    pub declared: SeqSet,
    /// The master's declaration that the run ended: how (`stopped`, `superseded`) and its last sequence.
    pub ended: Option<(String, u64)>,
    /// The last sequence received: one host's events share a partition, so an event
    /// lower than its predecessor broke the per-host order promise.
    last: Option<u64>,
}

impl RunLedger {
    /// One event of the run arrived.
    pub fn receive(&mut self, seq: u64) {
        if self.last.is_some_and(|last| seq < last) {
            self.out_of_order = self.out_of_order.saturating_add(1);
        }
        self.last = Some(seq);
        if !self.received.insert(seq) {
            self.duplicates = self.duplicates.saturating_add(1);
        }
    }

    pub fn claim_emitted(&mut self, emitted: u64) {
        self.emitted = self.emitted.max(emitted);
    }

    pub fn declare(&mut self, from: u64, to: u64) {
        self.declared.insert_range(from, to);
    }

    /// Keeps the highest last sequence of several declarations.
    pub fn end(&mut self, how: &str, last_seq: u64) {
        let last = self.ended.as_ref().map_or(0, |(_, l)| *l).max(last_seq);
        self.ended = Some((how.to_owned(), last));
    }

    /// What the run produced as far as anyone can tell: the highest of the last sequence received, the emitted claim, the highest declared and the declared end (today's reconcile rule).
    pub fn produced(&self) -> u64 {
        [
            self.received.max(),
            Some(self.emitted),
            self.declared.max(),
            self.ended.as_ref().map(|(_, last)| *last),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
    }

    /// Its account from sequence `from` (1 for reconcile; the server passes the first sequence it saw of a run it joined late) to produced().
    pub fn account(&self, from: u64) -> Account {
        let produced = self.produced();
        // Events count from 1: a 0 is received, never missing.
        let missing = self.received.missing(from.max(1), produced);
        let undeclared = subtract(&missing, &self.declared);
        let undeclared_loss = count(&undeclared);
        Account {
            produced,
            received: self.received.count(),
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            declared_drops: count(&missing).saturating_sub(undeclared_loss),
            missing,
            undeclared_loss,
            undeclared,
        }
    }
}

/// A run's account at one moment: see [`RunLedger::account`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub produced: u64,
    /// Distinct numbers received.
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub missing: Vec<(u64, u64)>,
    /// Missing and declared.
    pub declared_drops: u64,
    pub undeclared_loss: u64,
    pub undeclared: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const MAX: u64 = u64::MAX;

    #[test]
    fn no_overflow_at_the_top_of_the_range() {
        let set: SeqSet = [1, MAX].into_iter().collect();
        assert_eq!(set.missing(1, MAX), vec![(2, MAX - 1)]);
        let set: SeqSet = [MAX].into_iter().collect();
        assert_eq!(set.missing(1, MAX), vec![(1, MAX - 1)]);
        assert_eq!(count(&[(0, MAX), (1, 1)]), MAX);
        let mut tail = SeqSet::new();
        tail.insert_range(5, MAX);
        assert_eq!(subtract(&[(1, MAX)], &tail), vec![(1, 4)]);
    }

    #[test]
    fn gaps_and_declared_cover() {
        let set: SeqSet = [1, 2, 5, 6, 9].into_iter().collect();
        assert_eq!(set.missing(1, 10), vec![(3, 4), (7, 8), (10, 10)]);
        assert_eq!(SeqSet::new().missing(1, 3), vec![(1, 3)]);
        let set: SeqSet = [1, 2, 3].into_iter().collect();
        assert_eq!(set.missing(1, 3), vec![]);
        let missing = vec![(3, 10), (20, 20)];
        let mut declared = SeqSet::new();
        declared.insert_range(4, 5);
        declared.insert_range(8, 12);
        assert_eq!(
            subtract(&missing, &declared),
            vec![(3, 3), (6, 7), (20, 20)]
        );
        let mut all = SeqSet::new();
        all.insert_range(1, 30);
        assert_eq!(subtract(&missing, &all), vec![]);
        assert_eq!(subtract(&missing, &SeqSet::new()), missing);
    }

    #[test]
    fn u64_max_everywhere_saturates_and_never_panics() {
        let mut set = SeqSet::new();
        assert!(set.insert(MAX));
        assert!(!set.insert(MAX));
        assert_eq!(set.insert_range(MAX, MAX), 0);
        assert_eq!(set.insert_range(MAX - 1, MAX), 1);
        assert_eq!(set.ranges(), &[(MAX - 1, MAX)]);
        // 2^64 - 1 new numbers fit; the whole space (2^64) saturates.
        assert_eq!(set.insert_range(0, MAX), MAX - 1);
        assert_eq!(set.ranges(), &[(0, MAX)]);
        assert_eq!(set.count(), MAX);
        assert!(set.contains(0) && set.contains(MAX));
        assert_eq!(set.missing(0, MAX), vec![]);
        assert_eq!(SeqSet::new().insert_range(0, MAX), MAX);
        assert_eq!(SeqSet::new().missing(0, MAX), vec![(0, MAX)]);
        assert_eq!(SeqSet::new().insert_range(MAX, 0), 0);
        assert_eq!(count(&[(MAX, 0)]), 0);

        let mut run = RunLedger::default();
        run.receive(MAX);
        run.receive(MAX);
        run.receive(1);
        run.claim_emitted(MAX);
        run.end("stopped", MAX);
        run.end("superseded", 3);
        assert_eq!(run.ended, Some(("superseded".to_owned(), MAX)));
        let a = run.account(1);
        assert_eq!(
            (a.produced, a.received, a.duplicates, a.out_of_order),
            (MAX, 2, 1, 1)
        );
        assert_eq!(a.missing, vec![(2, MAX - 1)]);
        assert_eq!((a.undeclared_loss, a.declared_drops), (MAX - 2, 0));
        run.declare(0, MAX);
        let a = run.account(MAX);
        assert_eq!((a.missing, a.undeclared_loss), (vec![], 0));
        let a = run.account(0);
        assert_eq!((a.declared_drops, a.undeclared_loss), (MAX - 2, 0));
    }

    #[test]
    fn zero_is_received_but_never_missing() {
        let mut run = RunLedger::default();
        run.receive(0);
        let a = run.account(1);
        assert_eq!((a.produced, a.received, a.missing), (0, 1, vec![]));
        run.receive(2);
        assert_eq!(run.account(1).missing, vec![(1, 1)]);
        assert_eq!(run.account(0), run.account(1));
        assert_eq!(run.received.missing(0, 2), vec![(1, 1)]);
    }

    #[test]
    fn an_insert_merges_both_neighbours() {
        let mut set = SeqSet::new();
        set.insert_range(1, 3);
        set.insert_range(5, 7);
        assert!(set.insert(4));
        assert_eq!(set.ranges(), &[(1, 7)]);
        let mut set: SeqSet = [1, 3, 5, 7, 9].into_iter().collect();
        assert_eq!(set.insert_range(2, 8), 4);
        assert_eq!(set.ranges(), &[(1, 9)]);
        assert_eq!(set.insert_range(0, 10), 2);
        assert_eq!(set.ranges(), &[(0, 10)]);
    }

    #[test]
    fn ranges_inserted_out_of_order() {
        let mut set = SeqSet::new();
        assert_eq!(set.insert_range(10, 20), 11);
        assert_eq!(set.insert_range(1, 3), 3);
        assert_eq!(set.insert_range(5, 8), 4);
        assert_eq!(set.ranges(), &[(1, 3), (5, 8), (10, 20)]);
        set.insert(4);
        assert_eq!(set.ranges(), &[(1, 8), (10, 20)]);
        set.insert_range(21, 30);
        assert_eq!(set.ranges(), &[(1, 8), (10, 30)]);
        set.insert(9);
        assert_eq!(set.ranges(), &[(1, 30)]);
        assert_eq!((set.min(), set.max(), set.count()), (Some(1), Some(30), 30));
        assert_eq!(set.missing(0, 40), vec![(0, 0), (31, 40)]);
        assert_eq!(set.missing(5, 10), vec![]);
        assert_eq!(set.missing(10, 5), vec![]);
    }

    #[test]
    fn duplicates_and_out_of_order_are_counted() {
        let mut run = RunLedger::default();
        for seq in [1, 2, 2, 3, 1, 5, 4] {
            run.receive(seq);
        }
        let a = run.account(1);
        assert_eq!((a.received, a.duplicates, a.out_of_order), (5, 2, 2));
        assert_eq!((a.produced, a.missing), (5, vec![]));
    }

    #[test]
    fn declarations_that_overlap_or_exceed_what_arrived() {
        let mut run = RunLedger::default();
        for seq in (1..=5).chain([10]) {
            run.receive(seq);
        }
        run.declare(6, 7);
        run.claim_emitted(15);
        let a = run.account(1);
        assert_eq!(a.produced, 15);
        assert_eq!(a.missing, vec![(6, 9), (11, 15)]);
        assert_eq!(a.undeclared, vec![(8, 9), (11, 15)]);
        assert_eq!((a.declared_drops, a.undeclared_loss), (2, 7));
        // Overlapping declarations, over received numbers and past everything else.
        run.declare(3, 8);
        run.declare(7, 20);
        let a = run.account(1);
        assert_eq!((a.produced, a.received), (20, 6));
        assert_eq!(a.missing, vec![(6, 9), (11, 20)]);
        assert_eq!((a.declared_drops, a.undeclared_loss), (14, 0));
        assert_eq!(run.declared.ranges(), &[(3, 20)]);
        // A run that joined late is accounted from its first sequence seen.
        assert_eq!(run.account(12).missing, vec![(12, 20)]);
    }

    #[test]
    fn a_run_known_only_from_its_end_lost_everything() {
        let mut run = RunLedger::default();
        run.end("stopped", 4);
        let a = run.account(1);
        assert_eq!((a.produced, a.received), (4, 0));
        assert_eq!((a.undeclared, a.undeclared_loss), (vec![(1, 4)], 4));
    }

    #[test]
    fn a_million_sequential_inserts_stay_one_range() {
        let mut run = RunLedger::default();
        for seq in 1..=1_000_000 {
            run.receive(seq);
        }
        assert_eq!(run.received.ranges(), &[(1, 1_000_000)]);
        assert_eq!(run.received.ranges.capacity(), 1);
        assert_eq!(run.account(1).missing, vec![]);
    }

    /// xorshift64: deterministic, no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The ranges of `from..=to` (a small window) not in `model`.
    fn naive_missing(model: &BTreeSet<u64>, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for n in from..=to {
            if model.contains(&n) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 + 1 == n => last.1 = n,
                _ => out.push((n, n)),
            }
        }
        out
    }

    fn assert_well_formed(set: &SeqSet) {
        for w in set.ranges().windows(2) {
            assert!(w[0].1.checked_add(1).is_some_and(|n| n < w[1].0), "{w:?}");
        }
        assert!(set.ranges().iter().all(|&(a, b)| a <= b));
    }

    #[test]
    fn seqset_agrees_with_a_btreeset() {
        const WINDOW: u64 = 300;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let mut set = SeqSet::new();
            let mut model = BTreeSet::new();
            for _ in 0..rng.below(120) {
                // A low window and one at the very top of the space.
                let base = if rng.below(4) == 0 { MAX - WINDOW } else { 0 };
                let from = base + rng.below(WINDOW + 1);
                let to = from.saturating_add(rng.below(8)).min(base + WINDOW);
                let new = (from..=to).filter(|&n| model.insert(n)).count() as u64;
                if from == to && rng.below(2) == 0 {
                    assert_eq!(set.insert(from), new == 1);
                } else {
                    assert_eq!(set.insert_range(from, to), new);
                }
                assert_well_formed(&set);
            }
            assert_eq!(set.count(), model.len() as u64);
            assert_eq!(set.min(), model.first().copied());
            assert_eq!(set.max(), model.last().copied());
            for base in [0, MAX - WINDOW] {
                for n in base..=base + WINDOW {
                    assert_eq!(set.contains(n), model.contains(&n), "{n}");
                }
                let from = base + rng.below(WINDOW + 1);
                let to = base + rng.below(WINDOW + 1);
                let expected = if from <= to {
                    naive_missing(&model, from, to)
                } else {
                    vec![]
                };
                assert_eq!(set.missing(from, to), expected, "{from}..={to}");
            }
        }
    }

    #[test]
    fn run_ledger_agrees_with_keeping_every_number() {
        let mut rng = Rng(42);
        for _ in 0..300 {
            let mut run = RunLedger::default();
            let mut seqs = Vec::new();
            let mut declared = BTreeSet::new();
            let mut emitted = 0;
            for _ in 0..rng.below(100) {
                match rng.below(10) {
                    0 => {
                        let from = rng.below(120);
                        let to = from + rng.below(10);
                        run.declare(from, to);
                        declared.extend(from..=to);
                    }
                    1 => {
                        let e = rng.below(130);
                        run.claim_emitted(e);
                        emitted = emitted.max(e);
                    }
                    _ => {
                        let seq = rng.below(110);
                        run.receive(seq);
                        seqs.push(seq);
                    }
                }
            }
            let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
            let produced = [distinct.last(), declared.last(), Some(&emitted)]
                .into_iter()
                .flatten()
                .copied()
                .max()
                .unwrap_or(0);
            let start = 1 + rng.below(20);
            let missing = naive_missing(&distinct, start, produced);
            let lost: BTreeSet<u64> = (start..=produced)
                .filter(|n| !distinct.contains(n))
                .collect();
            let undeclared_set: BTreeSet<u64> = lost.difference(&declared).copied().collect();
            let a = run.account(start);
            assert_eq!(a.produced, produced);
            assert_eq!(a.received, distinct.len() as u64);
            assert_eq!(a.duplicates, (seqs.len() - distinct.len()) as u64);
            let out_of_order = seqs.windows(2).filter(|w| w[1] < w[0]).count() as u64;
            assert_eq!(a.out_of_order, out_of_order);
            assert_eq!(a.missing, missing);
            let accounted: BTreeSet<u64> = distinct.union(&declared).copied().collect();
            assert_eq!(a.undeclared, naive_missing(&accounted, start, produced));
            assert_eq!(a.undeclared_loss, undeclared_set.len() as u64);
            assert_eq!(a.declared_drops, (lost.len() - undeclared_set.len()) as u64);
        }
    }
}
