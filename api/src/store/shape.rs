//! Bounded statement shapes.
//!
//! The MySQL driver prepares every distinct SQL text once per connection and keeps it in
//! a bounded cache (`TASKWIRE_DATABASE_STATEMENT_CACHE`). An `IN (…)` list or a multi-row
//! `INSERT` has a different text for every length, and those lengths follow the load
//! (coalesced create batches, relay rounds, DataLoader batches, matcher rounds). Left
//! alone they keep the cache churning: once it is full, every new length evicts and
//! prepares a statement, and on MariaDB each such commit was seen to stall ~130 ms
//! (docs/BENCHMARKS.md). So every variable-length list in the store goes through here:
//! `IN` lists are padded to the next power of two, and rows are inserted in chunks whose
//! lengths are powers of two. A statement then has about log2(longest) shapes, whatever
//! the traffic, and the cache size stops mattering.

use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait};

/// `values` padded to the next power of two in length by repeating the last one (a
/// repeated value changes nothing in `IN (…)`). Empty stays empty.
pub(super) fn padded<T: Clone>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut values: Vec<T> = values.into_iter().collect();
    if let Some(last) = values.last().cloned() {
        values.resize(values.len().next_power_of_two(), last);
    }
    values
}

/// `rows` in order, split into chunks whose lengths are distinct powers of two, largest
/// first (the binary digits of the length: 100 rows go as 64 + 32 + 4).
pub(super) fn power_of_two_chunks<T>(mut rows: Vec<T>) -> Vec<Vec<T>> {
    let mut chunks = Vec::with_capacity(rows.len().count_ones() as usize);
    while !rows.is_empty() {
        let rest = rows.split_off(1 << rows.len().ilog2());
        chunks.push(rows);
        rows = rest;
    }
    chunks
}

/// Inserts `rows` (any number, in order) with multi-row inserts of power-of-two length.
pub(super) async fn insert_all<A, C>(conn: &C, rows: Vec<A>) -> Result<(), DbErr>
where
    A: ActiveModelTrait + Send,
    C: ConnectionTrait,
{
    for chunk in power_of_two_chunks(rows) {
        A::Entity::insert_many(chunk).exec_without_returning(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_padded_to_a_power_of_two_with_their_last_value() {
        assert_eq!(padded(Vec::<u8>::new()), Vec::<u8>::new());
        assert_eq!(padded([7]), vec![7]);
        assert_eq!(padded([1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded([1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(padded(1..=5).len(), 8);
        let shapes: std::collections::BTreeSet<usize> = (1..=500).map(|n| padded(0..n).len()).collect();
        assert_eq!(shapes.len(), 10, "1..=500 values fit 10 list lengths: {shapes:?}");
    }

    #[test]
    fn rows_are_chunked_in_powers_of_two_keeping_their_order() {
        assert!(power_of_two_chunks(Vec::<u8>::new()).is_empty());
        let chunks = power_of_two_chunks((0..100).collect::<Vec<u32>>());
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![64, 32, 4]);
        assert_eq!(chunks.concat(), (0..100).collect::<Vec<u32>>());
        for n in 1..=600usize {
            let lengths: Vec<usize> = power_of_two_chunks(vec![(); n]).iter().map(Vec::len).collect();
            assert_eq!(lengths.iter().sum::<usize>(), n);
            assert!(lengths.iter().all(|l| l.is_power_of_two()), "{n}: {lengths:?}");
            assert_eq!(lengths.len(), n.count_ones() as usize);
        }
    }
}
