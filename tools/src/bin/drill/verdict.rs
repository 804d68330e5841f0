//! The drill's verdict: what the server, the workers' logs and the watchers say about the
//! tasks, the line that sums it up and the full result.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};
use taskwire_tools::{
    load::{brief, latency_ms},
    watch::{TERMINAL, WatchReport},
};
use taskwire_worker::{Outcome, Stopped, TaskRecord};

use crate::{args::Options, clients::Load, fault::FaultWindow, timeline::Timeline};

/// Everything a drill observed.
pub(crate) struct Findings {
    pub(crate) load: Load,
    pub(crate) window: FaultWindow,
    /// Each task's status in the last listing read while settling.
    pub(crate) statuses: HashMap<String, String>,
    pub(crate) listing_errors: BTreeMap<String, u64>,
    /// When settling ended (seconds since the load started).
    pub(crate) settled_at: f64,
    pub(crate) watched: WatchReport,
    /// Tasks not handed to a watcher because its queue was full.
    pub(crate) watch_overflow: u64,
    pub(crate) stopped: Vec<Stopped>,
}

/// The checks of the verdict, worked out from the [`Findings`].
struct Verdict {
    /// Acknowledged tasks the server does not have.
    lost: Vec<String>,
    /// Acknowledged tasks not terminal, by status.
    unfinished: BTreeMap<String, u64>,
    /// Acknowledged tasks by status.
    by_status: BTreeMap<String, u64>,
    runs: Runs,
    worker_failovers: u64,
    pass: bool,
}

impl Findings {
    fn verdict(&self, o: &Options) -> Verdict {
        let wanted: HashSet<&str> = self.load.acked.iter().map(String::as_str).collect();
        let lost: Vec<String> =
            wanted.iter().filter(|id| !self.statuses.contains_key(**id)).map(|id| (*id).to_owned()).collect();
        let mut unfinished: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for status in wanted.iter().filter_map(|id| self.statuses.get(*id)) {
            *by_status.entry(status.clone()).or_default() += 1;
            if !TERMINAL.contains(&status.as_str()) {
                *unfinished.entry(status.clone()).or_default() += 1;
            }
        }
        let records: Vec<&TaskRecord> = self.stopped.iter().flat_map(|s| s.log.iter()).collect();
        let runs = check_runs(&records);
        let worker_failovers = self.stopped.iter().map(|s| s.stats.failovers).sum::<u64>();
        let client_errors = self.load.creates.failed() + self.load.reads.failed();
        // A drill whose fault or restore did not run proves nothing.
        let injected = o.fault_cmd.is_none() || self.window.fault_status.as_deref() == Some("ok");
        let restored = o.restore_cmd.is_none() || self.window.restore_status.as_deref() == Some("ok");
        let pass = injected
            && restored
            && !wanted.is_empty()
            && lost.is_empty()
            && unfinished.is_empty()
            && runs.run_twice == 0
            && (!o.strict || client_errors == 0)
            && (o.watchers == 0 || seq_intact(&self.watched))
            && (!o.expect_failover || failed_over(&self.watched, o.watchers, worker_failovers));
        Verdict { lost, unfinished, by_status, runs, worker_failovers, pass }
    }

    /// The verdict line, the full result (`--out`), and whether the drill passed.
    pub(crate) fn report(&self, o: &Options, timeline: &Timeline) -> (String, Value, bool) {
        let verdict = self.verdict(o);
        let line = self.line(o, &verdict);
        let result = self.result(o, &verdict, &line, timeline);
        (line, result, verdict.pass)
    }

    fn line(&self, o: &Options, verdict: &Verdict) -> String {
        let (creates, reads, window) = (&self.load.creates, &self.load.reads, &self.window);
        let line = format!(
            "drill {}: {} — acknowledged {}, lost {}, unfinished {}, run twice {}, fenced {}; creates failed {} {}, \
             reads {} failed {} {} (p50/p95/p99/max {}); fault {} at {:.1} s, restore {} at {} s; settled at {:.1} s",
            o.name,
            if verdict.pass { "PASS" } else { "FAIL" },
            self.load.acked.len(),
            verdict.lost.len(),
            verdict.unfinished.values().sum::<u64>(),
            verdict.runs.run_twice,
            verdict.runs.fenced,
            creates.failed(),
            json!(creates.errors),
            reads.ok,
            reads.failed(),
            json!(reads.errors),
            brief(&latency_ms(reads.micros.clone())),
            window.fault_status.as_deref().unwrap_or("none"),
            window.fault_at.unwrap_or_default(),
            window.restore_status.as_deref().unwrap_or("none"),
            window.restore_done_at.map_or_else(|| "-".to_owned(), |t| format!("{t:.1}")),
            self.settled_at,
        );
        if o.watchers == 0 && o.urls.len() <= 1 {
            return line;
        }
        let watched = &self.watched;
        format!(
            "{line}; watched {} (finished {}, resumed {}, gaps {}, duplicates {}, after the end {}); worker failovers {}",
            watched.watched,
            watched.finished,
            watched.resumed,
            watched.gaps,
            watched.duplicates,
            watched.after_terminal,
            verdict.worker_failovers,
        )
    }

