//! Downloading one build: streamed from `http://` or `https://` into a partial file
//! while it is hashed, resumed with `Range` after an interruption, bounded in bytes and
//! time, and fsynced; the caller gets `Ok` only when the file holds exactly the bytes
//! whose SHA-256 the signed document pins.
//!
//! Deliberately absent: nothing here executes, unpacks, renames or installs anything,
//! and nothing trusts the bytes before the hash matched (Elkeid extracted archives
//! before checking theirs). Retries, spreading hosts over time and where the partial
//! file lives are the caller's business; so is keeping two downloads of the same file
//! from running at once. Memory stays bounded: the body is never buffered, only
//! `reqwest`'s chunks pass through.
//!
//! Proxies: `reqwest` honours `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the agent's
//! environment, which is what a host behind a corporate proxy needs.

use std::io;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Timeouts and limits of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Giving up on reaching the server (DNS, TCP, TLS).
    pub connect_timeout: Duration,
    /// Giving up when no byte arrived for this long (an idle connection, not a slow one).
    pub read_timeout: Duration,
    /// Giving up on one request altogether, body included: 30 min is a 100 MB build
    /// at 450 kbit/s.
    pub total_timeout: Duration,
    /// Redirects followed before giving up (a redirect loop ends here).
    pub max_redirects: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(30 * 60),
            max_redirects: 5,
        }
    }
}

/// One HTTP client for every download (it keeps connections and TLS sessions).
#[derive(Debug, Clone)]
pub struct Downloader {
    client: reqwest::Client,
    settings: ClientSettings,
}

/// A verified download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The file's size.
    pub bytes: u64,
    /// Bytes an earlier attempt had left in the partial file and this one kept (0: from
    /// the start).
    pub resumed_from: u64,
}

/// Why a download failed; its text says what happened, with the url and the figures,
/// and what to do, for an operator reading the status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DownloadError {
    pub kind: FailureKind,
    message: String,
}

/// The class of a failure: decides whether the partial file is kept for a resume, and
/// labels counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connecting, a timeout, a reset or a body cut short: retry later; the partial
    /// file is kept and the next attempt resumes it.
    Network,
    /// The server answered with this status (5xx, 408, 429: retry later).
    HttpStatus(u16),
    /// More redirects than [`ClientSettings::max_redirects`] (a loop?).
    TooManyRedirects,
    /// The announced or the streamed size is over the limit.
    TooLarge,
    /// The server returned an HTML page (a login or error page?).
    NotABinary,
    /// The bytes are not the build the signed document names.
    HashMismatch,
    /// No space (or quota) left for the partial file, or less free space than the
    /// server announced.
    DiskFull,
    /// The url is not `http://` or `https://` (or redirects to one that is not), or the
    /// hash is not 64 hex digits: the document is wrong.
    InvalidRelease,
    /// Reading or writing the partial file failed otherwise.
    Io,
}

impl FailureKind {
    /// Whether the partial file is worth keeping for the next attempt: only when the
    /// failure is the network's or the server's and says nothing against the bytes
    /// received. 408 and 429 are the server asking to come back later (object stores
    /// throttle with them), so they count as 5xx. Every other failure deletes it.
    pub fn keep_partial(&self) -> bool {
        match self {
            FailureKind::Network => true,
            FailureKind::HttpStatus(code) => *code >= 500 || *code == 408 || *code == 429,
            _ => false,
        }
    }

    /// A stable name for counters and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureKind::Network => "network",
            FailureKind::HttpStatus(_) => "http_status",
            FailureKind::TooManyRedirects => "too_many_redirects",
            FailureKind::TooLarge => "too_large",
            FailureKind::NotABinary => "not_a_binary",
            FailureKind::HashMismatch => "hash_mismatch",
            FailureKind::DiskFull => "disk_full",
            FailureKind::InvalidRelease => "invalid_release",
            FailureKind::Io => "io",
        }
    }
}

impl DownloadError {
    fn new(kind: FailureKind, message: String) -> Self {
        DownloadError { kind, message }
    }
}

/// Bytes of the body's start kept to recognise an HTML page (with leading blanks).
const SNIFF_BYTES: usize = 64;

/// Reads of the partial file when re-hashing it.
const READ_BUFFER_BYTES: usize = 64 * 1024;

