//! Consumer-group rebalances, told to the owner of a group consumer.
//!
//! A consumer in a group is given its partitions by the group and loses them when members
//! join or leave. Its owner must hear of both: what it holds from a revoked partition is
//! now the partition's new owner's to act on. The owner implements [`RebalanceListener`];
//! [`GroupContext`] is the librdkafka consumer context that calls it.

use rdkafka::{
    ClientContext, TopicPartitionList,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
    error::KafkaError,
};

/// What the owner of a group consumer hears of the group's rebalances. Called on
/// librdkafka's thread, in the middle of a rebalance: every call must return quickly.
pub(crate) trait RebalanceListener: Send + Sync + 'static {
    /// `partitions` are about to be revoked.
    fn revoking(&self, partitions: &[i32]);
    /// The group assigned `partitions`: the whole assignment, replacing any before it.
    fn assigned(&self, partitions: &[i32]);
    /// `partitions` were revoked: the consumer holds none until the next assignment.
    fn revoked(&self, partitions: &[i32]);
    /// A rebalance failed.
    fn failed(&self, error: &KafkaError);
}

/// The context of a group consumer: passes the group's rebalances to `L`.
#[derive(Debug, Default)]
pub(crate) struct GroupContext<L> {
    listener: L,
}

impl<L> GroupContext<L> {
    /// The listener this context tells of rebalances.
    pub(crate) fn listener(&self) -> &L {
        &self.listener
    }
}

impl<L: RebalanceListener> ClientContext for GroupContext<L> {}

impl<L: RebalanceListener> ConsumerContext for GroupContext<L> {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.listener.revoking(&partitions(list));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => self.listener.assigned(&partitions(list)),
            Rebalance::Revoke(list) => self.listener.revoked(&partitions(list)),
            Rebalance::Error(e) => self.listener.failed(e),
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}
