//! Stage 3: writing. The documents are signed and written with their history by
//! [`hids_control::writer`]; this stage draws the progress and notes when and at which
//! revision each host's document was written (acknowledgements are measured from
//! there).

use std::collections::HashMap;
use std::time::Instant;

use hids_control::writer::{self, Writer};

use super::documents::Documents;
use super::request::Request;
use crate::progress::bar;

/// When and at which revision each host's document of `generation` was written.
pub struct Written {
    pub generation: u64,
    pub revision: HashMap<String, i64>,
    pub at: HashMap<String, Instant>,
}

/// Signs and writes every host's document.
///
/// # Errors
/// When a transaction fails (batches written before it stay written).
pub async fn write(
    writer: &mut Writer<'_>,
    request: &Request,
    hosts: &[String],
    documents: &Documents<'_>,
) -> anyhow::Result<Written> {
    let action = request.change.action();
    let target = request.target.describe();
    let change = writer::Change {
        generation: documents.generation,
        at: documents.at,
        by: &request.operator,
        action: &action,
        target: &target,
        body_sha256: documents.body_sha256(),
    };
    let progress = (!request.json).then(|| bar(hosts.len() as u64, "signing and writing"));
    let mut written = Written {
        generation: documents.generation,
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
