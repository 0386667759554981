//! A static file server on loopback, as any web server or object store serves builds:
//! `GET /<name>` answers the file of that name in its directory, whole or from a
//! `Range: bytes=N-`; every request's path and Range are recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `(path, Range header)` of each request served.
pub type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub struct StaticServer {
    pub dir: tempfile::TempDir,
    port: u16,
    /// `(path, range header)` of every request, in order.
    pub requests: RequestLog,
}

impl StaticServer {
    pub fn start() -> StaticServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: RequestLog = Arc::default();
        let root = dir.path().to_owned();
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, log) = (root.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &root, &log));
            }
        });
        StaticServer {
            dir,
            port,
            requests,
        }
    }

    /// Puts `bytes` at `/<name>` and returns its URL.
    pub fn put(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.dir.path().join(name), bytes).unwrap();
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// SHA-256 of `bytes`, hex: what a desired state pins for a build.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serve(stream: TcpStream, root: &Path, log: &Mutex<Vec<(String, Option<String>)>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    log.lock().unwrap().push((path.clone(), range.clone()));
    let name = path.trim_start_matches('/');
    let mut out = stream;
    let Ok(mut file) = std::fs::File::open(root.join(name)).map_err(|_| ()) else {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut body = Vec::new();
    file.read_to_end(&mut body).unwrap();
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < body.len());
    let head = match from {
        Some(n) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {n}-{}/{}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            body.len() - n,
            body.len() - 1,
            body.len()
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body[from.unwrap_or(0)..]);
}
