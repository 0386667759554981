//! How to reach etcd, defined once for the agent (its `[control]` table) and `hidsctl`
//! (its global flags): both write the same settings under the same names
//! ([`EtcdSettings`]), and one conversion ([`EtcdSettings::config`]) turns them into
//! what [`EtcdConfig::connect`] uses.
//!
//! Deliberately absent: checking the settings for the agent's config file (it names
//! its own keys in its messages, see `hids-agent check-config`).

use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::{Credentials, CredentialsError};

/// etcd connection settings as an operator writes them: the keys of the agent's
/// `[control]` table, and `hidsctl`'s `--endpoints`, `--user`, `--password`,
/// `--ca-file`, `--cert-file` and `--key-file`.
///
/// The agent's config keeps these keys as fields of its own `[control]` table and hands
/// them over: flattened into that table with serde, the table's parse errors would lose
/// their line and the list of the keys it knows.
#[derive(Debug, Clone, Default)]
pub struct EtcdSettings {
    /// etcd client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// A file (mode 0600) with a `[control]` table holding `user` and `password`, as
    /// written by `hidsctl enroll`; instead of `user` and `password`.
    pub credentials_file: Option<PathBuf>,
    /// etcd user, with `password` (when etcd has authentication on).
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA certificate (PEM) to verify etcd's TLS certificate: TLS is on when given.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's TLS client authentication.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A `--user user:password` flag (`hids-sim`, `hids-gateway`): the user and password.
///
/// # Errors
/// When there is no `:`.
pub fn user_and_password(flag: Option<&str>) -> Result<(Option<String>, Option<String>), String> {
    match flag {
        Some(u) => u
            .split_once(':')
            .map(|(u, p)| (Some(u.to_owned()), Some(p.to_owned())))
            .ok_or_else(|| "--user: give user:password".to_owned()),
        None => Ok((None, None)),
    }
}

impl EtcdSettings {
    /// What to connect with: the credentials from `credentials_file` when given, else
    /// `user` with `password` (one without the other is no login); TLS when `ca_file`
    /// is given, with a client identity when both `cert_file` and `key_file` are.
    ///
    /// # Errors
    /// When the credentials file cannot be used (unreadable, readable by others, not a
    /// `[control]` user and password).
    pub fn config(&self) -> Result<EtcdConfig, CredentialsError> {
        let user = match &self.credentials_file {
            Some(file) => {
                let Credentials { user, password } = Credentials::load(file)?;
                Some((user, password))
            }
            None => self.user.clone().zip(self.password.clone()),
        };
        Ok(EtcdConfig {
            endpoints: self.endpoints.clone(),
            user,
            tls: self.ca_file.clone().map(|ca| TlsFiles {
                ca,
                cert: self.cert_file.clone(),
                key: self.key_file.clone(),
            }),
        })
    }
}

/// How to reach etcd, resolved from [`EtcdSettings`]: the credentials read, TLS files
/// named.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS to etcd: the CA to trust, and the client certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
}

impl EtcdConfig {
    /// The same settings with one endpoint: the `attempt`-th in this host's own order
    /// of the endpoints (rendezvous hashing: by `hash(host_id/endpoint)`).
    /// A session talks to one endpoint at a time. etcd's client spreads requests over
    /// every endpoint it is given, which suits the members of one etcd cluster (a lease
    /// is the cluster's) but not watch gateways: an agent's lease lives in the gateway
    /// that granted it, and a keepalive sent to another is answered "not found". Each
    /// host's order is its own, so a fleet spreads over its gateways, and the agents of
    /// one that goes spread over all the others rather than onto its neighbour.
    #[must_use]
    pub fn one_endpoint(&self, host_id: &str, attempt: u32) -> EtcdConfig {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.clone();
        }
        let mut order: Vec<&String> = self.endpoints.iter().collect();
        order.sort_by_key(|e| hids_types::stagger::host_hash(&format!("{host_id}/{e}")));
        EtcdConfig {
            endpoints: vec![order[attempt as usize % n].clone()],
            ..self.clone()
        }
    }

    /// Connects (with HTTP/2 keepalives, so a dead connection is noticed within seconds).
    ///
    /// # Errors
    /// When a TLS file is unreadable or no endpoint answers.
    pub async fn connect(&self) -> Result<etcd_client::Client, ConnectError> {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| ConnectError::File {
                    path: p.clone(),
                    source,
                })
            };
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(t);
        }
        etcd_client::Client::connect(&self.endpoints, Some(opts))
            .await
            .map_err(|source| ConnectError::Etcd {
                endpoints: self.endpoints.join(","),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_uses_one_endpoint_in_its_hosts_own_order_and_moves_on_after_a_failure() {
        let cfg = EtcdConfig {
            endpoints: vec!["http://a".into(), "http://b".into(), "http://c".into()],
            ..Default::default()
        };
        let pick = |host: &str, attempt| cfg.one_endpoint(host, attempt).endpoints;
        let first = pick("web-1", 0);
        assert_eq!(first.len(), 1);
        assert_eq!(pick("web-1", 0), first, "stable per host");
        let tried: std::collections::BTreeSet<_> =
            (0..3).map(|a| pick("web-1", a)[0].clone()).collect();
        assert_eq!(tried.len(), 3, "three attempts, three endpoints");
        assert_eq!(pick("web-1", 3), first);
        let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        let firsts: std::collections::BTreeSet<_> =
            hosts.iter().map(|h| pick(h, 0)[0].clone()).collect();
        assert_eq!(firsts.len(), 3, "hosts spread over every endpoint");
        // a's hosts, when a goes, spread over b and c, not all onto one neighbour.
        let next_of_a: std::collections::BTreeSet<_> = hosts
            .iter()
            .filter(|h| pick(h, 0)[0] == "http://a")
            .map(|h| pick(h, 1)[0].clone())
            .collect();
        assert_eq!(next_of_a.len(), 2, "{next_of_a:?}");
    }
}
