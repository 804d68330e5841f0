//! What a worker connects to and registers as.

use std::{fmt, time::Duration};

/// How to reach the server and what to register as.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Base URL of the server, `http://host:port` (`/graphql` is appended; the WebSocket
    /// uses the same address with `ws://`). Several comma-separated base URLs (instances
    /// of one deployment) are a fail-over list: the worker starts on the first that
    /// answers and, whenever its connection dies or cannot be opened, moves on to the next
    /// (wrapping around); its HTTP calls go where its subscription is.
    pub url: String,
    /// The worker's JWT (role `worker`); its `sub` is the worker id.
    pub token: String,
    /// Display name sent to `registerWorker` (1–128 characters).
    pub name: String,
    /// Queues served (1–64).
    pub queues: Vec<String>,
    /// Tasks handled at once (1–1000); registered with the server and enforced locally.
    pub capacity: u32,
    /// Period of the `heartbeat` mutation; keep it well under the queues' lease length
    /// (30 s by default). Values under 10 ms are raised to 10 ms.
    pub heartbeat_every: Duration,
    /// Registers with `autoAccept`: the server starts each task as it offers it (the
    /// attempt counted, under the queue's lease), so the worker sends no `acceptTask`,
    /// and a task costs one call and one write fewer. An offer the worker cannot take
    /// (refused by the filter, or no handler free within 5 s and a quarter of its lease)
    /// is then handed back with `releaseTask`, which keeps its attempt counted (`DEAD` if
    /// it was the last). `false`: every offer is accepted first, and one not taken lapses
    /// at no cost. Needs a server that knows `autoAccept` (upgrade servers first).
    pub auto_accept: bool,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("capacity", &self.capacity)
            .field("heartbeat_every", &self.heartbeat_every)
            .field("auto_accept", &self.auto_accept)
            .finish()
    }
}
