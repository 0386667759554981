//! OSV records (<https://ossf.github.io/osv-schema/>): one object, or an array of them.
//!
//! One record at a time is held as a `serde_json::Value` (a record with a wrong type
//! is skipped with a reason, not the whole array), and one record may not take more
//! than [`MAX_RECORD_BYTES`] of input, so a huge single "record" cannot become a
//! multi-gigabyte tree.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Arc;

use serde::de::{self, value::MapAccessDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{Affected, Batch, Ecosystem, Event, Range, RangeKind, Severity, Skip, Status};
use crate::version::{self, Scheme};

/// Input one record may take. The largest real records (PyPI, thousands of listed
/// versions) are a few hundred KB.
pub(super) const MAX_RECORD_BYTES: u64 = 16 << 20;

/// Parses an OSV file (object or array) into `batch`.
///
/// # Errors
/// When the input is not JSON, is truncated, is neither an object nor an array, has a
/// record over [`MAX_RECORD_BYTES`], or holds more records than the batch has room for.
pub(super) fn parse(reader: impl Read, batch: &mut Batch<'_>) -> Result<(), String> {
    let budget = Rc::new(RecordBudget::default());
    let reader = BudgetReader {
        inner: reader,
        budget: budget.clone(),
    };
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    de::Deserializer::deserialize_any(&mut deserializer, OsvVisitor { batch, budget })
        .and_then(|()| deserializer.end())
        .map_err(|e| e.to_string())
}

/// Bytes read so far and where the current record started.
#[derive(Default)]
struct RecordBudget {
    read: Cell<u64>,
    record_start: Cell<u64>,
}

struct BudgetReader<R> {
    inner: R,
    budget: Rc<RecordBudget>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = self.budget.read.get() + n as u64;
        self.budget.read.set(read);
        if read - self.budget.record_start.get() > MAX_RECORD_BYTES {
            return Err(io::Error::other(format!(
                "an OSV record larger than {MAX_RECORD_BYTES} bytes"
            )));
        }
        Ok(n)
    }
}

struct OsvVisitor<'b, 'a> {
    batch: &'b mut Batch<'a>,
    budget: Rc<RecordBudget>,
}

impl<'de> Visitor<'de> for OsvVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an OSV object or an array of them")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let record = Value::deserialize(MapAccessDeserializer::new(map))?;
        record_entries(record, self.batch).map_err(de::Error::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.budget.record_start.set(self.budget.read.get());
            let Some(record) = seq.next_element::<Value>()? else {
                return Ok(());
            };
            record_entries(record, self.batch).map_err(de::Error::custom)?;
        }
    }
}

#[derive(Deserialize)]
struct OsvRecord {
    id: String,
    #[serde(default)]
    aliases: Option<Vec<String>>,
    #[serde(default)]
    withdrawn: Option<Value>,
    #[serde(default)]
    affected: Option<Vec<OsvAffected>>,
    #[serde(default)]
    severity: Option<Vec<OsvSeverity>>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    ranges: Option<Vec<OsvRange>>,
    #[serde(default)]
    versions: Option<Vec<String>>,
    #[serde(default)]
    ecosystem_specific: Option<Value>,
    #[serde(default)]
    database_specific: Option<Value>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Option<Vec<OsvEvent>>,
}

