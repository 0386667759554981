//! Writing desired states: `push` (new settings) and the commands (`stop`, `resume`,
//! `restart-plugin`) all go through here, as one [`Request`] taken from the command
//! line and five stages:
//!
//! 1. [`targets`]: online agents matching the target, or the given host ids.
//! 2. [`documents`]: the targets' current documents, a new generation, the settings
//!    (inline or in a blob), each host's document.
//! 3. [`writing`]: signed and written with their history, by
//!    [`hids_control::writer`] (the one implementation every writer of desired states
//!    uses).
//! 4. [`acks`]: with `--wait`, the agents' acknowledgements are followed until every
//!    target has applied or refused the document, or the time is up.
//! 5. [`report`]: the outcome, and the exit code.
//!
//! A staged rollout (`crate::rollout`) runs stages 1 to 3 per wave ([`write`]) and
//! follows the status keys with the same machinery ([`follow`]) with its own
//! [`Follower`].

mod acks;
mod documents;
mod report;
mod request;
mod targets;
mod writing;

use std::time::Instant;

use etcd_client::Client;
use hids_control::writer::Writer;
use hids_control::Keys;

pub use acks::{follow, read_all, Follower};
pub use request::{Change, Request};
pub use targets::choose;
pub use writing::{Described, Written};

use crate::exit::Exit;

/// Runs `request` to its end: [`Exit::NotAllApplied`] when it waited and not every
/// target applied the change.
///
/// # Errors
/// When etcd fails, no host matches, or a document cannot be written.
pub async fn run(client: &mut Client, keys: &Keys, request: Request) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let fleet = targets::choose(client, keys, &request.target).await?;
    let action = request.change.action();
    let target = request.target.describe();
    let described = Described {
        action: &action,
        target: &target,
    };
    let written = write(client, keys, &request, &described, &fleet.hosts).await?;
    let mut outcome = report::Outcome::written(action, written.generation, fleet.hosts.len());
    let exit = match request.wait {
        None => Exit::Success,
        Some(limit) => {
            let show_progress = !request.json;
            let tally =
                acks::await_acks(client, keys, &fleet, &written, limit, show_progress).await?;
            outcome.waited(&fleet.hosts, &tally);
            if outcome.all_applied() {
                Exit::Success
            } else {
                Exit::NotAllApplied
            }
        }
    };
    outcome.elapsed_secs = started.elapsed().as_secs_f64();
    outcome.print(request.json)?;
    Ok(exit)
}

/// Stages 2 and 3 for `hosts`: their documents composed, signed and written with the
/// history `described` gives. A staged rollout calls this once per wave.
///
/// # Errors
/// When etcd fails or a document cannot be written.
pub async fn write(
    client: &mut Client,
    keys: &Keys,
    request: &Request,
    described: &Described<'_>,
    hosts: &[String],
) -> anyhow::Result<Written> {
    let mut writer = Writer::new(client.clone(), keys, &request.key);
    let documents =
        documents::Documents::prepare(client, keys, &mut writer, request, hosts).await?;
    writing::write(&mut writer, request, described, hosts, &documents).await
}