    fn result(&self, o: &Options, verdict: &Verdict, line: &str, timeline: &Timeline) -> Value {
        let (creates, reads, window, watched) = (&self.load.creates, &self.load.reads, &self.window, &self.watched);
        let runs = &verdict.runs;
        let sum = |counter: fn(&Stopped) -> u64| self.stopped.iter().map(counter).sum::<u64>();
        json!({
            "drill": o.name,
            "verdict": if verdict.pass { "PASS" } else { "FAIL" },
            "line": line,
            "queue": o.queue,
            "strict": o.strict,
            "options": {
                "duration_s": o.duration.as_secs(), "rate": o.rate, "connections": o.connections,
                "workers": o.workers, "capacity": o.capacity, "auto_accept": o.auto_accept, "work_ms": o.work.as_millis() as u64,
                "stall_every": o.stall_every, "stall_for_s": o.stall_for.as_secs(), "lease_seconds": o.lease_seconds,
                "readers": o.readers, "working_set": o.working_set, "settle_s": o.settle.as_secs(),
            },
            "fault": {
                "command": o.fault_cmd, "restore_command": o.restore_cmd,
                "at_s": window.fault_at, "status": window.fault_status,
                "restore_at_s": window.restore_at, "restore_done_at_s": window.restore_done_at,
                "restore_status": window.restore_status,
            },
            "tasks": {
                "acknowledged": self.load.acked.len(), "lost": verdict.lost.len(),
                "lost_ids": verdict.lost.iter().take(20).collect::<Vec<_>>(),
                "unfinished": verdict.unfinished, "by_status": verdict.by_status, "settled_at_s": self.settled_at,
            },
            "runs": { "run_twice": runs.run_twice, "completed_twice": runs.completed_twice,
                      "overlapping_accepted": runs.overlapping, "fenced": runs.fenced },
            "workers": {
                "accepted": sum(|s| s.stats.accepted),
                "completed": sum(|s| s.stats.completed),
                "lease_lost": sum(|s| s.stats.lease_lost),
                "errors": sum(|s| s.stats.errors),
                "reconnects": sum(|s| s.stats.reconnects),
                "failovers": sum(|s| s.stats.failovers),
                "heartbeat_errors": sum(|s| s.stats.heartbeat_errors),
            },
            "creates": { "ok": creates.ok, "errors": creates.errors, "latency_ms": latency_ms(creates.micros.clone()) },
            "reads": { "ok": reads.ok, "errors": reads.errors, "latency_ms": latency_ms(reads.micros.clone()) },
            "listing_errors": self.listing_errors,
            "urls": o.urls,
            "watch": {
                "watchers": o.watchers, "every": o.watch_every, "watched": watched.watched,
                "finished": watched.finished, "skipped": watched.skipped + self.watch_overflow, "gaps": watched.gaps,
                "duplicates": watched.duplicates, "after_terminal": watched.after_terminal,
                "resumed": watched.resumed, "drops": watched.drops, "failovers": watched.failovers,
                "errors": watched.errors, "unfinished": watched.unfinished,
            },
            "expect_failover": o.expect_failover,
            "timeline": timeline.to_json(),
        })
    }
}

/// The watched tasks' events came in `seq` order without gaps or duplicates, and every
/// watched task was seen to its end (at least one was watched).
fn seq_intact(watched: &WatchReport) -> bool {
    watched.watched > 0
        && watched.finished == watched.watched
        && watched.gaps == 0
        && watched.duplicates == 0
        && watched.after_terminal == 0
}

/// The fault moved someone: a worker to another instance and, when tasks were watched, a
/// watched task's subscription to a new one.
fn failed_over(watched: &WatchReport, watchers: usize, worker_failovers: u64) -> bool {
    worker_failovers > 0 && (watchers == 0 || watched.resumed > 0)
}

/// What the workers' logs say about exclusive execution.
#[derive(Debug, Default, PartialEq, Eq)]
struct Runs {
    /// Tasks completed (answer accepted) more than once.
    completed_twice: u64,
    /// Accepted reports made while another worker had accepted the same task.
    overlapping: u64,
    /// Tasks with either of the above.
    run_twice: u64,
    /// Reports refused with `LEASE_LOST` (a stale holder fenced off).
    fenced: u64,
}

