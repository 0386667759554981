//! The control plane on etcd, one definition shared by the agent, `hidsctl` and the
//! fleet simulator: where every key lives ([`Keys`]), how desired states are signed and
//! verified ([`sign`]), how targets are chosen ([`select`]), and the agent's session with
//! etcd (lease, presence, the one watch: [`session`]).
//!
//! Deliberately absent: what an agent does with a desired state once verified (the
//! agent's business), and anything about plugins or events.

pub mod credentials;
mod hex;
pub mod hub;
pub mod keys;
pub mod publish;
pub mod select;
pub mod session;
pub mod sign;
pub mod state;

pub use keys::Keys;
pub use sign::{Refusal, SigningKey, TrustedKeys, Verified};

/// `N` bytes from the kernel's random source (keys, passwords).
fn os_random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes)
}

/// etcd answered but could not keep up (deadline exceeded, "too many requests": its
/// apply fell 5,000 entries behind its commits). Retrying later is right; giving up a
/// lease or a session over it makes the overload worse.
pub fn overloaded(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
            ) || status.message().contains("too many requests")
                || status.message().contains("request timed out")
        }
        _ => false,
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS to etcd: the CA to trust, and the client certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {path}: {source}")]
    File {
        path: std::path::PathBuf,
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
    /// Connects (with HTTP/2 keepalives, so a dead connection is noticed within seconds).
    ///
    /// # Errors
    /// When a TLS file is unreadable or no endpoint answers.
    pub async fn connect(&self) -> Result<etcd_client::Client, ConnectError> {
        use std::time::Duration;
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            let read = |p: &std::path::PathBuf| {
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
    #[test]
    fn overload_is_told_from_other_failures() {
        let status = |code, msg: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg.to_owned()))
        };
        use tonic::Code;
        assert!(super::overloaded(&status(
            Code::Unknown,
            "etcdserver: too many requests"
        )));
        assert!(super::overloaded(&status(
            Code::Unavailable,
            "etcdserver: request timed out, waiting for the applied index took too long"
        )));
        assert!(super::overloaded(&status(Code::DeadlineExceeded, "")));
        assert!(!super::overloaded(&status(
            Code::NotFound,
            "etcdserver: requested lease not found"
        )));
        assert!(!super::overloaded(&status(
            Code::PermissionDenied,
            "denied"
        )));
    }
}
