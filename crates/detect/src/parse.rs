//! From one YAML document to a compiled rule, or the exact reason we cannot honour it.

use serde_yaml_ng::{Mapping, Value};

use crate::condition;
use crate::fields::{ecs_path, FieldTable};
use crate::matcher::{Modifiers, Node, ValueMatch};
use crate::Level;

/// What identifies a rule, read before its body so a refusal still names it.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) title: String,
    pub(crate) level: Result<Level, String>,
    pub(crate) techniques: Vec<String>,
}

#[derive(Debug)]
pub(crate) enum Body {
    Match(Node),
    Correlation(CorrelationDef),
}

#[derive(Debug, Clone)]
pub(crate) struct CorrelationDef {
    pub(crate) rules: Vec<String>,
    /// ECS paths, besides the host, that split the count.
    pub(crate) group_by: Vec<String>,
    pub(crate) span_micros: i64,
    pub(crate) threshold: u64,
    pub(crate) generate: bool,
}

pub(crate) fn header(doc: &Mapping) -> Header {
    let text = |key: &str| doc.get(key).and_then(scalar_text);
    let id = text("id");
    let level = match doc.get("level") {
        None => Ok(Level::Medium),
        Some(v) => scalar_text(v)
            .ok_or_else(|| "level is not a text".to_owned())
            .and_then(|s| s.parse::<Level>()),
    };
    let techniques = match doc.get("tags") {
        Some(Value::Sequence(tags)) => tags
            .iter()
            .filter_map(scalar_text)
            .filter_map(technique)
            .collect(),
        _ => Vec::new(),
    };
    Header {
        title: text("title").or_else(|| id.clone()).unwrap_or_default(),
        id,
        name: text("name"),
        level,
        techniques,
    }
}

/// `attack.t1059.004` -> `T1059.004`.
fn technique(tag: String) -> Option<String> {
    let t = tag.strip_prefix("attack.")?;
    let digits = t.strip_prefix('t').or_else(|| t.strip_prefix('T'))?;
    let (main, sub) = digits.split_once('.').unwrap_or((digits, ""));
    let ok = main.len() == 4
        && main.bytes().all(|b| b.is_ascii_digit())
        && (sub.is_empty() || (sub.len() == 3 && sub.bytes().all(|b| b.is_ascii_digit())));
    ok.then(|| t.to_ascii_uppercase())
}

pub(crate) fn body(doc: &Mapping, fields: &mut FieldTable) -> Result<Body, String> {
    if let Some(corr) = doc.get("correlation") {
        return correlation(doc, corr).map(Body::Correlation);
    }
    logsource(doc.get("logsource"))?;
    let detection = match doc.get("detection") {
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err("detection is not a map".into()),
        None => return Err("no detection and no correlation: not a rule".into()),
    };
    detection_node(detection, fields).map(Body::Match)
}

fn logsource(ls: Option<&Value>) -> Result<(), String> {
    let Some(Value::Mapping(ls)) = ls else {
        return Err("logsource missing: we apply process_creation rules (product linux)".into());
    };
    let get = |k: &str| ls.get(k).and_then(scalar_text);
    if let Some(service) = get("service") {
        let product = get("product").unwrap_or_default();
        return Err(format!(
            "logsource service {service} ({product}): no plugin collects it yet"
        ));
    }
    match get("product").as_deref() {
        None | Some("linux") => {}
        Some(other) => return Err(format!("logsource product {other}: we watch linux hosts")),
    }
    match get("category").as_deref() {
        Some("process_creation") => Ok(()),
        Some(other) => Err(format!(
            "logsource category {other}: no plugin collects it yet"
        )),
        None => Err("logsource has no category: we apply process_creation rules".into()),
    }
}

