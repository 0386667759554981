//! The control plane on etcd, one definition shared by the agent, `hidsctl` and the
//! fleet simulator: where every key lives ([`Keys`]), how desired states are signed and
//! verified ([`sign`]), how targets are chosen ([`select`]), the agent's session with
//! etcd (lease, presence, the one watch: [`session`]), how desired states are written
//! for many hosts at once with their history ([`writer`]), and how to reach etcd
//! ([`connect`]).
//!
//! Deliberately absent: what an agent does with a desired state once verified (the
//! agent's business), and anything about plugins or events.

pub mod connect;
pub mod credentials;
pub mod gateways;
pub mod hex;
pub mod hub;
pub mod keys;
pub mod publish;
pub mod read;
pub mod select;
pub mod session;
pub mod sign;
pub mod state;
pub mod writer;

pub use connect::{ConnectError, EtcdConfig, EtcdSettings, TlsFiles};
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
