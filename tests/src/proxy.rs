//! A TCP proxy the tests can cut and restore, to simulate a dependency going down and
//! coming back while the application keeps running.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tokio_util::sync::CancellationToken;

/// Forwards `127.0.0.1:<port>` to an upstream address until stopped.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    upstream: SocketAddr,
    running: Arc<Mutex<Option<CancellationToken>>>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = TcpProxy { port, upstream, running: Arc::new(Mutex::new(None)) };
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

    /// Accepts connections again on the same port: the dependency is "back".
    pub async fn resume(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy rebinds its port");
        self.serve(listener).await;
    }

    async fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.running.lock().await = Some(token.clone());
        let upstream = self.upstream;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else { continue };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
    }
}
