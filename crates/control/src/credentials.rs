//! Per-host etcd credentials, defined once for `hidsctl enroll` (which makes them) and
//! the agent (which uses them): one etcd user and one role per host, the role allowed
//! exactly what the agent's [session](crate::session) does, and the file that carries
//! the user and password to the host (`[control]` table, mode 0600).
//!
//! Deliberately absent: the etcd calls that create users and roles (`hidsctl`'s job)
//! and TLS client certificates (they may join the file's `[control]` table later).

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use etcd_client::Permission;
use serde::Deserialize;

use crate::keys::prefix_end;
use crate::Keys;

/// The etcd user of a host; its role has the same name. Host ids are checked with
/// [`crate::keys::check_host_id`] first, so the name is a plain word.
pub fn host_user(host_id: &str) -> String {
    format!("hids-host-{host_id}")
}

/// The etcd role of a host (the same name as its user).
pub fn host_role(host_id: &str) -> String {
    host_user(host_id)
}

/// What a host's role may do, and nothing more. The session (crate::session):
/// - grants, keeps alive and revokes its lease: etcd 3.4 checks no key for these,
///   except that a revoke needs write on the keys attached to the lease (only ours);
/// - puts `agents/<id>` on its lease: read-write on that one key (read too, so an
///   operator can check a host's own view with its credentials);
/// - reads and watches `desired/<id>`: read on that one key;
/// - reads `blobs/<sha256>` named by a verified document: read on the `blobs/` range.
pub fn host_permissions(keys: &Keys, host_id: &str) -> Vec<Permission> {
    let blobs = keys.blobs();
    vec![
        Permission::read_write(keys.agent(host_id)),
        Permission::read(keys.desired(host_id)),
        Permission::read(blobs.clone()).with_range_end(prefix_end(&blobs)),
    ]
}

/// A strong etcd password: 256 bits from the kernel's random source, as 64 hex digits
/// (under bcrypt's 72-byte limit, and safe in any config syntax).
///
/// # Errors
/// When `/dev/urandom` cannot be read.
pub fn random_password() -> std::io::Result<String> {
    Ok(crate::hex::encode(&crate::os_random::<32>()?))
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:04o}: group or others can read this host's etcd password; \
         run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: {message} (expected a [control] table with user and password)")]
    Parse { path: PathBuf, message: String },
    #[error("{path} exists already: give --force to replace it (and rotate nothing by accident)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An etcd user and password. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    control: Credentials,
}

impl Credentials {
    /// Reads a credentials file, refusing one that group or others can read or write:
    /// the check is on the open file (fstat), so the file checked is the file read.
    ///
    /// # Errors
    /// Unreadable, too open (says to `chmod 600`), or not a `[control]` user/password.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let read_err = |source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(read_err)?;
        let parsed: CredentialsFile =
            toml::from_str(&text).map_err(|e| CredentialsError::Parse {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
        Ok(parsed.control)
    }

    /// The file's text. Strings are written as JSON strings, which are valid TOML basic
    /// strings (same escapes), so no TOML writer is needed for two values.
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        format!(
            "# etcd credentials of one host, made by `hidsctl enroll`. Keep mode 0600.\n\
             [control]\nuser = {}\npassword = {}\n",
            quote(&self.user),
            quote(&self.password)
        )
    }

    /// Writes the file, created with mode 0600 (never widened, then narrowed). Without
    /// `replace` an existing file is an error; with it, the new file is written beside
    /// it and renamed over it, so a reader sees the old file or the new one.
    ///
    /// # Errors
    /// When the file exists (without `replace`) or cannot be written.
    pub fn write(&self, path: &Path, replace: bool) -> Result<(), CredentialsError> {
        let target = if replace {
            let name = path.file_name().map_or_else(
                || "credentials".into(),
                |n| n.to_string_lossy().into_owned(),
            );
            path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
        } else {
            path.to_owned()
        };
        let write_err = |source| CredentialsError::Write {
            path: path.to_owned(),
            source,
        };
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !replace => {
                return Err(CredentialsError::Exists {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(write_err(e)),
        };
        let written = file
            .write_all(self.to_toml().as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| {
                if replace {
                    std::fs::rename(&target, path)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&target);
            return Err(write_err(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            user: host_user("web-17"),
            password: random_password().unwrap(),
        }
    }

    #[test]
    fn written_with_mode_0600_read_back_and_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-17.toml");
        let c = creds();
        c.write(&path, false).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(Credentials::load(&path).unwrap(), c);
        let err = creds().write(&path, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(Credentials::load(&path).unwrap(), c);
        let rotated = creds();
        rotated.write(&path, true).unwrap();
        assert_eq!(Credentials::load(&path).unwrap(), rotated);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        creds().write(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::load(&path).unwrap_err().to_string();
        assert!(err.contains("mode 0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_strong_and_never_debug_printed() {
        let c = creds();
        assert_eq!(c.password.len(), 64);
        assert_ne!(c.password, creds().password);
        assert!(!format!("{c:?}").contains(&c.password));
        let odd = Credentials {
            user: "u\"\\".into(),
            password: "p\n".into(),
        };
        let back: CredentialsFile = toml::from_str(&odd.to_toml()).unwrap();
        assert_eq!(back.control, odd);
    }

    #[test]
    fn a_host_role_names_its_own_keys_only() {
        let keys = Keys::default();
        let perms = host_permissions(&keys, "a");
        let ranges: Vec<(&[u8], &[u8])> = perms.iter().map(|p| (p.key(), p.range_end())).collect();
        assert_eq!(
            ranges,
            [
                (&b"/hids/v1/agents/a"[..], &b""[..]),
                (b"/hids/v1/desired/a", b""),
                (b"/hids/v1/blobs/", b"/hids/v1/blobs0"),
            ]
        );
    }
}
