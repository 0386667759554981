//! The agents' leases, held by the gateway instead of etcd.
//!
//! An agent grants, keeps alive and revokes its lease exactly as it would with etcd, but
//! none of it reaches etcd: 100,000 agents at TTL 60 s send 5,000 keepalives a second,
//! about two cores of etcd (docs/control-plane.md), and here they cost a map update.
//! etcd sees one lease per gateway, which carries every status key the gateway wrote.
//!
//! Each lease speaks for one status key, the first the agent writes on it: a lease
//! cannot be used to write a second host's key. When a lease expires or is revoked, its
//! key is deleted in etcd (if no newer lease of the same host owns it by then).
//!
//! A lease also belongs to the connection that granted it, and ends when that
//! connection closes: an agent killed with `-9` leaves the listing within about two
//! seconds (the next expiry pass and a transaction), a host that vanished within the
//! gateway's HTTP/2 keepalive (40 s), whatever its TTL. Only that connection may renew,
//! revoke or write with the lease.
//! That is why the gateway can grant long TTLs (`--agent-lease-ttl`), and the agents,
//! renewing at a third of the TTL granted, send few keepalives.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Shortest and longest TTL granted (an agent asking for less or more gets these).
pub const MIN_TTL_SECS: i64 = 5;
pub const MAX_TTL_SECS: i64 = 3600;

#[derive(Debug)]
struct AgentLease {
    ttl: i64,
    expires: Instant,
    key: Option<String>,
    connection: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("etcdserver: requested lease not found")]
    NotFound,
    #[error("lease {lease:x} speaks for {bound}, not {asked}: one lease, one status key")]
    OtherKey {
        lease: i64,
        bound: String,
        asked: String,
    },
}

/// Every agent lease of this gateway, and which lease owns each status key.
#[derive(Debug)]
pub struct Leases {
    by_id: HashMap<i64, AgentLease>,
    owner: HashMap<String, i64>,
    by_connection: HashMap<u64, HashSet<i64>>,
    /// High bits of every id: leases of an earlier run of this gateway (or another
    /// gateway) are not mistaken for current ones.
    salt: i64,
    next: i64,
}

impl Leases {
    pub fn new(salt: u32) -> Self {
        Leases {
            by_id: HashMap::new(),
            owner: HashMap::new(),
            by_connection: HashMap::new(),
            salt: i64::from(salt & 0x7fff_ffff) << 32,
            next: 0,
        }
    }

    /// A new lease of `ttl` seconds (clamped), ended early when `connection` closes:
    /// its id and TTL.
    pub fn grant(&mut self, ttl: i64, connection: u64, now: Instant) -> (i64, i64) {
        let ttl = ttl.clamp(MIN_TTL_SECS, MAX_TTL_SECS);
        let id = loop {
            self.next = (self.next + 1) & 0xffff_ffff;
            let id = self.salt | self.next;
            if id != 0 && !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.by_id.insert(
            id,
            AgentLease {
                ttl,
                expires: now + ttl_duration(ttl),
                key: None,
                connection,
            },
        );
        self.by_connection.entry(connection).or_default().insert(id);
        (id, ttl)
    }

    /// `id` as `connection` may use it: granted on that connection and not yet past
    /// its deadline. Another connection's lease is "not found" to it: ids are
    /// guessable, and one agent must not renew, end or write with another's lease.
    fn usable(&mut self, id: i64, connection: u64, now: Instant) -> Option<&mut AgentLease> {
        self.by_id
            .get_mut(&id)
            .filter(|l| l.connection == connection && l.expires > now)
    }

    /// Renews `id`: its TTL, or 0 when it is unknown (expired, revoked, another run's
    /// or another connection's).
    pub fn keep_alive(&mut self, id: i64, connection: u64, now: Instant) -> i64 {
        match self.usable(id, connection, now) {
            Some(lease) => {
                lease.expires = now + ttl_duration(lease.ttl);
                lease.ttl
            }
            None => 0,
        }
    }

    /// (TTL left in seconds, granted TTL, key) of `id`.
    pub fn time_to_live(
        &mut self,
        id: i64,
        connection: u64,
        now: Instant,
    ) -> Option<(i64, i64, Option<String>)> {
        self.usable(id, connection, now).map(|l| {
            let left = l.expires.saturating_duration_since(now).as_secs() as i64;
            (left, l.ttl, l.key.clone())
        })
    }

    /// Ties `key` to `id` (a lease writes one key), and makes `id` the key's owner.
    ///
    /// # Errors
    /// An unknown lease (or another connection's), or one tied to another key.
    pub fn bind(&mut self, id: i64, connection: u64, key: &str) -> Result<(), LeaseError> {
        let now = Instant::now();
        let lease = self
            .usable(id, connection, now)
            .ok_or(LeaseError::NotFound)?;
        match &lease.key {
            Some(bound) if bound != key => {
                return Err(LeaseError::OtherKey {
                    lease: id,
                    bound: bound.clone(),
                    asked: key.to_owned(),
                })
            }
            Some(_) => {}
            None => lease.key = Some(key.to_owned()),
        }
        self.owner.insert(key.to_owned(), id);
        Ok(())
    }

    /// Ends `id`: the key to delete in etcd, if it still owned one.
    ///
    /// # Errors
    /// An unknown lease, or another connection's.
    pub fn revoke(&mut self, id: i64, connection: u64) -> Result<Option<String>, LeaseError> {
        match self.by_id.get(&id) {
            Some(l) if l.connection == connection => {}
            _ => return Err(LeaseError::NotFound),
        }
        let lease = self.by_id.remove(&id).ok_or(LeaseError::NotFound)?;
        Ok(self.release(id, lease))
    }

    /// The live lease that owns `key`, if any.
    pub fn owner(&self, key: &str) -> Option<i64> {
        self.owner.get(key).copied()
    }

    /// Ends every lease past its deadline: the keys they still owned.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<i64> = self
            .by_id
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut keys = Vec::new();
        for id in expired {
            if let Some(lease) = self.by_id.remove(&id) {
                keys.extend(self.release(id, lease));
            }
        }
        keys
    }

