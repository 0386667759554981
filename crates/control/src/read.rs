//! Reading a whole directory of keys, a page at a time, all pages at one revision: one
//! implementation for `hidsctl`'s listings and `hids-server`'s view of the fleet.

use etcd_client::{Client, GetOptions, KeyValue, WatchOptions, WatchStream};

/// Values per page for listings (gRPC messages are limited to 4 MiB; a status document
/// is about 1 KB).
pub const PAGE: i64 = 2000;

/// Values per page that fit whatever they hold: 250 status documents of the most they
/// may be (16 KB) are 4 MB. For a reader that must never fail on a fleet of large ones.
pub const SAFE_PAGE: i64 = 250;

/// Hands every key under `prefix` to `visit`, a page at a time, all read at the
/// revision of the first page (returned), so the pages form one consistent view. Only
/// one page is held at a time: a million status keys never sit in memory at once.
/// `keys_only`: empty values (who is there, not what they say: a tenth of the bytes).
/// `page`: values per request ([`PAGE`], or [`SAFE_PAGE`]).
///
/// # Errors
/// What etcd answered, for any page (including a revision compacted between pages).
pub async fn for_each_page(
    client: &mut Client,
    prefix: &str,
    keys_only: bool,
    page: i64,
    mut visit: impl FnMut(&[KeyValue]),
) -> Result<i64, etcd_client::Error> {
    let end = crate::keys::prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page.max(1));
        if keys_only {
            opts = opts.with_keys_only();
        }
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = client.get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        visit(resp.kvs());
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(revision),
        }
    }
}

/// Largest watch response taken from etcd. etcd puts every event of a revision in one
/// response, and joins revisions while a watcher catches up: with `hids-gateway`
/// committing 128 status documents a transaction, the watch of `agents/` during a
/// fleet-wide acknowledgement got a 4.4 MB response, over gRPC's default 4 MiB, and
/// broke (measured at 100,000 agents).
pub const WATCH_MESSAGE_BYTES: usize = 64 << 20;

/// Watches every key under `prefix` with `options`, taking responses up to
/// [`WATCH_MESSAGE_BYTES`]: the one way `hidsctl`, `hids-server` and `hids-gateway`
/// follow a directory.
///
/// # Errors
/// What etcd answered.
pub async fn watch_prefix(
    client: &Client,
    prefix: &str,
    options: WatchOptions,
) -> Result<WatchStream, etcd_client::Error> {
    let mut watch = client
        .watch_client()
        .max_decoding_message_size(WATCH_MESSAGE_BYTES);
    watch.watch(prefix, Some(options.with_prefix())).await
}
