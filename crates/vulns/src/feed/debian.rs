//! The Debian security tracker's JSON: `{source_package: {vuln_id: {"releases":
//! {codename: {"status", "fixed_version", "urgency", ...}}, ...}}}`.
//!
//! The real file is ~70 MB; it is streamed: only one vulnerability entry at a time is
//! held as a `serde_json::Value` (so a wrong type in one entry skips that entry with a
//! reason, instead of failing the file), and only the records kept stay in memory.

use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Affected, Batch, Ecosystem, Severity, Skip, Status};
use crate::version::{self, Scheme};

/// Parses a whole tracker file into `batch`.
///
/// # Errors
/// When the input is not JSON, is truncated, is not an object at the top, or holds
/// more records than the batch has room for: the caller then drops the batch.
pub(super) fn parse(reader: impl Read, batch: &mut Batch<'_>) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    de::Deserializer::deserialize_map(&mut deserializer, TrackerVisitor { batch })
        .and_then(|()| deserializer.end())
        .map_err(|e| e.to_string())
}

struct TrackerVisitor<'b, 'a> {
    batch: &'b mut Batch<'a>,
}

impl<'de> Visitor<'de> for TrackerVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of source packages")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(package) = map.next_key::<String>()? {
            map.next_value_seed(PackageSeed {
                package: &package,
                batch: &mut *self.batch,
            })?;
        }
        Ok(())
    }
}

/// One source package's object of vulnerability ids; anything else in its place is
/// skipped as malformed (one package's junk does not cost the whole feed).
struct PackageSeed<'p, 'b, 'a> {
    package: &'p str,
    batch: &'b mut Batch<'a>,
}

impl<'de> DeserializeSeed<'de> for PackageSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl PackageSeed<'_, '_, '_> {
    fn not_an_object<E>(self) -> Result<(), E> {
        let package = self.package;
        self.batch.skip(
            || format!("package {package}"),
            Skip::Malformed("not an object".into()),
        );
        Ok(())
    }
}

impl<'de> Visitor<'de> for PackageSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of vulnerability ids")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(id) = map.next_key::<String>()? {
            let entry: Value = map.next_value()?;
            entry_records(self.package, &id, &entry, self.batch).map_err(de::Error::custom)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_an_object()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_an_object()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_an_object()
    }
}

/// One release's statement, read from the entry.
struct Release<'v> {
    codename: &'v str,
    status: State<'v>,
    severity: Severity,
}

/// [`Status`] before its fixed version is interned.
enum State<'v> {
    Fixed(&'v str),
    Unfixed,
    NotAffected,
}

/// Turns one `{vuln_id: entry}` into a record per release. A malformed or unparsable
/// release skips the whole entry (its releases are one statement about one bug).
///
/// # Errors
/// Only when the batch is full ([`super::OverCap`]).
fn entry_records(
    package: &str,
    id: &str,
    entry: &Value,
    batch: &mut Batch<'_>,
) -> Result<(), super::OverCap> {
    let releases = match read_releases(entry) {
        Ok(releases) => releases,
        Err(why) => {
            batch.skip(|| format!("{package} {id}"), why);
            return Ok(());
        }
    };
    let id = batch.intern(id);
    let package = batch.intern(package);
    for release in releases {
        let status = match release.status {
            State::Fixed(v) => Status::Fixed(batch.intern(v)),
            State::Unfixed => Status::Unfixed,
            State::NotAffected => Status::NotAffected,
        };
        let record = Affected {
            id: id.clone(),
            aliases: batch.no_strings.clone(),
            ecosystem: Ecosystem::Debian,
            release: Some(batch.intern(release.codename)),
            package: package.clone(),
            status,
            ranges: batch.no_ranges.clone(),
            versions: batch.no_strings.clone(),
            severity: release.severity,
        };
        batch.push(record)?;
    }
    Ok(())
}

fn read_releases(entry: &Value) -> Result<Vec<Release<'_>>, Skip> {
    let malformed = |what: &str| Skip::Malformed(what.to_string());
    let releases = match entry.get("releases") {
        Some(Value::Object(releases)) => releases,
        Some(_) => return Err(malformed("releases is not an object")),
        None if entry.is_object() => return Ok(Vec::new()),
        None => return Err(malformed("not an object")),
    };
    let mut out = Vec::with_capacity(releases.len());
    for (codename, release) in releases {
        let text = |field: &str| match release.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(Skip::Malformed(format!(
                "releases.{codename}.{field} is not a string"
            ))),
        };
        if !release.is_object() {
            return Err(Skip::Malformed(format!(
                "releases.{codename} is not an object"
            )));
        }
        let status = release_status(codename, text("status")?, text("fixed_version")?)?;
        let severity = text("urgency")?.map(Severity::parse).unwrap_or_default();
        out.push(Release {
            codename,
            status,
            severity,
        });
    }
    Ok(out)
}

/// The tracker's status words: "resolved" with a `fixed_version` ("0" = never
/// affected), "open" (no fix yet), "undetermined" (not judged yet: taken as open, so
/// the fleet view errs towards exposure).
fn release_status<'v>(
    codename: &str,
    status: Option<&str>,
    fixed_version: Option<&'v str>,
) -> Result<State<'v>, Skip> {
    match (status, fixed_version) {
        (Some("open" | "undetermined"), _) => Ok(State::Unfixed),
        (Some("resolved"), Some("0")) => Ok(State::NotAffected),
        (Some("resolved"), Some(v)) if version::is_valid(Scheme::Deb, v) => Ok(State::Fixed(v)),
        (Some("resolved"), Some(v)) => Err(Skip::BadVersion(format!(
            "releases.{codename}.fixed_version {v:?} is not a Debian version"
        ))),
        (Some("resolved"), None) => Err(Skip::Malformed(format!(
            "releases.{codename}: resolved without fixed_version"
        ))),
        (Some(other), _) => Err(Skip::Malformed(format!(
            "releases.{codename}.status {other:?} is unknown"
        ))),
        (None, _) => Err(Skip::Malformed(format!(
            "releases.{codename} has no status"
        ))),
    }
}
