//! The literal prefilter: one Aho-Corasick pass over an event's fields tells which rules
//! could match it, so the others are not evaluated at all.

use aho_corasick::{AhoCorasick, AhoCorasickKind};

use crate::fields::{EventView, Slot};
use crate::matcher::Node;

#[derive(Debug)]
pub(crate) struct Prefilter {
    automaton: Option<AhoCorasick>,
    /// For each pattern, the rules (indexes) that need it.
    rules_of_pattern: Vec<Vec<u32>>,
    /// Rules with no literal they need: evaluated on every event.
    always: Vec<u32>,
}

impl Prefilter {
    pub(crate) fn build(nodes: &[&Node]) -> Prefilter {
        let mut patterns: Vec<String> = Vec::new();
        let mut rules_of_pattern: Vec<Vec<u32>> = Vec::new();
        let mut always = Vec::new();
        for (rule, node) in (0u32..).zip(nodes) {
            let Some(literals) = node.required_literals() else {
                always.push(rule);
                continue;
            };
            for lit in literals {
                let id = match patterns.iter().position(|p| *p == lit) {
                    Some(id) => id,
                    None => {
                        patterns.push(lit);
                        rules_of_pattern.push(Vec::new());
                        patterns.len() - 1
                    }
                };
                rules_of_pattern[id].push(rule);
            }
        }
        let automaton = build_automaton(&patterns);
        if automaton.is_none() {
            // Without an automaton every rule is checked: slower, never wrong.
            always = (0..u32::try_from(nodes.len()).unwrap_or(u32::MAX)).collect();
            rules_of_pattern.clear();
        }
        Prefilter {
            automaton,
            rules_of_pattern,
            always,
        }
    }

    pub(crate) fn always_evaluated(&self) -> usize {
        self.always.len()
    }

    /// Sets `marks[rule]` for every rule that can match this event.
    pub(crate) fn mark(&self, view: &EventView<'_>, marks: &mut [bool]) {
        for &r in &self.always {
            if let Some(m) = marks.get_mut(r as usize) {
                *m = true;
            }
        }
        let Some(ac) = &self.automaton else { return };
        for slot in &view.slots {
            let Slot::Texts(texts) = slot else { continue };
            for t in texts {
                for found in ac.find_overlapping_iter(t.raw.as_ref()) {
                    for &r in &self.rules_of_pattern[found.pattern().as_usize()] {
                        if let Some(m) = marks.get_mut(r as usize) {
                            *m = true;
                        }
                    }
                }
            }
        }
    }
}

fn build_automaton(patterns: &[String]) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    let build = |kind| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(kind)
            .build(patterns)
            .ok()
    };
    // A DFA is the fastest to search; if the patterns make it too big, let the crate choose.
    build(Some(AhoCorasickKind::DFA)).or_else(|| build(None))
}
