//! A TCP proxy the tests can cut and restore, to simulate a dependency going down and
//! coming back while the application keeps running, and (MySQL) cut one connection just
//! as it sends a transaction's `COMMIT`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tokio_util::sync::CancellationToken;

/// Where [`TcpProxy::cut_next_commit`] cuts the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCut {
    /// The `COMMIT` never reaches the database: the transaction rolls back.
    Before,
    /// The `COMMIT` reaches the database, which applies it, but its answer never reaches
    /// the client: the client cannot tell whether it committed.
    After,
}

/// An armed cut: the next `COMMIT` of a transaction that sent `marker` (a value bound in
/// one of its statements, e.g. a queue name) is cut as `mode` says.
#[derive(Debug)]
struct Arm {
    marker: Vec<u8>,
    mode: CommitCut,
}

/// A MySQL `COM_QUERY` of `COMMIT` as sqlx sends it (the packet's command byte, then the
/// text): what ends a transaction on the wire. Prepared statements carry their bound
/// values in each execution, which is what the marker is looked for in.
const COMMIT: &[u8] = b"\x03COMMIT";
const ROLLBACK: &[u8] = b"\x03ROLLBACK";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Forwards `127.0.0.1:<port>` to an upstream address until stopped.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    upstream: SocketAddr,
    running: Arc<Mutex<Option<CancellationToken>>>,
    arm: Arc<std::sync::Mutex<Option<Arm>>>,
    cuts: Arc<AtomicUsize>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = TcpProxy {
            port,
            upstream,
            running: Arc::new(Mutex::new(None)),
            arm: Arc::new(std::sync::Mutex::new(None)),
            cuts: Arc::new(AtomicUsize::new(0)),
        };
        proxy.serve(listener).await;
        proxy
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every open connection and refuses new ones: the dependency is "down".
    pub async fn stop(&self) {
        if let Some(token) = self.running.lock().await.take() {
            token.cancel();
        }
    }

    /// Arms a cut (MySQL protocol): the next `COMMIT` on a connection whose transaction
    /// sent `marker` cuts that connection, before or after forwarding the `COMMIT`
    /// ([`CommitCut`]). Other connections and transactions pass untouched. One cut per arming.
    pub fn cut_next_commit(&self, marker: &str, mode: CommitCut) {
        *self.arm.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arm { marker: marker.as_bytes().to_vec(), mode });
    }

    /// How many connections an armed cut has cut so far.
    pub fn commits_cut(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// Accepts connections again on the same port: the dependency is "back".
    pub async fn resume(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy rebinds its port");
        self.serve(listener).await;
    }

    async fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.running.lock().await = Some(token.clone());
        let upstream = self.upstream;
        let (arm, cuts) = (self.arm.clone(), self.cuts.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let token = token.clone();
                let (arm, cuts) = (arm.clone(), cuts.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = forward(client, server, arm, cuts) => {}
                    }
                });
            }
        });
    }
}

/// Copies both ways until either side closes, watching the client's bytes for an armed
/// cut. Dropping the two streams closes both connections.
async fn forward(
    client: TcpStream,
    server: TcpStream,
    arm: Arc<std::sync::Mutex<Option<Arm>>>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set before a cut `COMMIT` is forwarded, so its answer is never passed on.
    let severed = Arc::new(AtomicBool::new(false));
    let answers = {
        let severed = severed.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let Ok(n) = server_read.read(&mut buffer).await else { return };
                if n == 0 || severed.load(Ordering::SeqCst) || client_write.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let requests = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut marked = false;
        loop {
            let Ok(n) = client_read.read(&mut buffer).await else { return };
            if n == 0 {
                return;
            }
            let chunk = &buffer[..n];
            let commit = contains(chunk, COMMIT);
            let armed = {
                let mut arm = arm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                marked |= arm.as_ref().is_some_and(|a| contains(chunk, &a.marker));
                if marked && commit { arm.take().map(|a| a.mode) } else { None }
            };
            if commit || contains(chunk, ROLLBACK) {
                marked = false;
            }
            match armed {
                Some(CommitCut::Before) => {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Some(CommitCut::After) => {
                    severed.store(true, Ordering::SeqCst);
                    cuts.fetch_add(1, Ordering::SeqCst);
                    let _ = server_write.write_all(chunk).await;
                    // The connection closes once the database answers (the answer is not
                    // passed on), or after this if it does not.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return;
                }
                None => {}
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = answers => {}
        () = requests => {}
    }
}
