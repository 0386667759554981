//! The detection engine of hids-server: Sigma rules (`process_creation`, mapped onto our
//! ECS exec events) and our own rule pack, matched against one event at a time, with a
//! literal prefilter so that each event meets only the rules that can match it, and
//! per-host frequency rules (Sigma `event_count` correlations) over event time.
//!
//! Pure logic: no async, no I/O but reading rule files. What this crate deliberately
//! does not do: alert aggregation, suppression, storage and delivery (hids-server does);
//! Sigma's other log sources, correlation types and modifiers (refused, each with the
//! reason, so an operator sees exactly what did not load).

mod condition;
mod fields;
mod frequency;
mod matcher;
pub mod mix;
mod parse;
mod prefilter;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::Value;

pub use frequency::FrequencyLimits;
pub use hids_types::alert::Level;

use fields::{EventView, FieldTable};
use frequency::FrequencyState;
use matcher::Node;
use parse::{Body, CorrelationDef, Header};
use prefilter::Prefilter;

/// Our own rule pack, built into the binary.
const BUILTIN: &[(&str, &str)] = &[
    (
        "reverse_shell.yml",
        include_str!("../rules/reverse_shell.yml"),
    ),
    (
        "service_spawns_shell.yml",
        include_str!("../rules/service_spawns_shell.yml"),
    ),
    (
        "download_to_shell.yml",
        include_str!("../rules/download_to_shell.yml"),
    ),
    (
        "exec_from_writable.yml",
        include_str!("../rules/exec_from_writable.yml"),
    ),
    ("miner.yml", include_str!("../rules/miner.yml")),
    (
        "log_tampering.yml",
        include_str!("../rules/log_tampering.yml"),
    ),
    (
        "discovery_burst.yml",
        include_str!("../rules/discovery_burst.yml"),
    ),
    ("shell_burst.yml", include_str!("../rules/shell_burst.yml")),
];

/// Rule files larger than this are refused unread: no rule is that long.
const MAX_RULE_FILE_BYTES: u64 = 1 << 20;
/// Rule files taken from the configured directories, all together.
const MAX_RULE_FILES: usize = 10_000;
const MAX_DIR_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleStatus {
    Loaded,
    /// Why the rule is not applied.
    Refused(String),
}

impl Serialize for RuleStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RuleStatus::Loaded => s.serialize_str("loaded"),
            RuleStatus::Refused(reason) => s.serialize_str(reason),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// Fires on one event.
    Match,
    /// Fires when enough events of its rules meet on one host within a window.
    Frequency,
}

/// One rule as `/api/v1/rules` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    /// The rule's `id`; for a file or document that has none, `<source>#<document>`.
    pub id: String,
    pub title: String,
    pub level: Level,
    /// The file's path, or `builtin:<file>` for our pack.
    pub source: String,
    pub status: RuleStatus,
    /// ATT&CK techniques (`T1059.004`) from its `attack.tNNNN` tags.
    pub techniques: Vec<String>,
    pub kind: RuleKind,
    /// False for a rule that only feeds a frequency rule (Sigma `generate: false`).
    pub generates: bool,
}

/// What a hit carries of its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMeta {
    pub id: String,
    pub title: String,
    pub level: Level,
    pub techniques: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("rules directory {path}: {source} (check [rules] paths in the configuration)")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules directories hold more than {MAX_RULE_FILES} rule files: point [rules] paths at the rule directories only")]
    TooManyFiles,
    #[error("rules directory {path} nests deeper than {MAX_DIR_DEPTH} levels")]
    TooDeep { path: PathBuf },
}

#[derive(Debug)]
struct MatchRule {
    meta: Arc<RuleMeta>,
    node: Node,
    generates: bool,
    /// Frequency rules (indexes into `RuleSet::frequency`) this rule counts for.
    feeds: Vec<usize>,
}

#[derive(Debug)]
struct FrequencyRule {
    meta: Arc<RuleMeta>,
    group_by: Vec<String>,
    span_micros: i64,
    threshold: u64,
}

/// Every rule seen, and the compiled form of those that loaded. Built once, shared by
/// the consumer threads' [`Detector`]s.
#[derive(Debug)]
pub struct RuleSet {
    infos: Vec<RuleInfo>,
    fields: FieldTable,
    matches: Vec<MatchRule>,
    frequency: Vec<FrequencyRule>,
    prefilter: Prefilter,
}

/// A document read from a file, before it is compiled.
struct Doc {
    source: String,
    position: usize,
    header: Header,
    body: Result<Body, String>,
}

