//! # taskwire-tools
//!
//! The load and fault tools of Taskwire, run against a server on this machine (loopback
//! only) by the scripts of `tests/bench/`:
//!
//! - `loadgen`: bounded load scenarios (`query`, `create`, `dispatch`, `fanout`);
//! - `drill`: one fault drill with a PASS/FAIL verdict;
//! - `plot`: the PNG figures of docs/benchmarks-analysis.md from their JSON results.
//!
//! This library holds what they share: [`load`] (GraphQL calls, tokens, latency
//! summaries) and [`watch`] (task watchers following `taskUpdated` across fail-overs, also
//! used by the black-box fail-over test). `--help` on each binary lists its options.

pub mod load;
pub mod watch;
