//! Bounded statement shapes.
//!
//! The MySQL driver prepares every distinct SQL text once per connection and keeps it in
//! a bounded cache (`TASKWIRE_DATABASE_STATEMENT_CACHE`). An `IN (…)` list or a multi-row
//! `INSERT` has a different text for every length, and those lengths follow the load
//! (coalesced create batches, relay rounds, DataLoader batches, matcher rounds). Left
//! alone they keep the cache churning: once it is full, every new length evicts and
//! prepares a statement, and on MariaDB such a commit stalls for a long time. So every variable-length list in the store goes through here:
//! `IN` lists are padded to the next power of two, and rows are inserted in chunks whose
//! lengths are powers of two. A statement then has about log2(longest) shapes, whatever
//! the traffic, and the cache size stops mattering.

use sea_orm::{ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryTrait, Statement, Values};

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

/// Rows a multi-row `UPDATE … SET col = CASE WHEN id = ? THEN ? … END` writes at most.
///
/// Every row evaluates the `CASE` arms before its own, so such a statement costs the
/// database more per row the longer it is: the per-row cost stays flat up to a few dozen
/// rows and grows past that (docs/benchmarks-history.md). Longer batches go as several
/// statements of at most this many rows.
pub(super) const CASE_ROWS: usize = 32;

/// `rows` split into chunks of at most [`CASE_ROWS`], each [`padded`]: the row lists of a
/// batch's multi-row `CASE` updates.
pub(super) fn case_chunks<T: Clone>(rows: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    rows.chunks(CASE_ROWS).map(|chunk| padded(chunk.iter().cloned()))
}

/// Statements a transaction runs one after another without looking at their results
/// (inserts of history, outbox rows, freed worker slots).
///
/// On SQLite they go to the connection in one multi-statement call: every call is a round
/// trip between the async task and SQLite's connection thread (two thread wake-ups), and
/// under SQLite's write gate those round trips, not the statements, are most of a write
/// transaction's time. On MySQL each statement is sent on its own, as a prepared
/// statement of bounded shape. On SQLite the joined text has a shape per mix of chunk
/// lengths, more than the driver's per-connection statement cache holds, so some calls
/// prepare again; that costs far less than the round trips it saves.
#[derive(Debug)]
pub(super) struct Writes {
    backend: DbBackend,
    statements: Vec<Statement>,
}

impl Writes {
    /// No statements yet, to be built for `backend`.
    pub(super) fn new(backend: DbBackend) -> Writes {
        Writes { backend, statements: Vec::new() }
    }

    /// Adds the inserts of `rows` (any number, in order): multi-row inserts of
    /// power-of-two lengths.
    pub(super) fn insert_all<A: ActiveModelTrait>(&mut self, rows: Vec<A>) {
        for chunk in power_of_two_chunks(rows) {
            self.statements.push(A::Entity::insert_many(chunk).build(self.backend));
        }
    }

    /// Runs the statements in order on `conn`; the first error stops them.
    pub(super) async fn run<C: ConnectionTrait>(self, conn: &C) -> Result<(), DbErr> {
        if self.backend == DbBackend::Sqlite && self.statements.len() > 1 {
            // Positional `?` parameters: the driver binds each statement of the call to
            // the next parameters in order.
            let mut sql = String::new();
            let mut values = Vec::new();
            for statement in self.statements {
                sql.push_str(&statement.sql);
                sql.push_str(";\n");
                values.extend(statement.values.map(|Values(v)| v).unwrap_or_default());
            }
            conn.execute_raw(Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)).await?;
            return Ok(());
        }
        for statement in self.statements {
            conn.execute_raw(statement).await?;
        }
        Ok(())
    }
}

impl Extend<Statement> for Writes {
    fn extend<I: IntoIterator<Item = Statement>>(&mut self, statements: I) {
        self.statements.extend(statements);
    }
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
    fn case_updates_are_cut_into_padded_chunks_of_bounded_length() {
        let rows: Vec<usize> = (0..CASE_ROWS * 2 + 3).collect();
        let chunks: Vec<Vec<usize>> = case_chunks(&rows).collect();
        let lengths: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lengths, [CASE_ROWS, CASE_ROWS, 4], "the last chunk padded from 3 to 4");
        assert_eq!(chunks[2], [CASE_ROWS * 2, CASE_ROWS * 2 + 1, CASE_ROWS * 2 + 2, CASE_ROWS * 2 + 2]);
        let flat: Vec<usize> = chunks.concat().into_iter().take(rows.len()).collect();
        assert_eq!(flat, rows, "every row once, in order, before the padding");
        assert_eq!(case_chunks::<usize>(&[]).count(), 0);
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

    /// Several statements of one `Writes`, sent as one call on SQLite, each bound to its
    /// own parameters: every row reads back exactly as written.
    #[tokio::test]
    async fn writes_bind_each_statement_to_its_own_parameters() {
        use sea_orm::{ActiveValue::Set, QueryOrder};
        use taskwire_entity::{outbox, worker};

        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::testing::test_store(dir.path()).await;
        let db = store.connection();
        let message = |n: i64| outbox::ActiveModel {
            topic: Set(format!("topic-{n}")),
            message_key: Set(format!("key-{n}")),
            payload: Set(format!("{{\"n\":{n}}}")),
            traceparent: Set((n % 2 == 0).then(|| format!("trace-{n}"))),
            created_at: Set(1_000 + n),
            ..Default::default()
        };
        let mut writes = Writes::new(db.get_database_backend());
        // Three messages go as two statements (2 + 1), then a row of another table.
        writes.insert_all((1..=3).map(message).collect());
        writes.insert_all(vec![worker::ActiveModel {
            id: Set("w".into()),
            name: Set("worker".into()),
            queues: Set("[\"q\"]".into()),
            capacity: Set(4),
            active: Set(2),
            status: Set("ONLINE".into()),
            last_seen_at: Set(7),
            connected_to: Set(None),
            auto_accept: Set(false),
            version: Set(1),
            created_at: Set(8),
            updated_at: Set(9),
        }]);
        let before = store.stats().statements();
        writes.run(db).await.expect("written");
        assert_eq!(store.stats().statements() - before, 1, "one call on SQLite");

        let rows = outbox::Entity::find().order_by_asc(outbox::Column::Id).all(db).await.expect("read");
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (r.topic.as_str(), r.message_key.as_str(), r.payload.as_str(), r.traceparent.as_deref(), r.created_at)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("topic-1", "key-1", "{\"n\":1}", None, 1_001),
                ("topic-2", "key-2", "{\"n\":2}", Some("trace-2"), 1_002),
                ("topic-3", "key-3", "{\"n\":3}", None, 1_003),
            ]
        );
        let worker = worker::Entity::find_by_id("w".to_owned()).one(db).await.expect("read").expect("row");
        assert_eq!(
            (worker.capacity, worker.active, worker.last_seen_at, worker.created_at, worker.updated_at),
            (4, 2, 7, 8, 9)
        );
    }
}