    /// Ends every lease granted on `connection` at its next expiry pass.
    pub fn connection_closed(&mut self, connection: u64, now: Instant) -> usize {
        let Some(ids) = self.by_connection.remove(&connection) else {
            return 0;
        };
        for id in &ids {
            if let Some(lease) = self.by_id.get_mut(id) {
                lease.expires = now;
            }
        }
        ids.len()
    }

    /// Forgets every lease (the gateway's own etcd lease was lost, and with it every
    /// key): each agent's next keepalive is answered with TTL 0 and it registers again.
    pub fn clear(&mut self) -> usize {
        let n = self.by_id.len();
        self.by_id.clear();
        self.owner.clear();
        self.by_connection.clear();
        n
    }

    fn release(&mut self, id: i64, lease: AgentLease) -> Option<String> {
        if let Some(ids) = self.by_connection.get_mut(&lease.connection) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_connection.remove(&lease.connection);
            }
        }
        let key = lease.key?;
        if self.owner.get(&key) == Some(&id) {
            self.owner.remove(&key);
            return Some(key);
        }
        None
    }

    /// Status keys owned (the agents this gateway speaks for).
    pub fn agents(&self) -> usize {
        self.owner.len()
    }

    pub fn leases(&self) -> usize {
        self.by_id.len()
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lives_by_its_keepalives_and_takes_its_key_with_it() {
        let mut leases = Leases::new(7);
        let t0 = Instant::now();
        let (id, ttl) = leases.grant(60, 1, t0);
        assert_eq!(ttl, 60);
        leases.bind(id, 1, "agents/a").unwrap();
        assert_eq!(leases.keep_alive(id, 1, t0 + Duration::from_secs(50)), 60);
        assert!(leases.expire(t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(
            leases.expire(t0 + Duration::from_secs(111)),
            vec!["agents/a"]
        );
        assert_eq!(leases.keep_alive(id, 1, t0 + Duration::from_secs(112)), 0);
        assert_eq!(leases.agents(), 0);
    }

    #[test]
    fn a_lease_speaks_for_one_key_only() {
        let mut leases = Leases::new(7);
        let (id, _) = leases.grant(60, 1, Instant::now());
        leases.bind(id, 1, "agents/a").unwrap();
        leases.bind(id, 1, "agents/a").unwrap();
        assert!(matches!(
            leases.bind(id, 1, "agents/b"),
            Err(LeaseError::OtherKey { .. })
        ));
        assert_eq!(
            leases.bind(id + 1, 1, "agents/b"),
            Err(LeaseError::NotFound)
        );
        assert_eq!(
            leases.bind(id, 2, "agents/a"),
            Err(LeaseError::NotFound),
            "another connection cannot use it"
        );
    }

    #[test]
    fn an_old_lease_of_a_host_that_registered_again_leaves_its_key_alone() {
        let mut leases = Leases::new(7);
        let t0 = Instant::now();
        let (old, _) = leases.grant(10, 1, t0);
        leases.bind(old, 1, "agents/a").unwrap();
        let (new, _) = leases.grant(60, 1, t0);
        leases.bind(new, 1, "agents/a").unwrap();
        assert!(leases.expire(t0 + Duration::from_secs(11)).is_empty());
        assert_eq!(leases.agents(), 1);
        assert_eq!(leases.revoke(new, 2), Err(LeaseError::NotFound));
        assert_eq!(leases.revoke(new, 1), Ok(Some("agents/a".to_owned())));
        assert_eq!(leases.revoke(new, 1), Err(LeaseError::NotFound));
    }

    #[test]
    fn leases_end_with_the_connection_that_granted_them() {
        let mut leases = Leases::new(7);
        let t0 = Instant::now();
        let (a, _) = leases.grant(600, 1, t0);
        let (b, _) = leases.grant(600, 2, t0);
        leases.bind(a, 1, "agents/a").unwrap();
        leases.bind(b, 2, "agents/b").unwrap();
        assert_eq!(leases.connection_closed(1, t0), 1);
        assert_eq!(leases.expire(t0), vec!["agents/a"]);
        assert_eq!(leases.keep_alive(b, 2, t0), 600);
        assert_eq!(
            leases.keep_alive(b, 1, t0),
            0,
            "not from another connection"
        );
        assert_eq!(leases.connection_closed(1, t0), 0);
    }

    #[test]
    fn ttls_are_clamped_and_ids_carry_the_gateways_salt() {
        let mut leases = Leases::new(3);
        let (a, ttl) = leases.grant(1, 1, Instant::now());
        assert_eq!(ttl, MIN_TTL_SECS);
        assert_eq!(a >> 32, 3);
        let (_, ttl) = leases.grant(1 << 40, 1, Instant::now());
        assert_eq!(ttl, MAX_TTL_SECS);
        assert_eq!(leases.clear(), 2);
    }
}