impl Downloader {
    /// # Errors
    /// When the HTTP client cannot be built (the TLS library failed to initialise).
    pub fn new(settings: ClientSettings) -> Result<Downloader, DownloadError> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .timeout(settings.total_timeout)
            .redirect(reqwest::redirect::Policy::limited(settings.max_redirects))
            .user_agent(concat!("hids-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                DownloadError::new(
                    FailureKind::Io,
                    format!("cannot set up the HTTP client for downloads: {}", chain(&e)),
                )
            })?;
        Ok(Downloader { client, settings })
    }

    /// Downloads `url` into `partial` (created 0600 if missing), hashing while it
    /// streams; `Ok` only when the file holds exactly the bytes whose SHA-256 is
    /// `sha256_hex`, at most `max_bytes` of them, and has been fsynced.
    ///
    /// A `partial` left by an earlier interrupted attempt is re-hashed, then resumed
    /// with `Range: bytes=N-` (or accepted without a request when it is already the
    /// build). A server that answers 200 to the `Range` request starts the file over
    /// from that body; a 206 starting elsewhere or a 416 (the partial is longer than
    /// the build, so it is not a prefix of it) truncates it and asks again without
    /// `Range`, once.
    ///
    /// # Errors
    /// See [`FailureKind`]; unless [`FailureKind::keep_partial`], `partial` has been
    /// deleted when this returns.
    pub async fn fetch(
        &self,
        url: &str,
        sha256_hex: &str,
        max_bytes: u64,
        partial: &Path,
    ) -> Result<Fetched, DownloadError> {
        let result = self.fetch_into(url, sha256_hex, max_bytes, partial).await;
        match result {
            Err(mut e) if e.kind.keep_partial() => {
                let kept = tokio::fs::metadata(partial).await.map_or(0, |m| m.len());
                if kept > 0 {
                    e.message.push_str(&format!(
                        " The {kept} bytes received so far are kept in {}; the next \
                         attempt resumes from there.",
                        partial.display()
                    ));
                }
                Err(e)
            }
            Err(e) => {
                discard(partial).await;
                Err(e)
            }
            Ok(fetched) => Ok(fetched),
        }
    }

    async fn fetch_into(
        &self,
        url: &str,
        sha256_hex: &str,
        max_bytes: u64,
        partial: &Path,
    ) -> Result<Fetched, DownloadError> {
        let url = checked_url(url)?;
        let expected = checked_hash(sha256_hex)?;
        let mut file = Partial::open(partial, max_bytes).await?;
        if file.len > 0 && file.digest() == expected {
            // An earlier attempt finished but its caller never moved the file on.
            let resumed_from = file.len;
            return file.finish(resumed_from).await;
        }
        let (response, resumed_from) = self.request(&url, &mut file).await?;
        self.check_headers(&url, &response, &file, max_bytes)?;
        self.stream(&url, response, &mut file, max_bytes).await?;
        let got = file.digest();
        if got != expected {
            return Err(DownloadError::new(
                FailureKind::HashMismatch,
                format!(
                    "{url} served {} bytes whose sha256 is {got}, but the signed desired \
                     state expects {expected}; the file was deleted and nothing was \
                     installed. Publish the build that was signed at that url, or sign \
                     the hash of the file it serves.",
                    file.len
                ),
            ));
        }
        file.finish(resumed_from).await
    }

    /// Sends the request (resuming when `file` holds bytes) and settles what the
    /// answer means for `file`: the response whose body continues it, and the offset it
    /// continues from.
    async fn request(
        &self,
        url: &Url,
        file: &mut Partial<'_>,
    ) -> Result<(reqwest::Response, u64), DownloadError> {
        let from = file.len;
        let response = self.get(url, from, file).await?;
        let status = response.status();
        if from == 0 {
            return expect_status(url, response, StatusCode::OK).map(|r| (r, 0));
        }
        let starts_at = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range_start);
        match status {
            StatusCode::PARTIAL_CONTENT if starts_at == Some(from) => Ok((response, from)),
            StatusCode::OK => {
                tracing::info!(%url, from, "the server ignored Range: downloading again");
                file.restart().await?;
                Ok((response, 0))
            }
            StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                tracing::info!(
                    %url,
                    from,
                    %status,
                    "the answer does not continue the partial file: downloading again"
                );
                drop(response);
                file.restart().await?;
                let response = self.get(url, 0, file).await?;
                expect_status(url, response, StatusCode::OK).map(|r| (r, 0))
            }
            _ => Err(status_error(url, &response)),
        }
    }

    async fn get(
        &self,
        url: &Url,
        from: u64,
        file: &Partial<'_>,
    ) -> Result<reqwest::Response, DownloadError> {
        let mut request = self.client.get(url.clone());
        if from > 0 {
            request = request.header(RANGE, format!("bytes={from}-"));
        }
        request
            .send()
            .await
            .map_err(|e| self.transfer_error(url, &e, file))
    }

    /// Refuses what the headers already tell: an HTML page, a size over the limit or
    /// over the free space; before any byte of the body is written.
    fn check_headers(
        &self,
        url: &Url,
        response: &reqwest::Response,
        file: &Partial<'_>,
        max_bytes: u64,
    ) -> Result<(), DownloadError> {
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/html")
        {
            return Err(not_a_binary(url, &format!("Content-Type {content_type}")));
        }
        let Some(remaining) = response.content_length() else {
            return Ok(()); // no length announced: the streamed count is checked instead
        };
        let total = file.len.saturating_add(remaining);
        if total > max_bytes {
            return Err(DownloadError::new(
                FailureKind::TooLarge,
                format!(
                    "{url} announces {total} bytes, over the limit of {max_bytes} bytes; \
                     nothing was written. Fix the url, or raise max_bytes in the desired \
                     state if the build really is that big."
                ),
            ));
        }
        let free = file.free_bytes()?;
        if remaining > free {
            return Err(DownloadError::new(
                FailureKind::DiskFull,
                format!(
                    "{url} announces {remaining} more bytes but only {free} are free on \
                     the file system of {}; nothing was written. Free some space there.",
                    file.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Appends the body to `file`, chunk by chunk.
    async fn stream(
        &self,
        url: &Url,
        mut response: reqwest::Response,
        file: &mut Partial<'_>,
        max_bytes: u64,
    ) -> Result<(), DownloadError> {
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // What arrived before the failure is the next attempt's start.
                    file.settle().await;
                    return Err(self.transfer_error(url, &e, file));
                }
            };
            let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
            if file.len.saturating_add(len) > max_bytes {
                return Err(DownloadError::new(
                    FailureKind::TooLarge,
                    format!(
                        "{url} sent more than the limit of {max_bytes} bytes without \
                         announcing its size; stopped and deleted. Fix the url, or raise \
                         max_bytes in the desired state if the build really is that big."
                    ),
                ));
            }
            file.append(&chunk).await?;
            if file.looks_like_html() {
                return Err(not_a_binary(url, "a body starting like an HTML page"));
            }
        }
    }

    fn transfer_error(&self, url: &Url, e: &reqwest::Error, file: &Partial<'_>) -> DownloadError {
        let s = &self.settings;
        if e.is_redirect() {
            return DownloadError::new(
                FailureKind::TooManyRedirects,
                format!(
                    "{url} redirected more than {} times (a redirect loop?): {}. Point the \
                     url at the file itself, or fix the server's redirects.",
                    s.max_redirects,
                    chain(e)
                ),
            );
        }
        if e.is_builder() {
            return DownloadError::new(
                FailureKind::InvalidRelease,
                format!(
                    "{url} cannot be downloaded: {}. Point the url at an http:// or \
                     https:// file.",
                    chain(e)
                ),
            );
        }
        let what = if e.is_timeout() {
            format!(
                "timed out (limits: connect {:?}, idle {:?}, whole download {:?})",
                s.connect_timeout, s.read_timeout, s.total_timeout
            )
        } else {
            "failed".to_owned()
        };
        DownloadError::new(
            FailureKind::Network,
            format!(
                "downloading {url} {what} after {} bytes: {}. The agent retries later.",
                file.len,
                chain(e)
            ),
        )
    }
}

/// The partial file, with the hash and the start of what it holds.
struct Partial<'a> {
    path: &'a Path,
    file: tokio::fs::File,
    /// Bytes in the file, and where the next chunk goes.
    len: u64,
    hasher: Sha256,
    head: Vec<u8>,
}

