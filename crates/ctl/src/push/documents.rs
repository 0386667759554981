//! Stage 2: the documents. The targets' current documents (what commands carry over, and
//! the floor for the generation), a new generation, the settings (inline or in a blob),
//! and each host's document, composed while the writer signs.
//!
//! Commands keep the host's current settings and its still-unexpired commands, so a
//! host that was offline still gets a `stop` followed by a `restart-plugin`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use etcd_client::Client;
use hids_control::writer::{on_all_cores, Settings, Writer};
use hids_control::{Keys, Refusal, TrustedKeys, Verified};
use hids_types::desired::{Command, CommandKind, DesiredState};
use hids_types::Timestamp;

use super::request::{Change, Request};
use crate::fleet::get_all;

/// How long a command stays runnable for a host that is offline.
const COMMAND_TTL: Duration = Duration::from_secs(3600);
/// Commands carried over from a host's previous document, at most.
const MAX_CARRIED_COMMANDS: usize = 16;
/// Hosts named in the warning about documents that do not verify.
const WARN_HOSTS: usize = 10;

/// Every target's document for one change, composed on demand.
pub struct Documents<'a> {
    pub generation: u64,
    pub at: SystemTime,
    operator: &'a str,
    /// The change's settings; `None` for a command (each host keeps its own).
    settings: Option<Settings>,
    command: Option<Command>,
    /// The targets' current documents that this key signed.
    current: HashMap<String, DesiredState>,
}

impl<'a> Documents<'a> {
    /// Reads the targets' current documents, takes a generation above them, and writes
    /// the settings' blob if they need one.
    ///
    /// # Errors
    /// When etcd cannot be read or written.
    pub async fn prepare(
        client: &mut Client,
        keys: &Keys,
        writer: &mut Writer<'_>,
        request: &'a Request,
        hosts: &[String],
    ) -> anyhow::Result<Documents<'a>> {
        let current = current(client, keys, request, hosts).await?;
        let generation = writer.next_generation(current.floor).await?;
        let at = SystemTime::now();
        let settings = match &request.change {
            Change::Settings(body) => Some(Settings::new(body)?),
            Change::Command(..) => None,
        };
        if let Some(settings) = &settings {
            writer.put_blob(settings).await?;
        }
        let command = match &request.change {
            Change::Command(kind, plugin) => Some(Command {
                id: format!("g{generation}"),
                kind: *kind,
                plugin: plugin.clone(),
                expires_at: Timestamp(at + COMMAND_TTL),
            }),
            Change::Settings(_) => None,
        };
        Ok(Documents {
            generation,
            at,
            operator: &request.operator,
            settings,
            command,
            current: current.states,
        })
    }

    /// The blob holding the settings, when they do not go inline.
    pub fn body_sha256(&self) -> Option<&str> {
        self.settings.as_ref()?.body_sha256.as_deref()
    }

    /// `host`'s new document.
    pub fn for_host(&self, host: &String) -> DesiredState {
        let previous = self.current.get(host);
        let mut commands: Vec<Command> = previous
            .map(|p| {
                p.commands
                    .iter()
                    .filter(|c| c.expires_at.0 > self.at)
                    // A kind this hidsctl does not know (a newer one wrote it) cannot be
                    // written back as it was: dropped, not rewritten as `unknown`.
                    .filter(|c| c.kind != CommandKind::Unknown)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        commands.extend(self.command.clone());
        let skip = commands.len().saturating_sub(MAX_CARRIED_COMMANDS);
        commands.drain(..skip);
        let (body, body_sha256) = match &self.settings {
            Some(s) => (s.body.clone(), s.body_sha256.clone()),
            None => previous
                .map(|p| (p.body.clone(), p.body_sha256.clone()))
                .unwrap_or_default(),
        };
        DesiredState {
            generation: self.generation,
            host_id: host.clone(),
            issued_at: Timestamp(self.at),
            issued_by: self.operator.to_owned(),
            body,
            body_sha256,
            commands,
        }
    }
}

/// The targets' current documents that verify with the request's key, and the highest
/// generation among them.
struct Current {
    states: HashMap<String, DesiredState>,
    floor: u64,
}

/// Reads and checks the targets' current documents. Their highest generation is the
/// floor that matters if the counter was lost (an agent only compares with its own).
/// Other hosts' documents are not checked: a 10% canary does not pay for 100% of the
/// signatures.
async fn current(
    client: &mut Client,
    keys: &Keys,
    request: &Request,
    hosts: &[String],
) -> anyhow::Result<Current> {
    let own = TrustedKeys::from_signing_key(&request.key);
    let desired_dir = keys.desired_dir();
    let (raw, _) = get_all(client, &desired_dir).await?;
    let targets: HashSet<&str> = hosts.iter().map(String::as_str).collect();
    let verdicts = on_all_cores(&raw, |(k, v, _)| {
        let host = keys
            .host_of(&desired_dir, k)
            .filter(|h| targets.contains(h))?;
        Some((host.to_owned(), own.verify(v, host, 0)))
    });
    let mut current = Current {
        states: HashMap::new(),
        floor: 0,
    };
    let mut unverified = Vec::new();
    for (host, verdict) in verdicts.into_iter().flatten() {
        match verdict {
            Ok(Verified::New(state)) => {
                current.floor = current.floor.max(state.generation);
                current.states.insert(host, *state);
            }
            Ok(Verified::Current) => {}
            Err(e) => unverified.push((host, e)),
        }
    }
    if matches!(request.change, Change::Command(..)) {
        warn_unverified(&unverified);
    }
    Ok(current)
}

/// A document this key did not sign (tampered, or another operator's) is never
/// re-signed: commands for such hosts start from empty settings. Says so.
fn warn_unverified(unverified: &[(String, Refusal)]) {
    for (host, e) in unverified.iter().take(WARN_HOSTS) {
        eprintln!("hidsctl: warning: {host}: its current desired state does not verify ({e}); its settings are not carried over");
    }
    if unverified.len() > WARN_HOSTS {
        eprintln!(
            "hidsctl: warning: ... and {} more host(s) like that",
            unverified.len() - WARN_HOSTS
        );
    }
}