/// Checks that no task ran on two workers at once: for each task, the accepted runs in the
/// order they were accepted; a run whose report the server accepted must not overlap a
/// later acceptance (by then its lease had passed to someone else), and a task completes
/// at most once.
fn check_runs(records: &[&TaskRecord]) -> Runs {
    let mut by_task: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
    let mut runs = Runs::default();
    for record in records {
        if matches!(&record.accept, Some(Err(e)) if e.code() == "LEASE_LOST")
            || matches!(&record.answer, Some(Err(e)) if e.code() == "LEASE_LOST")
        {
            runs.fenced += 1;
        }
        if record.accepted {
            by_task.entry(record.task_id.as_str()).or_default().push(record);
        }
    }
    for accepted in by_task.values_mut() {
        accepted.sort_by_key(|r| r.accepted_at.map(|s| s.instant));
        let completions = accepted
            .iter()
            .filter(|r| matches!(r.outcome, Some(Outcome::Complete(_)) | Some(Outcome::Stall(_))))
            .filter(|r| matches!(r.answer, Some(Ok(()))))
            .count();
        let mut bad = completions > 1;
        if completions > 1 {
            runs.completed_twice += 1;
        }
        for pair in accepted.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            let overlapped = match (first.finished_at, next.accepted_at) {
                (Some(finished), Some(accepted)) => accepted.instant < finished.instant,
                (None, Some(_)) => true,
                _ => false,
            };
            if overlapped && matches!(first.answer, Some(Ok(()))) {
                runs.overlapping += 1;
                bad = true;
            }
        }
        if bad {
            runs.run_twice += 1;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use taskwire_worker::{CallError, Stamp};

    use super::*;

    fn lease_lost() -> Result<(), CallError> {
        Err(CallError::Rejected { code: "LEASE_LOST".into(), message: "lease lost".into() })
    }

    fn record(task: &str, accepted_at: Duration, finished_at: Duration, answer: Result<(), CallError>) -> TaskRecord {
        let base = Stamp::now();
        let at = |d: Duration| Stamp { instant: base.instant + d, utc: base.utc };
        TaskRecord {
            task_id: task.into(),
            lease_token: "t".into(),
            queue: "q".into(),
            kind: "k".into(),
            attempts: 0,
            offered_at: base,
            accept: Some(Ok(())),
            accepted: true,
            accepted_at: Some(at(accepted_at)),
            outcome: Some(Outcome::Complete(None)),
            answer: Some(answer),
            finished_at: Some(at(finished_at)),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn seq_and_failover_verdicts() {
        let clean = WatchReport { watched: 10, finished: 10, resumed: 3, ..WatchReport::default() };
        assert!(seq_intact(&clean));
        assert!(!seq_intact(&WatchReport::default()), "nothing watched proves nothing");
        assert!(!seq_intact(&WatchReport { gaps: 1, ..clean.clone() }));
        assert!(!seq_intact(&WatchReport { duplicates: 1, ..clean.clone() }));
        assert!(!seq_intact(&WatchReport { after_terminal: 1, ..clean.clone() }));
        assert!(!seq_intact(&WatchReport { finished: 9, ..clean.clone() }));
        assert!(failed_over(&clean, 4, 2));
        assert!(!failed_over(&clean, 4, 0), "no worker moved");
        assert!(!failed_over(&WatchReport { resumed: 0, ..clean.clone() }, 4, 2), "no watched task resumed");
        assert!(failed_over(&WatchReport::default(), 0, 1));
    }

    #[test]
    fn a_fenced_frozen_worker_is_not_a_double_run() {
        let frozen = record("a", S(0), S(40), lease_lost());
        let rescuer = record("a", S(31), S(32), Ok(()));
        let runs = check_runs(&[&frozen, &rescuer]);
        assert_eq!(runs, Runs { fenced: 1, ..Runs::default() });
    }

    #[test]
    fn an_accepted_report_during_another_run_is_a_double_run() {
        let first = record("a", S(0), S(40), Ok(()));
        let second = record("a", S(31), S(32), lease_lost());
        let runs = check_runs(&[&first, &second]);
        assert_eq!((runs.overlapping, runs.run_twice, runs.fenced), (1, 1, 1));
    }

    #[test]
    fn two_accepted_completions_are_a_double_run_even_apart() {
        let first = record("a", S(0), S(1), Ok(()));
        let second = record("a", S(5), S(6), Ok(()));
        let other = record("b", S(0), S(1), Ok(()));
        let runs = check_runs(&[&second, &first, &other]);
        assert_eq!((runs.completed_twice, runs.overlapping, runs.run_twice), (1, 0, 1));
    }

    #[test]
    fn a_failed_attempt_then_a_completion_is_fine() {
        let mut failed = record("a", S(0), S(1), Ok(()));
        failed.outcome = Some(Outcome::Fail { error: "x".into(), retryable: true });
        let completed = record("a", S(5), S(6), Ok(()));
        assert_eq!(check_runs(&[&failed, &completed]), Runs::default());
    }
}
