//! Who is looking: operators log in with a password (kept as an Argon2id hash), get a
//! session cookie (its token random, kept in the store only as a SHA-256), and every
//! change they make is recorded under their name. One-time login links let a script or a
//! test browser in without typing a password (`hids-server login-link`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "hids_session";
/// How long a login link works (it works once).
pub const LINK_LIFETIME: Duration = Duration::from_secs(120);
/// Failed logins per operator name before further tries wait out [`LOCKOUT`].
const MAX_FAILURES: u32 = 5;
const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Names whose failures are remembered at most, per table (see [`Throttle`]).
const MAX_TRACKED_NAMES: usize = 10_000;
/// Longest operator name and password accepted.
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_PASSWORD_BYTES: usize = 1_024;

/// An Argon2id hash of `password` in PHC form (algorithm, parameters and salt included),
/// with the crate's defaults (19 MiB, 2 passes: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches a stored PHC hash; a hash that does not parse never does.
pub fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks an operator name: what the history shows, so printable and short.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("an operator name has 1 to {MAX_NAME_BYTES} bytes"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
    {
        return Err(format!(
            "operator name {name:?}: use letters, digits and . _ @ - only"
        ));
    }
    Ok(())
}

/// A new random token (256 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// What the store keeps of a token: its SHA-256, so a copy of the database opens no
/// session. Links and sessions hash under different prefixes: one cannot stand for the
/// other.
pub fn session_key(token: &str) -> String {
    hex(&Sha256::digest(format!("session:{token}").as_bytes()))
}

pub fn link_key(token: &str) -> String {
    hex(&Sha256::digest(format!("link:{token}").as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The Set-Cookie value for a new session (`secure` when served over TLS). Lax, not
/// Strict: a link to an alert from a chat message or a mail must open it for a
/// logged-in operator; every change is a POST, which Lax keeps from other sites, and
/// is checked against its Origin besides.
pub fn session_cookie(token: &str, lifetime: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        lifetime.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

pub fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// Whether a state-changing request comes from a page of this server: browsers send
/// `Origin` on every POST; it must name the host the request was sent to, or the
/// console's public origin (`[console] public_origin`, for a proxy that rewrites
/// `Host`). The session cookie is SameSite=Lax as well, so another site's form carries
/// none.
pub fn same_origin(headers: &HeaderMap, public_origin: Option<&str>) -> Result<(), String> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => return Ok(()),
        Some(Ok(origin)) => origin,
        Some(Err(_)) => return Err("an Origin that is not text".into()),
    };
    if public_origin.is_some_and(|p| p.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    if origin_host.is_some() && origin_host == host {
        return Ok(());
    }
    Err(format!(
        "Origin {origin:?} is neither the Host this request was sent to ({}) nor [console] public_origin ({})",
        host.unwrap_or("none"),
        public_origin.unwrap_or("not set")
    ))
}

/// Failed logins per name, so a password cannot be guessed at the speed of the hash.
/// Operators that exist are kept apart from names that do not: the store holds at most
/// [`MAX_TRACKED_NAMES`] operators, so their lockouts always fit and are never
/// forgotten; unknown names (tracked only so that a lockout does not tell which names
/// exist) are forgotten oldest first when their table is full, which costs nothing.
#[derive(Default)]
pub struct Throttle {
    operators: Mutex<HashMap<String, (u32, Instant)>>,
    unknown: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    fn table(&self, known: bool) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        let table = if known {
            &self.operators
        } else {
            &self.unknown
        };
        table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `name` (an operator that exists: `known`) may try now.
    pub fn allows(&self, name: &str, known: bool) -> bool {
        match self.table(known).get(name) {
            Some((n, since)) => *n < MAX_FAILURES || since.elapsed() >= LOCKOUT,
            None => true,
        }
    }

    /// Counts a failure; call only after [`Throttle::allows`] said yes.
    pub fn failed(&self, name: &str, known: bool) {
        let mut table = self.table(known);
        if table.len() >= MAX_TRACKED_NAMES && !table.contains_key(name) {
            table.retain(|_, (_, since)| since.elapsed() < LOCKOUT);
            if table.len() >= MAX_TRACKED_NAMES {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
        }
        let entry = table.entry(name.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOCKOUT {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    pub fn succeeded(&self, name: &str) {
        self.table(true).remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let stored = hash_password("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(password_matches("correct horse", &stored));
        assert!(!password_matches("correct horsf", &stored));
        assert!(!password_matches("correct horse", "not a hash"));
        // Salted: the same password hashes differently each time.
        assert_ne!(stored, hash_password("correct horse").unwrap());
    }

    #[test]
    fn tokens_are_random_and_stored_hashed_per_use() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
        assert_ne!(session_key(&t), link_key(&t));
        assert_ne!(session_key(&t), t);
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_checked() {
        let t = new_token();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={t}; c=d")).unwrap(),
        );
        assert_eq!(session_token(&h), Some(t));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("hids_session=../../etc"),
        );
        assert_eq!(session_token(&h), None);
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hids.example:8080"));
        assert!(same_origin(&h, None).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://hids.example:8080"),
        );
        assert!(same_origin(&h, None).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let refused = same_origin(&h, None).unwrap_err();
        assert!(refused.contains("evil.example") && refused.contains("public_origin"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h, None).is_err());
        // Behind a proxy that rewrites Host: the configured public origin.
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://hids.corp"),
        );
        assert!(same_origin(&h, Some("https://hids.corp/")).is_ok());
        assert!(same_origin(&h, Some("https://other.corp")).is_err());
    }

    #[test]
    fn guessing_is_throttled_per_name() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES {
            assert!(t.allows("ana", true));
            t.failed("ana", true);
        }
        assert!(!t.allows("ana", true));
        assert!(t.allows("bob", true));
        t.succeeded("ana");
        assert!(t.allows("ana", true));
    }

    #[test]
    fn unknown_names_cannot_push_out_an_operators_lockout() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES {
            t.failed("ana", true);
        }
        for i in 0..MAX_TRACKED_NAMES + 10 {
            t.failed(&format!("n{i}"), false);
        }
        assert!(!t.allows("ana", true), "a lockout was forgotten");
        assert!(
            t.allows("bob", true),
            "an operator was refused for others' failures"
        );
        assert!(t.unknown.lock().unwrap().len() <= MAX_TRACKED_NAMES);
    }

    #[test]
    fn names_are_printable_and_short() {
        assert!(valid_name("ana.ops@corp").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("a b").is_err());
        assert!(valid_name("<script>").is_err());
        assert!(valid_name(&"a".repeat(65)).is_err());
    }
}
