//! Stage 3: writing. The documents are signed and written with their history by
//! [`hids_control::writer`]; this stage draws the progress and notes when and at which
//! revision each host's document was written (acknowledgements are measured from
//! there).

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use hids_control::writer::{self, Writer};

use super::documents::Documents;
use super::request::Request;
use crate::progress::bar;

/// When and at which revision each host's document of `generation` was written.
pub struct Written {
    pub generation: u64,
    /// The change's time: its history records' ids start with it
    /// ([`Written::history_prefix`]).
    pub issued_at: SystemTime,
    pub revision: HashMap<String, i64>,
    pub at: HashMap<String, Instant>,
}

impl Written {
    /// The start of the ids of this change's history records (one per batch, each
    /// naming its hosts): what finds the hosts a change was written to.
    pub fn history_prefix(&self) -> String {
        // The id [`hids_control::writer`] gives each batch's record:
        // `<nanos:020>-g<generation>-<batch:05>`.
        let nanos = self
            .issued_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{nanos:020}-g{}-", self.generation)
    }

    /// The first revision any of the documents was written at.
    pub fn first_revision(&self) -> i64 {
        self.revision.values().copied().min().unwrap_or(0)
    }
}

/// What the history says the change is, and for whom.
pub struct Described<'a> {
    /// `push`, `stop`, `rollout <id> wave 2/4`, ...
    pub action: &'a str,
    /// The target as the operator gave it.
    pub target: &'a str,
}

/// Signs and writes every host's document.
///
/// # Errors
/// When a transaction fails (batches written before it stay written).
pub async fn write(
    writer: &mut Writer<'_>,
    request: &Request,
    described: &Described<'_>,
    hosts: &[String],
    documents: &Documents<'_>,
) -> anyhow::Result<Written> {
    let change = writer::Change {
        generation: documents.generation,
        at: documents.at,
        by: &request.operator,
        action: described.action,
        target: described.target,
        body_sha256: documents.body_sha256(),
    };
    let progress = (!request.json).then(|| bar(hosts.len() as u64, "signing and writing"));
    let mut written = Written {
        generation: documents.generation,
        issued_at: documents.at,
        revision: HashMap::new(),
        at: HashMap::new(),
    };
    let document = |host: &String| documents.for_host(host);
    let committed = |batch: &[String], revision: i64| {
        let now = Instant::now();
        for host in batch {
            written.revision.insert(host.clone(), revision);
            written.at.insert(host.clone(), now);
        }
        if let Some(p) = &progress {
            p.inc(batch.len() as u64);
        }
    };
    writer.write(hosts, &change, document, committed).await?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    Ok(written)
}
