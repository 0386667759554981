//! The operating system and the running kernel.

use std::path::Path;

use hids_types::package::OsRelease;

/// os-release(5) is a few hundred bytes; more is not one.
const MAX_OS_RELEASE_BYTES: u64 = 64 << 10;

/// `/etc/os-release`, else `/usr/lib/os-release`, under `root`. Empty fields when neither
/// is there or readable (the inventory goes on without them).
pub fn os_release(root: &Path) -> OsRelease {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(text) = read_small(&root.join(rel), MAX_OS_RELEASE_BYTES) {
            return parse_os_release(&text);
        }
    }
    OsRelease::default()
}

/// The running kernel's release (`uname -r`), from procfs.
pub fn kernel_release(proc_root: &Path) -> String {
    read_small(&proc_root.join("sys/kernel/osrelease"), 256)
        .map(|s| tidy(s.trim()))
        .unwrap_or_default()
}

/// A field as the server takes it: no control characters, at most 256 bytes (cut at a
/// character boundary). Done before hashing, so what is hashed is what is sent.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_FIELD));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_FIELD {
            break;
        }
        out.push(c);
    }
    out
}

/// hids-server refuses longer OS fields.
const MAX_FIELD: usize = 256;

fn read_small(path: &Path, max: u64) -> Option<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = tidy(&unquote(value.trim()));
        match key.trim() {
            "ID" => os.id = value,
            "VERSION_ID" => os.version_id = value,
            "VERSION_CODENAME" => os.codename = value,
            "PRETTY_NAME" => os.name = value,
            _ => {}
        }
    }
    os
}

/// Shell-style quoting as os-release(5) allows: `"..."` or `'...'`, backslash escapes
/// inside double quotes.
fn unquote(value: &str) -> String {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(&q @ (b'"' | b'\'')) if bytes.len() >= 2 && bytes[bytes.len() - 1] == q => {
            let inner = &value[1..value.len() - 1];
            if q == b'"' {
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        out.extend(chars.next());
                    } else {
                        out.push(c);
                    }
                }
                out
            } else {
                inner.to_owned()
            }
        }
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_os_release_names_its_codename() {
        let os = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n# comment\njunk\n",
        );
        assert_eq!(os.id, "debian");
        assert_eq!(os.version_id, "12");
        assert_eq!(os.codename, "bookworm");
        assert_eq!(os.name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(unquote(r#""a \"b\"""#), r#"a "b""#);
        assert_eq!(unquote("'x'"), "x");
        assert_eq!(unquote("\""), "\"");
        assert_eq!(tidy("a\u{7}b"), "ab");
        assert_eq!(tidy(&"é".repeat(200)).len(), 256);
    }
}
