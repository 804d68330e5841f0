//! The fault and its restore, run as shell commands at their times.

use std::{sync::Arc, time::Duration};

use crate::{args::Options, timeline::Timeline};

/// A fault or restore command that has not finished after this long is reported as failed.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// When the fault and the restore ran (seconds since the load started) and how they ended.
#[derive(Debug, Default)]
pub(crate) struct FaultWindow {
    pub(crate) fault_at: Option<f64>,
    pub(crate) fault_status: Option<String>,
    pub(crate) restore_at: Option<f64>,
    pub(crate) restore_done_at: Option<f64>,
    pub(crate) restore_status: Option<String>,
}

async fn shell(command: &str) -> String {
    let run = tokio::process::Command::new("sh").arg("-c").arg(command).kill_on_drop(true).status();
    match tokio::time::timeout(COMMAND_LIMIT, run).await {
        Ok(Ok(status)) if status.success() => "ok".to_owned(),
        Ok(Ok(status)) => format!("exit {}", status.code().map_or_else(|| "signal".to_owned(), |c| c.to_string())),
        Ok(Err(e)) => format!("not started: {e}"),
        Err(_) => format!("not finished after {COMMAND_LIMIT:?}"),
    }
}

/// Runs the fault command at `fault_at` and the restore command `fault_for` later.
pub(crate) async fn inject(o: Options, timeline: Arc<Timeline>) -> FaultWindow {
    let mut window = FaultWindow::default();
    let Some(fault) = &o.fault_cmd else { return window };
    tokio::time::sleep_until((timeline.start + o.fault_at).into()).await;
    window.fault_at = Some(timeline.at());
    window.fault_status = Some(shell(fault).await);
    eprintln!("drill {}: fault at {:.1} s: {}", o.name, timeline.at(), fault);
    if let Some(restore) = &o.restore_cmd {
        tokio::time::sleep_until((timeline.start + o.fault_at + o.fault_for).into()).await;
        window.restore_at = Some(timeline.at());
        window.restore_status = Some(shell(restore).await);
        window.restore_done_at = Some(timeline.at());
        eprintln!("drill {}: restored at {:.1} s: {}", o.name, timeline.at(), restore);
    }
    window
}
