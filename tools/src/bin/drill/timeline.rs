//! The drill's per-second record of client operations, which `plot` draws.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use taskwire_tools::load::lock;

/// Successes, failures and latencies of one second of the drill.
#[derive(Debug, Default)]
struct Second {
    create_ok: u64,
    create_err: u64,
    create_micros: Vec<u32>,
    read_ok: u64,
    read_err: u64,
    read_micros: Vec<u32>,
}

/// The drill's per-second record, indexed by seconds since the load started.
pub(crate) struct Timeline {
    pub(crate) start: Instant,
    seconds: Mutex<Vec<Second>>,
}

#[derive(Clone, Copy)]
pub(crate) enum Op {
    Create,
    Read,
}

impl Timeline {
    pub(crate) fn new(seconds: u64) -> Timeline {
        Timeline { start: Instant::now(), seconds: Mutex::new((0..seconds).map(|_| Second::default()).collect()) }
    }

    /// Records an operation that ended now after `took`.
    pub(crate) fn record(&self, op: Op, ok: bool, took: Duration) {
        let index = self.start.elapsed().as_secs() as usize;
        let micros = took.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut seconds = lock(&self.seconds);
        let Some(second) = seconds.get_mut(index) else { return };
        match (op, ok) {
            (Op::Create, true) => {
                second.create_ok += 1;
                second.create_micros.push(micros);
            }
            (Op::Create, false) => second.create_err += 1,
            (Op::Read, true) => {
                second.read_ok += 1;
                second.read_micros.push(micros);
            }
            (Op::Read, false) => second.read_err += 1,
        }
    }

    pub(crate) fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub(crate) fn to_json(&self) -> Value {
        let p99 = |micros: &mut Vec<u32>| {
            micros.sort_unstable();
            let rank = ((micros.len() as f64 * 0.99) as usize).min(micros.len().saturating_sub(1));
            micros.get(rank).map(|&m| f64::from(m) / 1000.0)
        };
        let mut seconds = lock(&self.seconds);
        let rows: Vec<Value> = seconds
            .iter_mut()
            .enumerate()
            .map(|(t, s)| {
                json!({
                    "t": t,
                    "create_ok": s.create_ok, "create_err": s.create_err, "create_p99_ms": p99(&mut s.create_micros),
                    "read_ok": s.read_ok, "read_err": s.read_err, "read_p99_ms": p99(&mut s.read_micros),
                })
            })
            .collect();
        Value::Array(rows)
    }
}
