//! Declarations: what the pipeline lost, named by exact sequence ranges (`dropped`), and
//! where each run ended (`run_end`), so reconciliation can tell declared loss from
//! undeclared.

use std::collections::BTreeMap;

use hids_types::event::{DroppedRange, EventIds, RunEnd};

use crate::queue::Position;

/// Lost events waiting to be declared, each with its reason (declaring can itself spool
/// and drop, so this is drained in rounds).
#[derive(Default)]
pub struct Lost(Vec<(Vec<u8>, &'static str)>);

impl Lost {
    pub fn push(&mut self, event: Vec<u8>, reason: &'static str) {
        self.0.push((event, reason));
    }

    pub fn extend(&mut self, events: impl IntoIterator<Item = Vec<u8>>, reason: &'static str) {
        self.0.extend(events.into_iter().map(|e| (e, reason)));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Everything waiting, grouped by reason.
    pub fn take_by_reason(&mut self) -> BTreeMap<&'static str, Vec<Vec<u8>>> {
        let mut by_reason: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
        for (ev, reason) in std::mem::take(&mut self.0) {
            by_reason.entry(reason).or_default().push(ev);
        }
        by_reason
    }
}

/// What declares `events`, lost for `reason`: their ranges, and what they themselves
/// had declared. A lost declaration (a spool full of them, evicting its own) takes what
/// it declared with it: that is declared again, with the lost declaration's own
/// sequence number. One new event per loss, never a chain of declarations about
/// declarations.
pub fn declaring(events: &[Vec<u8>], reason: &str) -> (Vec<DroppedRange>, Vec<RunEnd>) {
    let (mut ranges, ended) = carried_declarations(events);
    ranges.extend(ranges_of(events, reason));
    (ranges, ended)
}

pub fn run_end(p: &Position, how: &str) -> RunEnd {
    RunEnd {
        plugin: p.plugin.to_string(),
        run_id: p.run_id.to_string(),
        last_seq: p.seq,
        how: how.to_owned(),
    }
}

/// What lost declarations had declared: drops and run ends, to declare again.
fn carried_declarations(events: &[Vec<u8>]) -> (Vec<DroppedRange>, Vec<RunEnd>) {
    let (mut dropped, mut ended) = (Vec::new(), Vec::new());
    for ids in events.iter().filter_map(|e| EventIds::parse(e).ok()) {
        dropped.extend(ids.hids.dropped.into_iter().flatten());
        ended.extend(ids.hids.ended.into_iter().flatten());
    }
    (dropped, ended)
}

/// Groups lost events into runs of consecutive sequence numbers per plugin run.
fn ranges_of(events: &[Vec<u8>], reason: &str) -> Vec<DroppedRange> {
    let mut ids: Vec<(String, String, u64)> = events
        .iter()
        .filter_map(|e| EventIds::parse(e).ok())
        .map(|i| {
            (
                i.hids.plugin.into_owned(),
                i.hids.run_id.into_owned(),
                i.event.sequence,
            )
        })
        .collect();
    ids.sort();
    let mut out: Vec<DroppedRange> = Vec::new();
    for (plugin, run_id, seq) in ids {
        match out.last_mut() {
            Some(r) if r.plugin == plugin && r.run_id == run_id && r.to_seq + 1 == seq => {
                r.to_seq = seq
            }
            Some(r) if r.plugin == plugin && r.run_id == run_id && r.to_seq == seq => {}
            _ => out.push(DroppedRange {
                plugin,
                run_id,
                from_seq: seq,
                to_seq: seq,
                reason: reason.to_owned(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(plugin: &str, run: &str, seq: u64) -> Vec<u8> {
        format!(
            r#"{{"event":{{"sequence":{seq}}},"hids":{{"plugin":"{plugin}","run_id":"{run}"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_lost_declaration_is_declared_again_with_its_own_number() {
        let lost_declaration = br#"{"event":{"sequence":4},"hids":{"plugin":"pipeline","run_id":"p","dropped":[{"plugin":"process","run_id":"r1","from_seq":1,"to_seq":9,"reason":"spool_full"}]}}"#.to_vec();
        let events = vec![lost_declaration, ev("process", "r1", 10)];
        let (ranges, ended) = declaring(&events, "spool_full");
        assert!(ended.is_empty());
        let covered: Vec<(&str, u64, u64)> = ranges
            .iter()
            .map(|r| (r.plugin.as_str(), r.from_seq, r.to_seq))
            .collect();
        assert!(
            covered.contains(&("process", 1, 9)),
            "carried over: {covered:?}"
        );
        assert!(covered.contains(&("process", 10, 10)));
        assert!(
            covered.contains(&("pipeline", 4, 4)),
            "its own number: {covered:?}"
        );
    }

    #[test]
    fn lost_events_become_exact_ranges() {
        let lost = vec![
            ev("process", "r1", 5),
            ev("process", "r1", 3),
            ev("process", "r1", 4),
            ev("process", "r1", 9),
            ev("agent", "a", 1),
            b"not json".to_vec(),
        ];
        let r = ranges_of(&lost, "spool_full");
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].plugin.as_str(), r[0].from_seq, r[0].to_seq),
            ("agent", 1, 1)
        );
        assert_eq!((r[1].from_seq, r[1].to_seq), (3, 5));
        assert_eq!((r[2].from_seq, r[2].to_seq), (9, 9));
        assert_eq!(r[2].reason, "spool_full");
    }
}
