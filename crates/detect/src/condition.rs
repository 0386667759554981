//! Sigma conditions: `and`, `or`, `not`, parentheses, `1 of X*`, `all of them`, over the
//! detection's named searches. Precedence, loosest first: or, and, not, `of`, brackets.

use crate::matcher::Node;

/// Conditions are short; anything longer is not a rule someone wrote by hand.
const MAX_CONDITION_TOKENS: usize = 1000;
const MAX_DEPTH: usize = 64;

pub(crate) fn compile(text: &str, searches: &[(String, Node)]) -> Result<Node, String> {
    if text.contains('|') {
        return Err(format!(
            "condition {text:?}: aggregations (|) are not supported, write a correlation rule"
        ));
    }
    let tokens = tokenize(text);
    if tokens.len() > MAX_CONDITION_TOKENS {
        return Err(format!(
            "condition has more than {MAX_CONDITION_TOKENS} tokens"
        ));
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        searches,
        depth: 0,
    };
    let node = p.or()?;
    match p.tokens.get(p.pos) {
        None => Ok(node),
        Some(t) => Err(format!("condition {text:?}: unexpected {t:?}")),
    }
}

fn tokenize(text: &str) -> Vec<String> {
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    spaced.split_whitespace().map(str::to_owned).collect()
}

struct Parser<'a> {
    tokens: Vec<String>,
    pos: usize,
    searches: &'a [(String, Node)],
    depth: usize,
}

impl Parser<'_> {
    fn peek_is(&self, word: &str) -> bool {
        self.tokens
            .get(self.pos)
            .is_some_and(|t| t.eq_ignore_ascii_case(word))
    }

    fn next(&mut self) -> Result<String, String> {
        let t = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or("condition ends too early")?;
        self.pos += 1;
        Ok(t)
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut items = vec![self.and()?];
        while self.peek_is("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(flatten(items, Node::Or))
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut items = vec![self.not()?];
        while self.peek_is("and") {
            self.pos += 1;
            items.push(self.not()?);
        }
        Ok(flatten(items, Node::And))
    }

    fn not(&mut self) -> Result<Node, String> {
        if self.peek_is("not") {
            self.pos += 1;
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("condition nests deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Node, String> {
        let tok = self.next()?;
        if tok == "(" {
            self.enter()?;
            let inner = self.or()?;
            self.depth -= 1;
            return match self.next()?.as_str() {
                ")" => Ok(inner),
                other => Err(format!("condition: expected ')', found {other:?}")),
            };
        }
        if self.peek_is("of") {
            self.pos += 1;
            let pattern = self.next()?;
            return self.quantified(&tok, &pattern);
        }
        if ["and", "or", ")", "of", "them"]
            .iter()
            .any(|w| tok.eq_ignore_ascii_case(w))
        {
            return Err(format!("condition: unexpected {tok:?}"));
        }
        self.searches
            .iter()
            .find(|(name, _)| *name == tok)
            .map(|(_, node)| node.clone())
            .ok_or_else(|| format!("condition names {tok:?}, which the detection does not define"))
    }

    fn quantified(&self, quantity: &str, pattern: &str) -> Result<Node, String> {
        let chosen: Vec<Node> = self
            .searches
            .iter()
            .filter(|(name, _)| {
                if pattern.eq_ignore_ascii_case("them") {
                    !name.starts_with('_')
                } else {
                    glob_match(pattern, name)
                }
            })
            .map(|(_, n)| n.clone())
            .collect();
        if chosen.is_empty() {
            return Err(format!(
                "condition: \"{quantity} of {pattern}\" matches no search"
            ));
        }
        if quantity.eq_ignore_ascii_case("all") {
            return Ok(flatten(chosen, Node::And));
        }
        match quantity.parse::<usize>() {
            Ok(1) => Ok(flatten(chosen, Node::Or)),
            Ok(n) if n >= 1 => Ok(Node::AtLeast(n, chosen)),
            _ => Err(format!(
                "condition: {quantity:?} of: expected 1, a count or all"
            )),
        }
    }
}

fn flatten(mut items: Vec<Node>, wrap: fn(Vec<Node>) -> Node) -> Node {
    if items.len() == 1 {
        if let Some(only) = items.pop() {
            return only;
        }
    }
    wrap(items)
}

/// `*` in a search-identifier pattern stands for any run of characters.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return false,
    };
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_patterns() {
        assert!(glob_match("selection_*", "selection_a"));
        assert!(glob_match("selection*", "selection"));
        assert!(!glob_match("selection_*", "filter_a"));
        assert!(glob_match("*_img_*", "sel_img_x"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
    }
}
