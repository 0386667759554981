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

pub use request::{Change, Request};

use crate::exit::Exit;

/// Runs `request` to its end: [`Exit::NotAllApplied`] when it waited and not every
/// target applied the change.
///
/// # Errors
/// When etcd fails, no host matches, or a document cannot be written.
pub async fn run(client: &mut Client, keys: &Keys, request: Request) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let fleet = targets::choose(client, keys, &request.target).await?;
    let mut writer = Writer::new(client.clone(), keys, &request.key);
    let documents =
        documents::Documents::prepare(client, keys, &mut writer, &request, &fleet.hosts).await?;
    let written = writing::write(&mut writer, &request, &fleet.hosts, &documents).await?;
    let mut outcome = report::Outcome::written(
        request.change.action(),
        written.generation,
        fleet.hosts.len(),
    );
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