#[derive(Deserialize)]
struct OsvEvent {
    introduced: Option<String>,
    fixed: Option<String>,
    last_affected: Option<String>,
    limit: Option<String>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

/// One OSV record: a kept record per `affected[]` entry of a supported ecosystem.
///
/// # Errors
/// Only when the batch is full.
fn record_entries(record: Value, batch: &mut Batch<'_>) -> Result<(), super::OverCap> {
    let hint = record
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("(no id)")
        .to_string();
    let record: OsvRecord = match serde_json::from_value(record) {
        Ok(record) => record,
        Err(e) => {
            batch.skip(|| hint, Skip::Malformed(e.to_string()));
            return Ok(());
        }
    };
    if record.withdrawn.as_ref().is_some_and(|w| !w.is_null()) {
        batch.skip(|| hint, Skip::Withdrawn);
        return Ok(());
    }
    let id = batch.intern(&record.id);
    let aliases: Arc<[Arc<str>]> = match record.aliases.as_deref() {
        None | Some([]) => batch.no_strings.clone(),
        Some(aliases) => aliases.iter().map(|a| batch.intern(a)).collect(),
    };
    let record_severity = severity_of(record.database_specific.as_ref()).max(cvss_severity(
        record.severity.as_deref().unwrap_or_default(),
    ));
    for affected in record.affected.unwrap_or_default() {
        let mut entry = match convert_affected(&affected, &id, &aliases, batch) {
            Ok(entry) => entry,
            Err(why) => {
                let name = affected.package.as_ref().map_or("", |p| p.name.as_str());
                batch.skip(|| format!("{} {name}", record.id), why);
                continue;
            }
        };
        entry.severity = match record_severity {
            Severity::Unknown => severity_of(affected.ecosystem_specific.as_ref())
                .max(severity_of(affected.database_specific.as_ref())),
            known => known,
        };
        batch.push(entry)?;
    }
    Ok(())
}

/// An `affected[]` entry as a record (severity filled by the caller).
fn convert_affected(
    affected: &OsvAffected,
    id: &Arc<str>,
    aliases: &Arc<[Arc<str>]>,
    batch: &mut Batch<'_>,
) -> Result<Affected, Skip> {
    let package = affected
        .package
        .as_ref()
        .ok_or_else(|| Skip::Malformed("affected[] without package".into()))?;
    let (ecosystem, release) = match package.ecosystem.split_once(':') {
        Some(("Debian", number)) => (Ecosystem::Debian, Some(number)),
        None if package.ecosystem == "Debian" => (Ecosystem::Debian, None),
        None if package.ecosystem == "PyPI" => (Ecosystem::PyPI, None),
        None if package.ecosystem == "npm" => (Ecosystem::Npm, None),
        None if package.ecosystem == "Maven" => (Ecosystem::Maven, None),
        _ => return Err(Skip::OtherEcosystem),
    };
    let mut ranges = Vec::new();
    for range in affected.ranges.as_deref().unwrap_or_default() {
        let kind = match range.kind.as_str() {
            "ECOSYSTEM" => RangeKind::Ecosystem,
            "SEMVER" => RangeKind::Semver,
            // Commit ranges say nothing about an installed package's version.
            "GIT" => continue,
            other => return Err(Skip::Malformed(format!("range type {other:?}"))),
        };
        let scheme = range_scheme(ecosystem.scheme(), kind);
        let events = range.events.as_deref().unwrap_or_default();
        ranges.push(Range {
            kind,
            events: convert_events(scheme, events, batch)?,
        });
    }
    let versions: Arc<[Arc<str>]> = match affected.versions.as_deref() {
        None | Some([]) => batch.no_strings.clone(),
        Some(list) => list.iter().map(|v| batch.intern(v)).collect(),
    };
    if ranges.is_empty() && versions.is_empty() {
        return Err(Skip::Malformed(
            "no ECOSYSTEM or SEMVER range and no versions".into(),
        ));
    }
    let status = summary_status(ecosystem.scheme(), &ranges);
    Ok(Affected {
        id: id.clone(),
        aliases: aliases.clone(),
        ecosystem,
        release: release.map(|r| batch.intern(r)),
        package: batch.intern(&package.name),
        status,
        ranges: ranges.into(),
        versions,
        severity: Severity::Unknown,
    })
}

/// Events checked and sorted by version once, so matching is a single walk.
fn convert_events(
    scheme: Scheme,
    events: &[OsvEvent],
    batch: &mut Batch<'_>,
) -> Result<Vec<Event>, Skip> {
    let mut out = Vec::with_capacity(events.len());
    let mut limits = Vec::new();
    for event in events {
        let (make, text): (fn(Arc<str>) -> Event, &str) = match event {
            OsvEvent {
                introduced: Some(v),
                ..
            } => (Event::Introduced, v),
            OsvEvent { fixed: Some(v), .. } => (Event::Fixed, v),
            OsvEvent {
                last_affected: Some(v),
                ..
            } => (Event::LastAffected, v),
            OsvEvent { limit: Some(v), .. } => (Event::Limit, v),
            _ => return Err(Skip::Malformed("an event with no known field".into())),
        };
        let event = make(batch.intern(text));
        let open_bound = match &event {
            Event::Introduced(v) => &**v == "0",
            Event::Limit(v) => &**v == "*",
            Event::Fixed(_) | Event::LastAffected(_) => false,
        };
        if !open_bound && !version::is_valid(scheme, text) {
            return Err(Skip::BadVersion(format!("version {text:?} does not parse")));
        }
        match event {
            Event::Limit(_) => limits.push(event),
            _ => out.push(event),
        }
    }
    // "0" is below every version; limits are not part of the walk and may be "*".
    let from_start = |e: &Event| matches!(e, Event::Introduced(v) if &**v == "0");
    out.sort_by(|a, b| match (from_start(a), from_start(b)) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => version::compare(scheme, event_version(a), event_version(b)),
    });
    out.append(&mut limits);
    Ok(out)
}