fn detection_node(detection: &Mapping, fields: &mut FieldTable) -> Result<Node, String> {
    let keyword_slots: Vec<usize> = crate::fields::KEYWORD_FIELDS
        .iter()
        .map(|p| fields.slot(p))
        .collect();
    let mut searches = Vec::new();
    let mut conditions = Vec::new();
    for (key, value) in detection {
        let Some(key) = key.as_str() else {
            return Err(format!("detection key {key:?} is not a name"));
        };
        match key {
            "condition" => conditions = condition_texts(value)?,
            "timeframe" => {
                return Err(
                    "timeframe (old-style aggregation) is not supported: write a correlation rule"
                        .into(),
                )
            }
            name => {
                let node = search(value, fields, &keyword_slots)
                    .map_err(|e| format!("search {name}: {e}"))?;
                searches.push((name.to_owned(), node));
            }
        }
    }
    if conditions.is_empty() {
        return Err("detection has no condition".into());
    }
    let mut nodes = conditions
        .iter()
        .map(|c| condition::compile(c, &searches))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if nodes.len() == 1 {
        nodes.remove(0)
    } else {
        Node::Or(nodes)
    })
}

/// A condition is a text, or a list of texts that are OR'ed.
fn condition_texts(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or("condition list holds a non-text".to_owned())
            })
            .collect(),
        _ => Err("condition is not a text".into()),
    }
}

fn search(value: &Value, fields: &mut FieldTable, kw: &[usize]) -> Result<Node, String> {
    match value {
        Value::Mapping(m) => map_search(m, fields, kw),
        Value::Sequence(items) if items.is_empty() => Err("empty list".into()),
        Value::Sequence(items) if items.iter().all(|v| matches!(v, Value::Mapping(_))) => {
            let nodes = items
                .iter()
                .filter_map(Value::as_mapping)
                .map(|m| map_search(m, fields, kw))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Node::Or(nodes))
        }
        Value::Sequence(_) | Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            keyword_values(value, Modifiers::default(), kw)
        }
        Value::Null => Err("empty search".into()),
        Value::Tagged(_) => Err("YAML tags are not supported".into()),
    }
}

fn keyword_values(value: &Value, mut mods: Modifiers, kw: &[usize]) -> Result<Node, String> {
    // A keyword is found anywhere in the text, as full-text search finds it.
    if !(mods.re || mods.startswith || mods.endswith) {
        mods.contains = true;
    }
    values_node(value, &mods, |v| Node::Keyword {
        slots: kw.to_vec(),
        value: v,
    })
}

fn map_search(map: &Mapping, fields: &mut FieldTable, kw: &[usize]) -> Result<Node, String> {
    if map.is_empty() {
        return Err("empty map".into());
    }
    let mut items = Vec::new();
    for (key, value) in map {
        let key = match key {
            Value::String(s) => s.as_str(),
            other => return Err(format!("field name {other:?} is not a text")),
        };
        let mut parts = key.split('|');
        let name = parts.next().unwrap_or_default();
        let mods = Modifiers::parse(parts)?;
        if name.is_empty() {
            items.push(keyword_values(value, mods, kw)?);
            continue;
        }
        let slot = fields.slot(ecs_path(name)?);
        items.push(
            values_node(value, &mods, |v| Node::Field { slot, value: v })
                .map_err(|e| format!("{name}: {e}"))?,
        );
    }
    Ok(if items.len() == 1 {
        items.remove(0)
    } else {
        Node::And(items)
    })
}