impl RuleSet {
    /// The built-in pack (if `builtin`) plus every `*.yml`/`*.yaml` under each directory
    /// (recursive, in name order). A file that does not parse, or a rule we cannot
    /// honour, is refused (listed with the reason); the rest load. Fails only when a
    /// directory cannot be read.
    pub fn load(builtin: bool, dirs: &[PathBuf]) -> Result<RuleSet, LoadError> {
        let mut sources: Vec<(String, Result<String, String>)> = Vec::new();
        if builtin {
            for (name, text) in BUILTIN {
                sources.push((format!("builtin:{name}"), Ok((*text).to_owned())));
            }
        }
        let mut files = Vec::new();
        for dir in dirs {
            collect_rule_files(dir, 0, &mut files)?;
        }
        for path in files {
            sources.push((path.display().to_string(), read_rule_file(&path)));
        }
        Ok(RuleSet::from_sources(sources))
    }

    /// Rules from texts (`source` names each in [`RuleInfo::source`]); a text that is
    /// `Err` is listed as refused with that reason.
    pub fn from_sources(sources: Vec<(String, Result<String, String>)>) -> RuleSet {
        let mut fields = FieldTable::default();
        let mut docs = Vec::new();
        let mut infos = Vec::new();
        for (source, text) in sources {
            match text.and_then(|t| split_documents(&t)) {
                Ok(maps) => {
                    for (position, map) in maps.into_iter().enumerate() {
                        let header = parse::header(&map);
                        let body = parse::body(&map, &mut fields);
                        docs.push(Doc {
                            source: source.clone(),
                            position,
                            header,
                            body,
                        });
                    }
                }
                Err(reason) => infos.push(file_refusal(&source, reason)),
            }
        }
        let mut set = RuleSet {
            infos,
            fields,
            matches: Vec::new(),
            frequency: Vec::new(),
            prefilter: Prefilter::build(&[]),
        };
        set.compile(docs);
        let nodes: Vec<&Node> = set.matches.iter().map(|m| &m.node).collect();
        set.prefilter = Prefilter::build(&nodes);
        set
    }

    fn compile(&mut self, docs: Vec<Doc>) {
        let mut seen_ids: Vec<String> = Vec::new();
        // (document, id/name references) of frequency rules, resolved once all match
        // rules are known.
        let mut pending = Vec::new();
        let mut names: Vec<(Option<String>, String, usize)> = Vec::new();
        let silenced = silenced_rules(&docs);
        for doc in docs {
            let (meta, status) = check(&doc, &mut seen_ids);
            let kind = match &doc.body {
                Ok(Body::Correlation(_)) => RuleKind::Frequency,
                _ => RuleKind::Match,
            };
            let generates = kind == RuleKind::Frequency
                || !silenced.iter().any(|s| {
                    Some(s) == doc.header.id.as_ref() || Some(s) == doc.header.name.as_ref()
                });
            let info_index = self.infos.len();
            self.infos.push(RuleInfo {
                id: meta.id.clone(),
                title: meta.title.clone(),
                level: meta.level,
                source: doc.source.clone(),
                status: status.clone(),
                techniques: meta.techniques.clone(),
                kind,
                generates,
            });
            match (status, doc.body) {
                (RuleStatus::Loaded, Ok(Body::Match(node))) => {
                    names.push((doc.header.name.clone(), meta.id.clone(), self.matches.len()));
                    self.matches.push(MatchRule {
                        meta: Arc::new(meta),
                        node,
                        generates,
                        feeds: Vec::new(),
                    });
                }
                (RuleStatus::Loaded, Ok(Body::Correlation(def))) => {
                    pending.push((info_index, meta, def))
                }
                _ => {}
            }
        }
        for (info_index, meta, def) in pending {
            self.link_frequency(info_index, meta, def, &names);
        }
        // A rule stays silent only while a loaded frequency rule counts it: one named by
        // a frequency rule that was refused alerts as usual, or nothing would fire at all.
        for m in &mut self.matches {
            if !m.generates && m.feeds.is_empty() {
                m.generates = true;
                if let Some(info) = self.infos.iter_mut().find(|i| i.id == m.meta.id) {
                    info.generates = true;
                }
            }
        }
    }

