//! Agent connections, each with an id the gateway's leases belong to: when the
//! connection closes (the agent exited or was killed, or HTTP/2 keepalive found the
//! peer gone), its leases end at once and their status keys leave etcd.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::Gateway;

/// What the gRPC services learn about the connection a request came on (a request
/// extension).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub id: u64,
    pub remote: Option<SocketAddr>,
}

/// An accepted agent connection; dropping it (hyper does when the connection ends)
/// ends the leases granted on it.
pub struct Tracked {
    io: TcpStream,
    info: ConnInfo,
    gw: Arc<Gateway>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.gw.connection_closed(self.info.id);
    }
}

impl Connected for Tracked {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener`, each tracked.
pub fn incoming(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
) -> impl Stream<Item = io::Result<Tracked>> {
    let next_id = AtomicU64::new(1);
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |accepted| {
        let io = accepted?;
        // Small gRPC messages (keepalives, acknowledgements) go out at once.
        let _ = io.set_nodelay(true);
        let info = ConnInfo {
            id: next_id.fetch_add(1, Ordering::Relaxed),
            remote: io.peer_addr().ok(),
        };
        gw.counters.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Tracked {
            io,
            info,
            gw: gw.clone(),
        })
    })
}
