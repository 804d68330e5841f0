//! Serving HTTP/1.1 connections with the limits a public listener needs.
//!
//! `axum::serve` has no read time limits: a client that trickles its headers, or sends
//! nothing at all, holds a connection (and a task) forever. This loop accepts
//! connections itself and gives each one:
//!
//! - a per-address cap on concurrent connections (`TASKWIRE_MAX_CONNECTIONS_PER_IP`):
//!   past it a new connection is closed at once, before any byte is read;
//! - hyper's header-read time limit (`TASKWIRE_HEADER_READ_TIMEOUT_MS`), which also
//!   bounds how long a kept-alive connection may wait for its next request;
//! - an idle time limit (`TASKWIRE_IDLE_TIMEOUT_MS`): a connection that neither reads nor
//!   writes a byte for that long is closed, whatever it is waiting for (a client that
//!   stopped reading its response, for example).
//!
//! The body-read time limit is applied where bodies are read (`graphql::post`). A
//! connection upgraded to a WebSocket leaves this loop's care at the upgrade (the
//! WebSocket has its own keep-alive and write time limits), so the idle limit never
//! closes it; it keeps its per-address slot until it closes.
//!
//! Every refusal and time-out is counted in `taskwire_http_connections_refused_total` and
//! `taskwire_http_timeouts_total`.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Connection-level limits (README, Security).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest time to receive a request's headers, from the moment the connection is
    /// ready for a request (so it also bounds the wait between kept-alive requests).
    pub header_read_timeout: Duration,
    /// Longest time to receive a request's whole body, once its headers are in.
    pub body_read_timeout: Duration,
    /// Longest time a connection may go without reading or writing a byte.
    pub idle_timeout: Duration,
    /// Concurrent connections (WebSockets included) per client address; 0 turns it off.
    pub max_connections_per_ip: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets each connection finish its in-flight request and waits for them.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let per_ip = PerIpConnections::new(limits.max_connections_per_ip);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: retry shortly rather than
                    // spin, and never stop serving because of one failed accept.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_ip.try_acquire(peer.ip()) else {
            metrics.http_connections_refused.with_label_values(&["per_ip"]).inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            slot,
            router.clone(),
            limits,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection until it closes, times out, upgrades, or finishes after shutdown.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    router: Router,
    limits: ConnectionLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedStream { stream, activity: activity.clone(), _slot: slot });
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        let idle_deadline = activity.last() + limits.idle_timeout;
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served
                    && e.is_timeout()
                {
                    metrics.http_timeouts.with_label_values(&["headers"]).inc();
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep_until(idle_deadline.into()) => {
                if activity.last().elapsed() >= limits.idle_timeout {
                    metrics.http_timeouts.with_label_values(&["idle"]).inc();
                    break;
                }
            }
        }
    }
}

/// When a connection last read or wrote a byte.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    /// Milliseconds since `origin`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { origin: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The TCP stream, noting each read and write, and holding the connection's per-address
/// slot for as long as the stream lives (through a WebSocket upgrade too).
#[derive(Debug)]
struct TrackedStream {
    stream: TcpStream,
    activity: Arc<Activity>,
    _slot: ConnectionSlot,
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Open connections per client address.
#[derive(Debug, Clone)]
struct PerIpConnections {
    /// 0: no cap.
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpConnections {
    fn new(max: usize) -> PerIpConnections {
        PerIpConnections { max, open: Arc::default() }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `max` open.
    fn try_acquire(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        // Plain counters updated by assignment: a poisoned lock still holds them intact.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot { ip, connections: self.clone() })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&ip) {
            *count = count.saturating_sub(1);
            // Forget the address with its last connection, so the map holds only
            // addresses that have connections open.
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// One connection's place in [`PerIpConnections`], given back when dropped.
#[derive(Debug)]
struct ConnectionSlot {
    ip: IpAddr,
    connections: PerIpConnections,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_address_cap_counts_each_address_and_frees_slots_on_drop() {
        let connections = PerIpConnections::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let first = connections.try_acquire(a).expect("first");
        let _second = connections.try_acquire(a).expect("second");
        assert!(connections.try_acquire(a).is_none(), "a third connection from one address is refused");
        assert!(connections.try_acquire(b).is_some(), "another address has its own count");
        drop(first);
        assert!(connections.try_acquire(a).is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn a_cap_of_zero_turns_it_off_and_idle_addresses_are_forgotten() {
        let unlimited = PerIpConnections::new(0);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let slots: Vec<_> = (0..1000).map(|_| unlimited.try_acquire(ip).expect("no cap")).collect();
        drop(slots);
        assert!(unlimited.open.lock().expect("lock").is_empty(), "no entry outlives its last connection");
    }
}