fn event_version(event: &Event) -> &str {
    match event {
        Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => v,
    }
}

/// SEMVER ranges use SemVer whatever the ecosystem (the schema says so).
fn range_scheme(ecosystem: Scheme, kind: RangeKind) -> Scheme {
    match kind {
        RangeKind::Semver => Scheme::Semver,
        RangeKind::Ecosystem => ecosystem,
    }
}

/// `Fixed` with the highest fix when any range has one; `Unfixed` otherwise.
fn summary_status(scheme: Scheme, ranges: &[Range]) -> Status {
    ranges
        .iter()
        .flat_map(|range| range.events.iter())
        .filter_map(|event| match event {
            Event::Fixed(v) => Some(v),
            _ => None,
        })
        .max_by(|a, b| version::compare(scheme, a, b))
        .map_or(Status::Unfixed, |v| Status::Fixed(v.clone()))
}

/// The OSV schema's evaluation of one range: walk the sorted events, `introduced`
/// opens, `fixed` closes at, `last_affected` closes after; `limit`s bound it all.
pub(super) fn range_affects(ecosystem: Scheme, range: &Range, installed: &str) -> bool {
    let scheme = range_scheme(ecosystem, range.kind);
    let at_or_after = |v: &str| version::compare(scheme, installed, v).is_ge();
    let mut vulnerable = false;
    let mut limits = range
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Limit(v) => Some(v),
            _ => None,
        })
        .peekable();
    let has_limits = limits.peek().is_some();
    let before_limit = !has_limits
        || limits
            .any(|limit| &**limit == "*" || version::compare(scheme, installed, limit).is_lt());
    if !before_limit {
        return false;
    }
    for event in range.events.iter() {
        match event {
            Event::Introduced(v) if &**v == "0" || at_or_after(v) => vulnerable = true,
            Event::Fixed(v) if at_or_after(v) => vulnerable = false,
            Event::LastAffected(v) if version::compare(scheme, installed, v).is_gt() => {
                vulnerable = false
            }
            _ => {}
        }
    }
    vulnerable
}

/// The lowest `fixed` of the range above the installed version.
pub(super) fn next_fix<'r>(
    ecosystem: Scheme,
    range: &'r Range,
    installed: &str,
) -> Option<&'r str> {
    let scheme = range_scheme(ecosystem, range.kind);
    range.events.iter().find_map(|event| match event {
        Event::Fixed(v) if version::compare(scheme, installed, v).is_lt() => Some(&**v),
        _ => None,
    })
}

/// `{"severity": "HIGH"}` (GHSA's database_specific), or `urgency` (Debian's).
fn severity_of(specific: Option<&Value>) -> Severity {
    let Some(specific) = specific else {
        return Severity::Unknown;
    };
    ["severity", "urgency"]
        .iter()
        .filter_map(|field| specific.get(field).and_then(Value::as_str))
        .map(Severity::parse)
        .max()
        .unwrap_or_default()
}

/// The highest severity of the record's CVSS v3 vectors (v2 and v4 vectors are not
/// scored: GHSA-derived records also carry `database_specific.severity`).
fn cvss_severity(scores: &[OsvSeverity]) -> Severity {
    scores
        .iter()
        .filter(|s| s.kind == "CVSS_V3")
        .filter_map(|s| super::cvss::v3_base_score(&s.score))
        .map(super::cvss::severity_of_score)
        .max()
        .unwrap_or_default()
}