    fn link_frequency(
        &mut self,
        info_index: usize,
        meta: RuleMeta,
        def: CorrelationDef,
        names: &[(Option<String>, String, usize)],
    ) {
        let mut targets = Vec::new();
        for r in &def.rules {
            match names
                .iter()
                .find(|(name, id, _)| id == r || name.as_ref() == Some(r))
            {
                Some((_, _, index)) => targets.push(*index),
                None => {
                    let reason = format!("refers to rule {r:?}, which is not loaded (a frequency rule counts loaded match rules only)");
                    if let Some(info) = self.infos.get_mut(info_index) {
                        info.status = RuleStatus::Refused(reason);
                    }
                    return;
                }
            }
        }
        let index = self.frequency.len();
        for t in targets {
            if let Some(m) = self.matches.get_mut(t) {
                m.feeds.push(index);
            }
        }
        for path in &def.group_by {
            self.fields.slot(path);
        }
        self.frequency.push(FrequencyRule {
            meta: Arc::new(meta),
            group_by: def.group_by,
            span_micros: def.span_micros,
            threshold: def.threshold,
        });
    }

    /// Every rule seen, loaded or refused.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.infos
    }

    /// Rules applied (match and frequency).
    pub fn loaded(&self) -> usize {
        self.infos
            .iter()
            .filter(|i| i.status == RuleStatus::Loaded)
            .count()
    }

    /// Match rules for which no literal is known, so the prefilter passes every event
    /// to them.
    pub fn always_evaluated(&self) -> usize {
        self.prefilter.always_evaluated()
    }

    /// Match rules applied to events (frequency rules count what these find).
    pub fn match_rules(&self) -> usize {
        self.matches.len()
    }
}

/// Rules named by a frequency rule without `generate: true`: they count, never alert.
fn silenced_rules(docs: &[Doc]) -> Vec<String> {
    let mut silenced = Vec::new();
    let mut kept = Vec::new();
    for doc in docs {
        if let Ok(Body::Correlation(def)) = &doc.body {
            if def.generate {
                kept.extend(def.rules.iter().cloned())
            } else {
                silenced.extend(def.rules.iter().cloned())
            }
        }
    }
    silenced.retain(|r| !kept.contains(r));
    silenced
}

fn check(doc: &Doc, seen_ids: &mut Vec<String>) -> (RuleMeta, RuleStatus) {
    let h = &doc.header;
    let id =
        h.id.clone()
            .unwrap_or_else(|| format!("{}#{}", doc.source, doc.position + 1));
    let meta = RuleMeta {
        id: id.clone(),
        title: h.title.clone(),
        level: *h.level.as_ref().unwrap_or(&Level::Medium),
        techniques: h.techniques.clone(),
    };
    let refusal = if h.id.is_none() {
        Some("no id: every rule needs a stable id".to_owned())
    } else if let Err(e) = &h.level {
        Some(e.clone())
    } else if let Err(e) = &doc.body {
        Some(e.clone())
    } else if seen_ids.contains(&id) {
        Some(format!("id {id} is already taken by another rule"))
    } else {
        None
    };
    if refusal.is_none() {
        seen_ids.push(id);
    }
    (
        meta,
        refusal.map_or(RuleStatus::Loaded, RuleStatus::Refused),
    )
}

fn file_refusal(source: &str, reason: String) -> RuleInfo {
    RuleInfo {
        id: source.to_owned(),
        title: String::new(),
        level: Level::Medium,
        source: source.to_owned(),
        status: RuleStatus::Refused(reason),
        techniques: Vec::new(),
        kind: RuleKind::Match,
        generates: false,
    }
}

/// The YAML documents of a file; each must be a map.
fn split_documents(text: &str) -> Result<Vec<serde_yaml_ng::Mapping>, String> {
    use serde::Deserialize;
    let mut maps = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| format!("YAML: {e}"))?;
        match value {
            serde_yaml_ng::Value::Mapping(m) => maps.push(m),
            serde_yaml_ng::Value::Null => {}
            _ => return Err("a YAML document that is not a map: not a rule".into()),
        }
    }
    if maps.is_empty() {
        return Err("no rule in the file".into());
    }
    Ok(maps)
}