/// One value, or a list of values (OR, or AND with `all`), into matchers.
fn values_node(
    value: &Value,
    mods: &Modifiers,
    leaf: impl Fn(ValueMatch) -> Node,
) -> Result<Node, String> {
    if mods.exists {
        return match value {
            Value::Bool(b) => Ok(leaf(ValueMatch::Exists(*b))),
            _ => Err("exists takes true or false".into()),
        };
    }
    let values: Vec<&Value> = match value {
        Value::Sequence(items) if items.is_empty() => return Err("empty list of values".into()),
        Value::Sequence(items) => items.iter().collect(),
        Value::Null => {
            return if mods.all || mods.re || mods.windash {
                Err("null takes no modifier".into())
            } else {
                Ok(leaf(ValueMatch::Null))
            }
        }
        other => vec![other],
    };
    let mut nodes = Vec::with_capacity(values.len());
    for v in values {
        let text = match v {
            Value::Null => return Err("null cannot be one of a list of values".into()),
            v => scalar_text(v).ok_or_else(|| format!("value {v:?} is not a text or a number"))?,
        };
        let mut variants: Vec<Node> = mods.compile(&text)?.into_iter().map(&leaf).collect();
        nodes.push(if variants.len() == 1 {
            variants.remove(0)
        } else {
            Node::Or(variants)
        });
    }
    Ok(match (nodes.len(), mods.all) {
        (1, _) => nodes.remove(0),
        (_, true) => Node::And(nodes),
        (_, false) => Node::Or(nodes),
    })
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn correlation(doc: &Mapping, corr: &Value) -> Result<CorrelationDef, String> {
    let Value::Mapping(c) = corr else {
        return Err("correlation is not a map".into());
    };
    match c.get("type").and_then(Value::as_str) {
        Some("event_count") => {}
        Some(other) => {
            return Err(format!(
                "correlation type {other} not supported: only event_count"
            ))
        }
        None => return Err("correlation has no type".into()),
    }
    let list = |key: &str| -> Result<Vec<String>, String> {
        match c.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| scalar_text(v).ok_or(format!("correlation {key}: not a list of names")))
                .collect(),
            Some(_) => Err(format!("correlation {key}: not a list of names")),
        }
    };
    let rules = list("rules")?;
    if rules.is_empty() {
        return Err("correlation names no rules".into());
    }
    let group_by = list("group-by")?
        .iter()
        .map(|f| ecs_path(f).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    let span = c
        .get("timespan")
        .and_then(scalar_text)
        .ok_or("correlation has no timespan")?;
    let generate = doc.get("generate").or_else(|| c.get("generate"));
    Ok(CorrelationDef {
        rules,
        group_by,
        span_micros: timespan_micros(&span)?,
        threshold: threshold(c.get("condition"))?,
        generate: matches!(generate, Some(Value::Bool(true))),
    })
}

/// `90s`, `5m`, `1h`, `2d`.
fn timespan_micros(span: &str) -> Result<i64, String> {
    let bad = || format!("timespan {span:?}: a number and s, m, h or d");
    let unit = span.chars().last().ok_or_else(bad)?;
    let secs: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n: i64 = span[..span.len() - 1].parse().map_err(|_| bad())?;
    match n.checked_mul(secs) {
        Some(total) if (1..=366 * 86400).contains(&total) => Ok(total * 1_000_000),
        _ => Err(format!("timespan {span:?}: between 1s and 366d")),
    }
}

/// Counts are streamed: an alert fires when the count reaches a floor, so only `gte`
/// and `gt` make sense here.
fn threshold(cond: Option<&Value>) -> Result<u64, String> {
    let Some(Value::Mapping(m)) = cond else {
        return Err("correlation condition missing: expected gte: N".into());
    };
    if m.len() != 1 {
        return Err("correlation condition: exactly one of gte or gt".into());
    }
    let (op, n) = m.iter().next().ok_or("correlation condition is empty")?;
    let n = n
        .as_u64()
        .ok_or("correlation condition: the count is not a whole number")?;
    match op.as_str() {
        Some("gte") if n >= 1 => Ok(n),
        Some("gt") => Ok(n.saturating_add(1)),
        Some(other) => Err(format!("correlation condition {other} not supported: only gte or gt (a count that reaches a floor)")),
        None => Err("correlation condition key is not a name".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn techniques_from_tags() {
        assert_eq!(
            technique("attack.t1059.004".into()).as_deref(),
            Some("T1059.004")
        );
        assert_eq!(technique("attack.t1105".into()).as_deref(), Some("T1105"));
        assert_eq!(technique("attack.execution".into()), None);
        assert_eq!(technique("attack.t10".into()), None);
        assert_eq!(technique("cve.2021.1".into()), None);
    }

    #[test]
    fn timespans() {
        assert_eq!(timespan_micros("60s"), Ok(60_000_000));
        assert_eq!(timespan_micros("5m"), Ok(300_000_000));
        assert!(timespan_micros("5").is_err());
        assert!(timespan_micros("xs").is_err());
        assert!(timespan_micros("").is_err());
        assert!(timespan_micros("99999999999d").is_err());
    }
}