impl<'a> Partial<'a> {
    /// Opens (or creates, 0600) the file and hashes what it already holds; a file over
    /// `max_bytes` cannot be the start of the build and is emptied.
    async fn open(path: &'a Path, max_bytes: u64) -> Result<Partial<'a>, DownloadError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // what an earlier attempt received is resumed
            .mode(0o600)
            // A link planted where the partial file goes must not redirect the write.
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
            .open(path)
            .await
            .map_err(|e| io_error("cannot open", path, &e))?;
        let mut partial = Partial {
            path,
            file,
            len: 0,
            hasher: Sha256::new(),
            head: Vec::with_capacity(SNIFF_BYTES),
        };
        let size = partial
            .file
            .metadata()
            .await
            .map_err(|e| io_error("cannot read the size of", path, &e))?
            .len();
        if size > max_bytes {
            partial.restart().await?;
            return Ok(partial);
        }
        let mut buffer = vec![0; READ_BUFFER_BYTES];
        loop {
            let n = partial
                .file
                .read(&mut buffer)
                .await
                .map_err(|e| io_error("cannot read", path, &e))?;
            if n == 0 {
                return Ok(partial);
            }
            partial.account(&buffer[..n]);
        }
    }

    fn account(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        let room = SNIFF_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.len = self
            .len
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| io_error("cannot write", self.path, &e))?;
        self.account(bytes);
        Ok(())
    }

    /// Empties the file to download it from the start.
    async fn restart(&mut self) -> Result<(), DownloadError> {
        self.file
            .set_len(0)
            .await
            .map_err(|e| io_error("cannot truncate", self.path, &e))?;
        self.file
            .rewind()
            .await
            .map_err(|e| io_error("cannot rewind", self.path, &e))?;
        self.len = 0;
        self.hasher = Sha256::new();
        self.head.clear();
        Ok(())
    }

    /// SHA-256 of the bytes so far, lowercase hex.
    fn digest(&self) -> String {
        hids_control::hex::encode(&self.hasher.clone().finalize())
    }

    fn looks_like_html(&self) -> bool {
        let text = self.head.trim_ascii_start();
        [&b"<!doctype"[..], b"<html"].iter().any(|tag| {
            text.get(..tag.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(tag))
        })
    }

    /// Free bytes for an unprivileged writer on the file's file system.
    fn free_bytes(&self) -> Result<u64, DownloadError> {
        let stat = rustix::fs::fstatvfs(&self.file)
            .map_err(|e| io_error("cannot read the free space for", self.path, &e.into()))?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Lets buffered writes land, so the next attempt sees every byte received; their
    /// errors do not matter here (the next attempt re-hashes whatever is there).
    async fn settle(&mut self) {
        let _ = self.file.flush().await;
    }

    /// `Ok` once every byte written has reached the disk. `tokio`'s file writes in the
    /// background and keeps a write's error for the next call (and `sync_all` swallows
    /// it), hence the flush first, and the size read back.
    async fn finish(mut self, resumed_from: u64) -> Result<Fetched, DownloadError> {
        self.file
            .flush()
            .await
            .map_err(|e| io_error("cannot write", self.path, &e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_error("cannot fsync", self.path, &e))?;
        let size = self
            .file
            .metadata()
            .await
            .map_err(|e| io_error("cannot read the size of", self.path, &e))?
            .len();
        if size != self.len {
            return Err(DownloadError::new(
                FailureKind::Io,
                format!(
                    "{} holds {size} bytes after writing {}; downloading again.",
                    self.path.display(),
                    self.len
                ),
            ));
        }
        Ok(Fetched {
            bytes: self.len,
            resumed_from,
        })
    }
}

fn checked_url(url: &str) -> Result<Url, DownloadError> {
    let invalid = |why: String| {
        DownloadError::new(
            FailureKind::InvalidRelease,
            format!("the desired state names the url {url:?}, which {why}; fix the document."),
        )
    };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("is not a url ({e})")))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        scheme => Err(invalid(format!("is {scheme}:, not http: or https:"))),
    }
}