fn read_rule_file(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > MAX_RULE_FILE_BYTES {
        return Err(format!(
            "{size} bytes: rule files are at most {MAX_RULE_FILE_BYTES}"
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

fn collect_rule_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    if depth > MAX_DIR_DEPTH {
        return Err(LoadError::TooDeep {
            path: dir.to_owned(),
        });
    }
    let err = |source| LoadError::Directory {
        path: dir.to_owned(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    entries.sort();
    for path in entries {
        // Symlinks are followed for files, not for directories (no loops).
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            collect_rule_files(&path, depth + 1, out)?;
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            if out.len() >= MAX_RULE_FILES {
                return Err(LoadError::TooManyFiles);
            }
            out.push(path);
        }
    }
    Ok(())
}

/// A rule that fired on an event.
#[derive(Debug, Clone)]
pub struct Hit {
    pub rule: Arc<RuleMeta>,
    /// 1 for a match rule; for a frequency rule, the events counted in its window.
    pub count: u64,
}

/// How a [`Detector`] has been doing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DetectorStats {
    /// Events given to `detect`.
    pub events: u64,
    /// Of them, exec events (the others meet no rule).
    pub exec_events: u64,
    /// Match rules evaluated per exec event, on average.
    pub rules_per_event: f64,
    pub frequency_keys: usize,
    /// Frequency keys dropped while their window was live, to stay within `max_keys`.
    pub frequency_evicted: u64,
    /// Exec events a frequency rule could not count: no readable `@timestamp`.
    pub frequency_untimed: u64,
}

/// Applies a rule set to events, one at a time. One per consumer thread: it owns the
/// frequency state of the hosts whose events it sees.
#[derive(Debug)]
pub struct Detector {
    rules: Arc<RuleSet>,
    frequency: FrequencyState,
    marks: Vec<bool>,
    events: u64,
    exec_events: u64,
    evaluated: u64,
    untimed: u64,
}

impl Detector {
    pub fn new(rules: Arc<RuleSet>, limits: FrequencyLimits) -> Detector {
        let marks = vec![false; rules.matches.len()];
        Detector {
            rules,
            frequency: FrequencyState::new(limits),
            marks,
            events: 0,
            exec_events: 0,
            evaluated: 0,
            untimed: 0,
        }
    }

    /// Appends one [`Hit`] per rule that fires on this event (an ECS event as our agent
    /// writes it; only `event.action: exec` events meet rules).
    pub fn detect(&mut self, event: &Value, hits: &mut Vec<Hit>) {
        self.run(event, hits, true);
    }

    /// [`Detector::detect`] without the prefilter: every rule on every event. The same
    /// hits, slower; for tests and the benchmark.
    pub fn detect_every_rule(&mut self, event: &Value, hits: &mut Vec<Hit>) {
        self.run(event, hits, false);
    }

    fn run(&mut self, event: &Value, hits: &mut Vec<Hit>, prefilter: bool) {
        self.events += 1;
        if fields::lookup(event, "event.action").and_then(Value::as_str) != Some("exec") {
            return;
        }
        self.exec_events += 1;
        let rules = Arc::clone(&self.rules);
        let view = EventView::new(event, &rules.fields);
        if prefilter {
            self.marks.iter_mut().for_each(|m| *m = false);
            rules.prefilter.mark(&view, &mut self.marks);
        } else {
            self.marks.iter_mut().for_each(|m| *m = true);
        }
        let mut time = None;
        let marks = std::mem::take(&mut self.marks);
        for (rule, marked) in rules.matches.iter().zip(&marks) {
            if !*marked {
                continue;
            }
            self.evaluated += 1;
            if !rule.node.eval(&view) {
                continue;
            }
            if rule.generates {
                hits.push(Hit {
                    rule: Arc::clone(&rule.meta),
                    count: 1,
                });
            }
            for &f in &rule.feeds {
                let Some(now) = *time.get_or_insert_with(|| event_time(event)) else {
                    self.untimed += 1;
                    continue;
                };
                if let Some(hit) = self.count(&rules.frequency[f], f, event, now) {
                    hits.push(hit);
                }
            }
        }
        self.marks = marks;
    }

    fn count(
        &mut self,
        rule: &FrequencyRule,
        index: usize,
        event: &Value,
        now: i64,
    ) -> Option<Hit> {
        // The host is always part of the key: per-host state, as Kafka keys events.
        let mut key = format!("{index}\u{1f}{}", fields::group_text(event, "host.id"));
        for path in &rule.group_by {
            key.push('\u{1f}');
            key.push_str(&fields::group_text(event, path));
        }
        let count = self
            .frequency
            .observe(&key, now, rule.span_micros, rule.threshold)?;
        Some(Hit {
            rule: Arc::clone(&rule.meta),
            count,
        })
    }

    pub fn stats(&self) -> DetectorStats {
        DetectorStats {
            events: self.events,
            exec_events: self.exec_events,
            rules_per_event: if self.exec_events == 0 {
                0.0
            } else {
                self.evaluated as f64 / self.exec_events as f64
            },
            frequency_keys: self.frequency.len(),
            frequency_evicted: self.frequency.evicted,
            frequency_untimed: self.untimed,
        }
    }
}

/// `@timestamp` in µs since the epoch.
fn event_time(event: &Value) -> Option<i64> {
    use serde::Deserialize;
    let ts = hids_types::Timestamp::deserialize(event.get("@timestamp")?).ok()?;
    i64::try_from(ts.unix_nanos() / 1000).ok()
}
