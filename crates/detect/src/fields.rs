//! Where a rule's field names point in our events, and one event's fields as rules read
//! them.

use std::borrow::Cow;

use serde_json::Value;

/// Sigma's `process_creation` field names and the ECS fields our agent fills for them
/// (docs/events.md). A name with a dot is taken as an ECS path as it is.
const SIGMA_TO_ECS: &[(&str, &str)] = &[
    ("Image", "process.executable"),
    ("CommandLine", "process.command_line"),
    ("ParentImage", "process.parent.executable"),
    ("ParentCommandLine", "process.parent.command_line"),
    ("User", "user.name"),
    ("CurrentDirectory", "process.working_directory"),
    ("ProcessId", "process.pid"),
    ("ParentProcessId", "process.parent.pid"),
    ("LogonId", "user.audit.id"),
    ("ProcessGuid", "process.entity_id"),
    ("ParentProcessGuid", "process.parent.entity_id"),
];

/// Fields a keyword (a value without a field name) is searched in: the texts of an exec
/// event, where Sigma would search "the whole log message".
pub(crate) const KEYWORD_FIELDS: &[&str] = &[
    "process.executable",
    "process.command_line",
    "process.parent.executable",
    "process.parent.command_line",
];

/// The ECS path a rule's field name stands for, or why it has none.
pub(crate) fn ecs_path(name: &str) -> Result<&str, String> {
    if name.contains('.') {
        return Ok(name);
    }
    SIGMA_TO_ECS
        .iter()
        .find(|(sigma, _)| *sigma == name)
        .map(|(_, ecs)| *ecs)
        .ok_or_else(|| {
            let known: Vec<&str> = SIGMA_TO_ECS.iter().map(|(s, _)| *s).collect();
            format!(
                "field {name:?} is not in our exec events (known: {}, or an ECS path with dots)",
                known.join(", ")
            )
        })
}

/// The ECS paths every rule of a set reads, each with a slot number.
#[derive(Debug, Default)]
pub(crate) struct FieldTable {
    paths: Vec<String>,
}

impl FieldTable {
    pub(crate) fn slot(&mut self, path: &str) -> usize {
        if let Some(i) = self.paths.iter().position(|p| p == path) {
            return i;
        }
        self.paths.push(path.to_owned());
        self.paths.len() - 1
    }

    pub(crate) fn paths(&self) -> &[String] {
        &self.paths
    }
}

/// One value of a field as rules compare it: as sent, and ASCII-lowercased for the
/// default case-insensitive comparison (ASCII only, like the prefilter, so both agree).
#[derive(Debug)]
pub(crate) struct Text<'a> {
    pub(crate) raw: Cow<'a, str>,
    pub(crate) lower: Cow<'a, str>,
}

impl<'a> Text<'a> {
    fn new(raw: Cow<'a, str>) -> Text<'a> {
        let lower = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            raw.clone()
        };
        Text { raw, lower }
    }
}

#[derive(Debug)]
pub(crate) enum Slot<'a> {
    Absent,
    Null,
    /// A scalar is one text; an array, one per scalar element; an object, none.
    Texts(Vec<Text<'a>>),
}

/// The fields of one event that the rule set reads, looked up once.
#[derive(Debug)]
pub(crate) struct EventView<'a> {
    pub(crate) slots: Vec<Slot<'a>>,
}

impl<'a> EventView<'a> {
    pub(crate) fn new(event: &'a Value, table: &FieldTable) -> EventView<'a> {
        let slots = table.paths().iter().map(|p| resolve(event, p)).collect();
        EventView { slots }
    }
}

pub(crate) fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = event;
    for part in path.split('.') {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn resolve<'a>(event: &'a Value, path: &str) -> Slot<'a> {
    // Nested as ECS documents it; a flat dotted key is accepted too.
    let found = lookup(event, path).or_else(|| event.as_object()?.get(path));
    match found {
        None => Slot::Absent,
        Some(Value::Null) => Slot::Null,
        Some(Value::Array(items)) => Slot::Texts(items.iter().filter_map(scalar_text).collect()),
        Some(v) => Slot::Texts(scalar_text(v).into_iter().collect()),
    }
}

/// Numbers and booleans compare as their text (`1234`, `true`).
fn scalar_text(v: &Value) -> Option<Text<'_>> {
    let raw = match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Number(n) => Cow::Owned(n.to_string()),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    Some(Text::new(raw))
}

/// A field's value as the text a frequency rule groups by (empty when absent).
pub(crate) fn group_text(event: &Value, path: &str) -> String {
    match lookup(event, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}
