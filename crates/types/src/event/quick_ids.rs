//! The fast path of [`super::EventIds::parse`], taken by the master for every event a
//! plugin writes: one pass over the bytes, no allocation, the whole document checked.
//!
//! It answers only for the plain case (no escapes in keys or ids, no `dropped`, `ended`
//! or `stats`, known sections as objects, nesting under 64) and only when the document
//! is JSON that serde_json accepts with the same ids; for anything else it says nothing
//! and the caller asks serde_json, whose answer (and error) stands. So it may be
//! stricter than serde_json, never looser: a plugin cannot slip past it what serde_json
//! would refuse.

/// What the fast path read: the fields of [`super::EventIds`] in the plain case.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct QuickIds<'a> {
    pub host_id: Option<&'a str>,
    pub sequence: u64,
    pub action: &'a str,
    pub plugin: &'a str,
    pub run_id: &'a str,
}

/// Deeper documents are left to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// The ids of `bytes` when it is a plain event; `None` says "ask serde_json".
pub(super) fn scan(bytes: &[u8]) -> Option<QuickIds<'_>> {
    // No control characters at all (JSON allows tab, CR and LF between tokens, but a
    // plugin's serializer writes none): strings are then scanned for quotes and
    // backslashes only.
    if bytes.iter().fold(false, |seen, &b| seen | (b < 0x20)) {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut c = Cursor { text, i: 0 };
    let ids = c.event()?;
    c.ws();
    (c.i == bytes.len()).then_some(ids)
}

struct Cursor<'a> {
    text: &'a str,
    i: usize,
}

/// A field of a known section, refused when it comes twice (as serde_json refuses it).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn ws(&mut self) {
        while matches!(self.bytes().get(self.i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes().get(self.i).copied()
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.i + word.len();
        (self.bytes().get(self.i..end)? == word.as_bytes()).then(|| self.i = end)
    }

    /// The members of an object, `{` already taken: `member` reads each one's value
    /// after its key.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.plain_str()?;
            self.eat(b':')?;
            member(self, key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// The top-level object.
    fn event(&mut self) -> Option<QuickIds<'a>> {
        self.eat(b'{')?;
        let (mut event, mut hids, mut host) = (None, None, None);
        self.members(|c, key| match key {
            "event" => once(&mut event, c.event_meta()?),
            "hids" => once(&mut hids, c.hids()?),
            "host" => once(&mut host, c.host()?),
            _ => c.value(1),
        })?;
        let (sequence, action) = event?;
        let (plugin, run_id) = hids?;
        Some(QuickIds {
            host_id: host.flatten(),
            sequence,
            action,
            plugin,
            run_id,
        })
    }

    /// `event`: its sequence and action (`""` when absent, as serde's default).
    fn event_meta(&mut self) -> Option<(u64, &'a str)> {
        self.eat(b'{')?;
        let (mut sequence, mut action) = (None, None);
        self.members(|c, key| match key {
            "sequence" => once(&mut sequence, c.plain_u64()?),
            "action" => once(&mut action, c.plain_str()?),
            _ => c.value(2),
        })?;
        Some((sequence?, action.unwrap_or("")))
    }

    /// `hids`: plugin and run id; what only the master may declare (or a stats record)
    /// is left to serde_json.
    fn hids(&mut self) -> Option<(&'a str, &'a str)> {
        self.eat(b'{')?;
        let (mut plugin, mut run_id) = (None, None);
        self.members(|c, key| match key {
            "plugin" => once(&mut plugin, c.plain_str()?),
            "run_id" => once(&mut run_id, c.plain_str()?),
            "dropped" | "ended" | "stats" => None,
            _ => c.value(2),
        })?;
        Some((plugin?, run_id?))
    }

    /// `host`: null, or an object with an id.
    fn host(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            return self.literal("null").map(|()| None);
        }
        self.eat(b'{')?;
        let mut id = None;
        self.members(|c, key| match key {
            "id" => once(&mut id, c.plain_str()?),
            _ => c.value(2),
        })?;
        Some(Some(id?))
    }

    /// A string without escapes or control characters: its contents.
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = quote_or_backslash(&self.bytes()[start..])?;
        if self.bytes()[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        self.text.get(start..start + len)
    }

    /// An unsigned integer as serde_json reads a u64: digits only, no leading zero.
    fn plain_u64(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(d) = self.bytes().get(self.i).filter(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        let leading_zero = digits > 1 && self.bytes()[start] == b'0';
        let more = matches!(self.bytes().get(self.i), Some(b'.' | b'e' | b'E'));
        (digits > 0 && !leading_zero && !more).then_some(n)
    }

    /// Any JSON value, checked and skipped.
    fn value(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.i += 1;
                self.members(|c, _| c.value(depth + 1))
            }
            b'[' => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    if self.eat(b',').is_none() {
                        return self.eat(b']');
                    }
                }
            }
            b'"' => self.skip_str(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Any string: escapes must be JSON's own; `\u` escapes are left to serde_json.
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = &self.bytes()[self.i..];
            let at = quote_or_backslash(rest)?;
            self.i += at + 1;
            if rest[at] == b'"' {
                return Some(());
            }
            let escaped = *self.bytes().get(self.i)?;
            if !matches!(
                escaped,
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't'
            ) {
                return None;
            }
            self.i += 1;
        }
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.bytes().get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.bytes().get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.bytes().get(self.i) == Some(&b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.bytes().get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.bytes().get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // "01" or "1x": whatever follows must end the number.
        match self.bytes().get(self.i) {
            Some(b) if b.is_ascii_alphanumeric() || *b == b'.' => None,
            _ => Some(()),
        }
    }

    fn digits(&mut self) {
        while self.bytes().get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

/// Where the first quote or backslash in `bytes` is: eight bytes at a time, as strings
/// are most of an event.
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    // A zero byte's high bit; bytes after the first zero may be flagged too, never before.
    let zeros = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let found = zeros(w ^ QUOTES) | zeros(w ^ BACKSLASHES);
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    let tail = chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\')?;
    Some(offset + tail)
}

#[cfg(test)]
mod tests;