/// The expected hash in the form [`Partial::digest`] gives.
fn checked_hash(sha256_hex: &str) -> Result<String, DownloadError> {
    let hash = sha256_hex.trim().to_ascii_lowercase();
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(hash);
    }
    Err(DownloadError::new(
        FailureKind::InvalidRelease,
        format!(
            "the desired state names the sha256 {sha256_hex:?}, which is not 64 hex digits; \
             fix the document."
        ),
    ))
}

fn expect_status(
    url: &Url,
    response: reqwest::Response,
    expected: StatusCode,
) -> Result<reqwest::Response, DownloadError> {
    if response.status() == expected {
        Ok(response)
    } else {
        Err(status_error(url, &response))
    }
}

fn status_error(url: &Url, response: &reqwest::Response) -> DownloadError {
    let status = response.status();
    let kind = FailureKind::HttpStatus(status.as_u16());
    let advice = if kind.keep_partial() {
        "the server failed or is busy; the agent retries later".to_owned()
    } else if status.is_client_error() {
        "check the url in the desired state and that the server lets the agent read it \
         without logging in"
            .to_owned()
    } else if status.is_redirection() {
        // What `reqwest` does not follow: no Location, or one that is not http(s).
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        format!(
            "a redirect to {location:?} is not followed (only http:// and https:// are); \
             point the url at the file itself"
        )
    } else {
        "expected 200 (or 206 to a resume); check the server".to_owned()
    };
    DownloadError::new(kind, format!("{url} answered HTTP {status}: {advice}."))
}

fn not_a_binary(url: &Url, evidence: &str) -> DownloadError {
    DownloadError::new(
        FailureKind::NotABinary,
        format!(
            "the server returned an HTML page (a login or error page?) for {url} instead \
             of the build ({evidence}); nothing was kept. Check the url, and that the \
             server serves the file without logging in."
        ),
    )
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> DownloadError {
    // The kind, not the errno: `tokio`'s file keeps only the kind of a background
    // write's error.
    if matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) {
        return DownloadError::new(
            FailureKind::DiskFull,
            format!(
                "{what} {}: {e}; the download was stopped and deleted. Free some space \
                 (or raise the quota) there.",
                path.display()
            ),
        );
    }
    DownloadError::new(FailureKind::Io, format!("{what} {}: {e}.", path.display()))
}

/// `reqwest` puts the useful part (connection refused, operation timed out) in the
/// sources of its error.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut last = text.clone();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper wraps some causes twice in the same words.
        if cause_text != last {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
        last = cause_text;
    }
    text
}

/// START of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let (range, _total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    start.trim().parse().ok()
}

