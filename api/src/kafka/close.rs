//! Closing consumers without letting librdkafka hang the caller.
//!
//! Dropping a consumer in a group closes it, and librdkafka serves the group's last
//! rebalance inside that close. An assignment arriving just then (a join that completes
//! as the consumer closes) blocks `rd_kafka_assign` forever (confluentinc/librdkafka#4884,
//! still open). Two defences, both used by the dispatcher:
//! - [`leave_group`] unsubscribes and serves the revocation while the consumer is still
//!   polled, so nothing is left to rebalance when it closes (the workaround the librdkafka
//!   maintainers give);
//! - [`ClosesAside`] runs the final drop on a thread of its own, so should the close still
//!   hang, it hangs that thread only and never the runtime that must shut down.

use std::{
    ops::Deref,
    time::{Duration, Instant},
};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};

/// Owns a value whose drop may block forever (a Kafka consumer), and drops it on a
/// thread of its own.
#[derive(Debug)]
pub(crate) struct ClosesAside<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> ClosesAside<T> {
    pub(crate) fn new(inner: T) -> Self {
        ClosesAside(Some(inner))
    }
}

impl<T: Send + 'static> Deref for ClosesAside<T> {
    type Target = T;

    #[allow(clippy::expect_used)] // `None` only inside `drop`, where nothing derefs it.
    fn deref(&self) -> &T {
        self.0.as_ref().expect("taken only by drop")
    }
}

impl<T: Send + 'static> Drop for ClosesAside<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            // Not joined: a close that hangs costs one parked thread, not a shutdown. If no
            // thread can be started, the closure (and the value) drops here instead.
            let spawned = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(inner));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread to close a Kafka consumer; closed inline");
            }
        }
    }
}

/// Leaves the consumer's group: unsubscribes, then polls until the group has taken every
/// partition back or `limit` has passed. Messages read meanwhile are dropped: they were not
/// placed, so their offsets are not committed and the partition's next owner reads them.
pub(crate) async fn leave_group<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, limit: Duration) {
    consumer.unsubscribe();
    let deadline = Instant::now() + limit;
    // librdkafka serves the revocation (and any assignment still in flight) on a poll,
    // so the consumer is polled at least once even when it holds nothing yet.
    loop {
        let polled = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        let holds = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if holds == 0 && polled.is_err() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(partitions = holds, "the dispatch consumer did not leave its group in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Blocks in its drop until told to stop, like a close that hangs.
    struct HangsOnDrop(mpsc::Receiver<()>, mpsc::Sender<String>);

    impl Drop for HangsOnDrop {
        fn drop(&mut self) {
            let _ = self.1.send(std::thread::current().name().unwrap_or_default().to_owned());
            let _ = self.0.recv();
        }
    }

    #[test]
    fn a_drop_that_hangs_does_not_hang_its_owner() {
        let (release, wait) = mpsc::channel();
        let (tell, told) = mpsc::channel();
        let owner = ClosesAside::new(HangsOnDrop(wait, tell));
        drop(owner); // returns although the inner drop is still blocked
        let thread = told.recv_timeout(Duration::from_secs(10)).expect("the inner value is dropped");
        assert_eq!(thread, "kafka-close", "dropped on a thread of its own");
        release.send(()).expect("the close thread still waits");
    }
}
