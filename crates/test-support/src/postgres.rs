//! A throwaway PostgreSQL cluster (Debian's `postgresql`) on a free loopback port, for
//! the tests of the shared alert store. PostgreSQL refuses to run as root, so the
//! cluster belongs to the `postgres` user and is started through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{free_port, is_root};

/// The newest installed server's binaries (`/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// Whether a cluster can be started here: PostgreSQL installed, and root (to run it as
/// `postgres`). Otherwise the calling test is skipped (see [`crate::skip`]), which
/// under CI is a failure.
pub fn postgres_available() -> bool {
    if bin_dir().is_none() {
        crate::skip("PostgreSQL is missing (install postgresql)");
        return false;
    }
    if !is_root() {
        crate::skip("needs root to run PostgreSQL as the postgres user");
        return false;
    }
    true
}

pub struct Postgres {
    bin: PathBuf,
    /// Holds the data directory (`data/`) and the Unix socket.
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("runuser {tool}: {e}"))
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Makes and starts a cluster (about two seconds); trust authentication, superuser
    /// `postgres`. Call [`postgres_available`] first.
    pub fn start() -> Postgres {
        let bin = bin_dir().expect("postgres_available() first");
        let dir = tempfile::tempdir().unwrap();
        let owner = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .output()
            .unwrap();
        check("chown postgres", &owner);
        let data = dir.path().join("data");
        let data_arg = data.to_str().unwrap();
        check(
            "initdb",
            &as_postgres(
                &bin,
                "initdb",
                &[
                    "-D", data_arg, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                ],
            ),
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        let started = as_postgres(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data_arg,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        let pg = Postgres { bin, dir, port };
        if !started.status.success() {
            panic!(
                "pg_ctl start: {}\n{}\nserver log:\n{}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        pg
    }

    /// The URL of the default database (`postgres`).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `name` (see [`Postgres::create_database`]).
    pub fn url_of(&self, name: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database (a name of letters, digits and `_`) and returns its URL:
    /// one per test case, so cases share a cluster and not their data.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}"
        );
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url()])
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .output()
            .unwrap();
        check(&format!("CREATE DATABASE {name}"), &out);
        self.url_of(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        // immediate: the data is thrown away anyway.
        as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