async fn discard(partial: &Path) {
    match tokio::fs::remove_file(partial).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %partial.display(), error = %e, "cannot delete a failed download")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// How the test server answers a path.
    #[derive(Clone)]
    enum Behaviour {
        /// 200 with the whole body; `Range` ignored.
        Plain(Vec<u8>),
        /// Honours `Range`: 206, or 416 past the end.
        Ranges(Vec<u8>),
        /// The first request announces the whole body, gets `cut` bytes and a close;
        /// later ones are answered as by `Ranges`.
        TruncatedOnce {
            body: Vec<u8>,
            cut: usize,
        },
        /// A 206 starting at 0 whatever range was asked; 200 without `Range`.
        WrongRange(Vec<u8>),
        /// 200, `Content-Type: text/html`.
        HtmlPage,
        /// 200, `application/octet-stream`, but the body is an HTML page.
        HtmlBody,
        /// 302 to itself.
        RedirectLoop,
        /// 302 to this url.
        RedirectTo(&'static str),
        /// Announces 10 GiB, sends a few bytes and waits.
        Huge,
        /// A chunked body that never ends.
        Endless,
        /// The body chunked, with no length announced.
        Chunked(Vec<u8>),
        NotFound,
        /// 500 the first time, then as `Plain`.
        FailsOnce(Vec<u8>),
        /// Headers and 10 bytes of 1000, then nothing.
        Stall,
    }

    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        range: Option<String>,
    }

    /// A hand-written HTTP/1.1 server on loopback: one request per connection.
    struct Server {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        async fn start(routes: Vec<(&str, Behaviour)>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let routes: Arc<HashMap<String, Behaviour>> = Arc::new(
                routes
                    .into_iter()
                    .map(|(path, b)| (path.to_owned(), b))
                    .collect(),
            );
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (routes, log) = (routes.clone(), log.clone());
                    tokio::spawn(async move {
                        let _ = serve(stream, &routes, &log).await;
                    });
                }
            });
            Server { base, seen }
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        /// The `Range` headers of the requests for `path`, in order.
        fn ranges(&self, path: &str) -> Vec<Option<String>> {
            let seen = self.seen.lock().unwrap();
            seen.iter()
                .filter(|s| s.path == path)
                .map(|s| s.range.clone())
                .collect()
        }
    }

    async fn serve(
        mut stream: TcpStream,
        routes: &HashMap<String, Behaviour>,
        log: &Mutex<Vec<Seen>>,
    ) -> io::Result<()> {
        let head = read_head(&mut stream).await?;
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let range = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("range")
                .then(|| value.trim().to_owned())
        });
        let nth = {
            let mut log = log.lock().unwrap();
            log.push(Seen {
                path: path.clone(),
                range: range.clone(),
            });
            log.iter().filter(|s| s.path == path).count()
        };
        let from = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
        let binary = "Content-Type: application/octet-stream\r\n";
        match routes.get(&path).cloned() {
            Some(Behaviour::Plain(body)) => respond(&mut stream, "200 OK", binary, &body).await,
            Some(Behaviour::Ranges(body)) => ranged(&mut stream, &body, from).await,
            Some(Behaviour::TruncatedOnce { body, cut }) if nth == 1 => {
                let headers = format!("Content-Length: {}\r\n", body.len());
                send_head(&mut stream, "200 OK", &headers).await?;
                stream.write_all(&body[..cut]).await
            }
            Some(Behaviour::TruncatedOnce { body, .. }) => ranged(&mut stream, &body, from).await,
            Some(Behaviour::WrongRange(body)) if from.is_some() => {
                let headers = format!(
                    "Content-Range: bytes 0-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
                respond(&mut stream, "206 Partial Content", &headers, &body).await
            }
            Some(Behaviour::WrongRange(body)) => {
                respond(&mut stream, "200 OK", binary, &body).await
            }
            Some(Behaviour::HtmlPage) => {
                let page = b"<!DOCTYPE html><html><body>Please log in</body></html>";
                respond(
                    &mut stream,
                    "200 OK",
                    "Content-Type: text/html; charset=utf-8\r\n",
                    page,
                )
                .await
            }
            Some(Behaviour::HtmlBody) => {
                let page = b"\n  <HTML><head><title>Error</title></head><body>oops</body></html>\n";
                respond(&mut stream, "200 OK", binary, page).await
            }
            Some(Behaviour::RedirectLoop) => {
                let headers = format!("Location: {path}\r\n");
                respond(&mut stream, "302 Found", &headers, b"").await
            }
            Some(Behaviour::RedirectTo(location)) => {
                let headers = format!("Location: {location}\r\n");
                respond(&mut stream, "302 Found", &headers, b"").await
            }
            Some(Behaviour::Huge) => {
                send_head(&mut stream, "200 OK", "Content-Length: 10737418240\r\n").await?;
                stream.write_all(&[0x7f; 1000]).await?;
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            }
            Some(Behaviour::Endless) => loop {
                chunked(&mut stream, std::iter::repeat(&[0xab; 65536][..])).await?;
            },
            Some(Behaviour::Chunked(body)) => chunked(&mut stream, body.chunks(65536)).await,
            Some(Behaviour::FailsOnce(_)) if nth == 1 => {
                respond(&mut stream, "500 Internal Server Error", "", b"try again").await
            }
            Some(Behaviour::FailsOnce(body)) => respond(&mut stream, "200 OK", binary, &body).await,
            Some(Behaviour::Stall) => {
                send_head(&mut stream, "200 OK", "Content-Length: 1000\r\n").await?;
                stream.write_all(&[1; 10]).await?;
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }
            Some(Behaviour::NotFound) | None => {
                respond(&mut stream, "404 Not Found", "", b"not found").await
            }
        }
    }

    async fn read_head(stream: &mut TcpStream) -> io::Result<String> {
        let mut head = Vec::new();
        let mut buffer = [0; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Ok(String::from_utf8_lossy(&head).into_owned())
    }

    async fn send_head(stream: &mut TcpStream, status: &str, headers: &str) -> io::Result<()> {
        let head = format!("HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await
    }

    async fn respond(
        stream: &mut TcpStream,
        status: &str,
        headers: &str,
        body: &[u8],
    ) -> io::Result<()> {
        let headers = format!("{headers}Content-Length: {}\r\n", body.len());
        send_head(stream, status, &headers).await?;
        stream.write_all(body).await?;
        stream.shutdown().await
    }

    async fn ranged(stream: &mut TcpStream, body: &[u8], from: Option<usize>) -> io::Result<()> {
        match from {
            None => respond(stream, "200 OK", "", body).await,
            Some(from) if from >= body.len() => {
                let headers = format!("Content-Range: bytes */{}\r\n", body.len());
                respond(stream, "416 Range Not Satisfiable", &headers, b"").await
            }
            Some(from) => {
                let headers = format!(
                    "Content-Range: bytes {from}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
                respond(stream, "206 Partial Content", &headers, &body[from..]).await
            }
        }
    }

    async fn chunked<'a>(
        stream: &mut TcpStream,
        chunks: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        send_head(stream, "200 OK", "Transfer-Encoding: chunked\r\n").await?;
        for chunk in chunks {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(chunk).await?;
            stream.write_all(b"\r\n").await?;
        }
        stream.write_all(b"0\r\n\r\n").await?;
        stream.shutdown().await
    }

    /// Bytes no server would make up, so a wrong offset changes the hash.
    fn build(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn sha256(bytes: &[u8]) -> String {
        hids_control::hex::encode(&Sha256::digest(bytes))
    }

    fn settings() -> ClientSettings {
        ClientSettings {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(10),
            max_redirects: 5,
        }
    }

    const MAX: u64 = 16 << 20;

    fn setup() -> (tempfile::TempDir, PathBuf, Downloader) {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("demo.partial");
        (dir, partial, Downloader::new(settings()).unwrap())
    }

    #[tokio::test]
    async fn downloads_and_verifies_the_hash() {
        let body = build(256 * 1024);
        let server = Server::start(vec![("/demo", Behaviour::Plain(body.clone()))]).await;
        let (_dir, partial, downloader) = setup();
        let fetched = downloader
            .fetch(
                &server.url("/demo"),
                &sha256(&body).to_uppercase(),
                MAX,
                &partial,
            )
            .await
            .unwrap();
        assert_eq!(
            fetched,
            Fetched {
                bytes: body.len() as u64,
                resumed_from: 0
            }
        );
        assert_eq!(std::fs::read(&partial).unwrap(), body);
        let mode = std::fs::metadata(&partial).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(server.ranges("/demo"), vec![None]);
    }

    #[tokio::test]
    async fn wrong_hash_deletes_the_file_and_names_both_hashes() {
        let body = build(10_000);
        let server = Server::start(vec![("/demo", Behaviour::Plain(body.clone()))]).await;
        let (_dir, partial, downloader) = setup();
        let signed = sha256(b"the build that was signed");
        let e = downloader
            .fetch(&server.url("/demo"), &signed, MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::HashMismatch);
        let text = e.to_string();
        assert!(
            text.contains(&signed) && text.contains(&sha256(&body)),
            "{text}"
        );
        assert!(text.contains("10000 bytes"), "{text}");
        assert!(!partial.exists());
    }

    #[tokio::test]
    async fn a_truncated_download_resumes_with_range() {
        let body = build(256 * 1024);
        let behaviour = Behaviour::TruncatedOnce {
            body: body.clone(),
            cut: 100_000,
        };
        let server = Server::start(vec![("/demo", behaviour)]).await;
        let (_dir, partial, downloader) = setup();
        let (url, hash) = (server.url("/demo"), sha256(&body));

        let e = downloader
            .fetch(&url, &hash, MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Network, "{e}");
        assert!(
            e.to_string()
                .contains("100000 bytes received so far are kept"),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 100_000);

        let fetched = downloader.fetch(&url, &hash, MAX, &partial).await.unwrap();
        assert_eq!(
            fetched,
            Fetched {
                bytes: body.len() as u64,
                resumed_from: 100_000
            }
        );
        assert_eq!(
            server.ranges("/demo"),
            vec![None, Some("bytes=100000-".to_owned())]
        );
        assert_eq!(std::fs::read(&partial).unwrap(), body);
    }

    #[tokio::test]
    async fn a_server_ignoring_range_starts_over() {
        let body = build(50_000);
        let server = Server::start(vec![("/demo", Behaviour::Plain(body.clone()))]).await;
        let (_dir, partial, downloader) = setup();
        std::fs::write(&partial, &body[..1000]).unwrap();
        let fetched = downloader
            .fetch(&server.url("/demo"), &sha256(&body), MAX, &partial)
            .await
            .unwrap();
        assert_eq!(
            fetched,
            Fetched {
                bytes: 50_000,
                resumed_from: 0
            }
        );
        assert_eq!(server.ranges("/demo"), vec![Some("bytes=1000-".to_owned())]);
        assert_eq!(std::fs::read(&partial).unwrap(), body);
    }

    #[tokio::test]
    async fn a_range_that_does_not_continue_the_file_starts_over() {
        let body = build(50_000);
        let server = Server::start(vec![
            ("/wrong-start", Behaviour::WrongRange(body.clone())),
            ("/shorter", Behaviour::Ranges(body.clone())),
        ])
        .await;
        let (_dir, partial, downloader) = setup();
        std::fs::write(&partial, &body[..1000]).unwrap();
        let fetched = downloader
            .fetch(&server.url("/wrong-start"), &sha256(&body), MAX, &partial)
            .await
            .unwrap();
        assert_eq!(fetched.resumed_from, 0);
        assert_eq!(
            server.ranges("/wrong-start"),
            vec![Some("bytes=1000-".to_owned()), None]
        );

        // A partial longer than the build: 416, then the whole build.
        std::fs::write(
            &partial,
            build(60_000).iter().rev().copied().collect::<Vec<_>>(),
        )
        .unwrap();
        let fetched = downloader
            .fetch(&server.url("/shorter"), &sha256(&body), MAX, &partial)
            .await
            .unwrap();
        assert_eq!(
            fetched,
            Fetched {
                bytes: 50_000,
                resumed_from: 0
            }
        );
        assert_eq!(
            server.ranges("/shorter"),
            vec![Some("bytes=60000-".to_owned()), None]
        );
        assert_eq!(std::fs::read(&partial).unwrap(), body);
    }

    #[tokio::test]
    async fn a_complete_partial_is_verified_without_a_request() {
        let body = build(50_000);
        let server = Server::start(vec![("/demo", Behaviour::Ranges(body.clone()))]).await;
        let (_dir, partial, downloader) = setup();
        std::fs::write(&partial, &body).unwrap();
        let fetched = downloader
            .fetch(&server.url("/demo"), &sha256(&body), MAX, &partial)
            .await
            .unwrap();
        assert_eq!(
            fetched,
            Fetched {
                bytes: 50_000,
                resumed_from: 50_000
            }
        );
        assert!(server.ranges("/demo").is_empty());
    }

    #[tokio::test]
    async fn an_html_page_is_refused() {
        let server = Server::start(vec![
            ("/login", Behaviour::HtmlPage),
            ("/error", Behaviour::HtmlBody),
        ])
        .await;
        let (_dir, partial, downloader) = setup();
        for path in ["/login", "/error"] {
            let e = downloader
                .fetch(&server.url(path), &sha256(b"x"), MAX, &partial)
                .await
                .unwrap_err();
            assert_eq!(e.kind, FailureKind::NotABinary, "{e}");
            assert!(
                e.to_string()
                    .contains("returned an HTML page (a login or error page?)"),
                "{e}"
            );
            assert!(!partial.exists());
        }
    }

    #[tokio::test]
    async fn a_redirect_loop_is_refused() {
        let server = Server::start(vec![("/loop", Behaviour::RedirectLoop)]).await;
        let (_dir, partial, downloader) = setup();
        let e = downloader
            .fetch(&server.url("/loop"), &sha256(b"x"), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::TooManyRedirects, "{e}");
        assert!(
            e.to_string().contains("redirected more than 5 times"),
            "{e}"
        );
        assert_eq!(server.ranges("/loop").len(), 6);
        assert!(!partial.exists());
    }

    #[tokio::test]
    async fn a_redirect_out_of_http_is_refused() {
        let server =
            Server::start(vec![("/away", Behaviour::RedirectTo("file:///etc/shadow"))]).await;
        let (_dir, partial, downloader) = setup();
        let e = downloader
            .fetch(&server.url("/away"), &sha256(b"x"), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::HttpStatus(302), "{e}");
        assert!(e.to_string().contains("file:///etc/shadow"), "{e}");
        assert!(!partial.exists());
    }

    #[tokio::test]
    async fn ten_gib_are_refused_before_a_byte_is_written() {
        let server = Server::start(vec![("/huge", Behaviour::Huge)]).await;
        let (_dir, partial, downloader) = setup();
        let started = Instant::now();
        let e = downloader
            .fetch(&server.url("/huge"), &sha256(b"x"), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::TooLarge, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("announces 10737418240 bytes") && text.contains("nothing was written"),
            "{text}"
        );
        assert!(!partial.exists());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_at_max_bytes() {
        let server = Server::start(vec![("/endless", Behaviour::Endless)]).await;
        let (_dir, partial, downloader) = setup();
        let started = Instant::now();
        let e = downloader
            .fetch(&server.url("/endless"), &sha256(b"x"), 1 << 20, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::TooLarge, "{e}");
        assert!(
            e.to_string()
                .contains("more than the limit of 1048576 bytes"),
            "{e}"
        );
        assert!(!partial.exists());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn http_errors_are_told_apart() {
        let body = build(10_000);
        let server = Server::start(vec![
            ("/missing", Behaviour::NotFound),
            ("/flaky", Behaviour::FailsOnce(body.clone())),
        ])
        .await;
        let (_dir, partial, downloader) = setup();
        let e = downloader
            .fetch(&server.url("/missing"), &sha256(&body), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::HttpStatus(404));
        assert!(e.to_string().contains("answered HTTP 404 Not Found"), "{e}");
        assert!(!partial.exists());

        let url = server.url("/flaky");
        let e = downloader
            .fetch(&url, &sha256(&body), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::HttpStatus(500));
        assert!(e.kind.keep_partial() && partial.exists(), "{e}");
        let fetched = downloader
            .fetch(&url, &sha256(&body), MAX, &partial)
            .await
            .unwrap();
        assert_eq!(fetched.bytes, 10_000);
    }

    #[tokio::test]
    async fn a_stalled_server_times_out() {
        let server = Server::start(vec![("/stall", Behaviour::Stall)]).await;
        let (_dir, partial, _) = setup();
        let downloader = Downloader::new(ClientSettings {
            read_timeout: Duration::from_millis(300),
            ..settings()
        })
        .unwrap();
        let started = Instant::now();
        let e = downloader
            .fetch(&server.url("/stall"), &sha256(b"x"), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Network, "{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_network_failure() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (_dir, partial, downloader) = setup();
        let url = format!("http://127.0.0.1:{port}/demo");
        let e = downloader
            .fetch(&url, &sha256(b"x"), MAX, &partial)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Network, "{e}");
        assert!(e.to_string().contains(&url), "{e}");
    }

    #[tokio::test]
    async fn a_bad_url_or_hash_is_refused_without_a_request() {
        let (_dir, partial, downloader) = setup();
        for (url, hash) in [
            ("ftp://127.0.0.1/demo", sha256(b"x")),
            ("file:///etc/passwd", sha256(b"x")),
            ("not a url", sha256(b"x")),
            ("http://127.0.0.1/demo", "abc".to_owned()),
        ] {
            let e = downloader
                .fetch(url, &hash, MAX, &partial)
                .await
                .unwrap_err();
            assert_eq!(e.kind, FailureKind::InvalidRelease, "{e}");
            assert!(!partial.exists());
        }
    }

    /// A tmpfs, unmounted when dropped (also when the test fails).
    struct Tmpfs(PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[tokio::test]
    async fn a_full_disk_leaves_nothing_behind() {
        hids_test_support::skip_unless!(
            hids_test_support::is_root(),
            "mounting a 1 MiB tmpfs needs root"
        );
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        hids_test_support::skip_unless!(mounted, "mount -t tmpfs failed (no CAP_SYS_ADMIN?)");
        let tmpfs = Tmpfs(dir.path().to_owned());
        let body = build(4 << 20);
        let server = Server::start(vec![
            ("/announced", Behaviour::Plain(body.clone())),
            ("/chunked", Behaviour::Chunked(body.clone())),
        ])
        .await;
        let downloader = Downloader::new(settings()).unwrap();
        let partial = tmpfs.0.join("demo.partial");
        for (path, says) in [
            ("/announced", "only 1048576 are free"),
            ("/chunked", "Free some space"),
        ] {
            let e = downloader
                .fetch(&server.url(path), &sha256(&body), MAX, &partial)
                .await
                .unwrap_err();
            assert_eq!(e.kind, FailureKind::DiskFull, "{e}");
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(std::fs::read_dir(&tmpfs.0).unwrap().count(), 0);
        }
    }

    #[test]
    fn content_range_start_is_parsed() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-9/*"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn only_transient_failures_keep_the_partial_file() {
        let kept: Vec<_> = [
            FailureKind::Network,
            FailureKind::HttpStatus(503),
            FailureKind::HttpStatus(429),
            FailureKind::HttpStatus(404),
            FailureKind::TooManyRedirects,
            FailureKind::TooLarge,
            FailureKind::NotABinary,
            FailureKind::HashMismatch,
            FailureKind::DiskFull,
            FailureKind::InvalidRelease,
            FailureKind::Io,
        ]
        .iter()
        .filter(|k| k.keep_partial())
        .map(FailureKind::as_str)
        .collect();
        assert_eq!(kept, ["network", "http_status", "http_status"]);
    }
}
