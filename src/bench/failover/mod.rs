//! `minos bench failover`: how long a session is unavailable when its node
//! stops, crashes, freezes, or is the leader and crashes.
//!
//! The benchmark starts its own cluster of real `minos serve` processes on
//! loopback ports chosen by the OS
//! ([`ProcessCluster`](crate::testkit::process::ProcessCluster)), creates `kv`
//! sessions with committed state, and runs trials. One trial:
//!
//! 1. restore: every node runs and is Up, sessions are rebalanced so the
//!    victim owns some, and one `append` per session is acknowledged (the
//!    reply names the owner and epoch the session runs under right now);
//! 2. (crash mode) a few fresh sessions are created on the victim, with no
//!    settling time;
//! 3. the victim gets its signal; from that instant every session it owned
//!    is polled concurrently through the surviving nodes with `{"op":"get"}`
//!    until a reply comes from a different owner under a higher epoch. That
//!    delay is the sample; the reply's state must equal the acknowledged one;
//! 4. a session not back within the cap is lost; two replies for one
//!    session and epoch from different owners are a double owner. Both stay
//!    in the statistics and fail the run.

mod args;
mod poll;
mod setup;
mod trial;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub use self::args::{FailoverArgs, FailoverConfig};
use self::setup::Bench;
pub(crate) use self::trial::TrialOutcome;
use super::report::{ModeReport, Report, RunReport, TimingRecord};
use super::BenchError;
use crate::config::Timing;
use crate::testkit::process::Signal;

/// How a node is taken away in a trial.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// SIGTERM of a non-leader owner: it hands its sessions over, then exits.
    Graceful,
    /// SIGKILL of a non-leader owner, just after fresh sessions were placed on it.
    Crash,
    /// SIGKILL of the leader (which owns sessions too).
    LeaderCrash,
    /// SIGSTOP of a non-leader owner (SIGCONT after the trial): only the
    /// lease timeout can tell.
    Freeze,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: [Mode; 4] = [Mode::Graceful, Mode::Crash, Mode::LeaderCrash, Mode::Freeze];

    /// The name used by `--mode` and the reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Graceful => "graceful",
            Mode::Crash => "crash",
            Mode::LeaderCrash => "leader-crash",
            Mode::Freeze => "freeze",
        }
    }

    fn signal(self) -> Signal {
        match self {
            Mode::Graceful => Signal::Term,
            Mode::Crash | Mode::LeaderCrash => Signal::Kill,
            Mode::Freeze => Signal::Stop,
        }
    }
}

/// Runs the benchmark: one cluster per run (per swept node timeout), every
/// mode and trial on it. Infrastructure failures (a cluster that does not
/// start or heal) are errors; lost sessions and double owners are in the
/// report.
pub async fn run(config: &FailoverConfig) -> Result<Report, BenchError> {
    config.validate().map_err(BenchError::Usage)?;
    let runs = config.runs();
    let progress = progress_bar(
        config,
        (runs.len() * config.modes.len() * config.trials) as u64,
    );
    let mut report = Report::new(config);
    for knobs in runs {
        let timing = Timing::from_flags(&knobs)
            .map_err(|e| BenchError::Usage(format!("timing flags: {e}")))?;
        let label = match knobs.node_timeout_ms {
            Some(ms) => format!("node timeout {ms} ms"),
            None => format!("node timeout {} ms", timing.node_timeout.as_millis()),
        };
        say(
            &progress,
            &format!("--- starting a {}-node cluster ({label})", config.nodes),
        );
        let mut bench = Bench::start(config, &knobs, &progress).await?;
        let modes = run_modes(&mut bench, &label, &progress).await?;
        report.runs.push(RunReport {
            node_timeout_ms: timing.node_timeout.as_millis() as u64,
            knobs: knobs.clone(),
            timing: TimingRecord::from(&timing),
            modes,
        });
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Every mode and trial on one cluster; the first failing trial ends the
/// run with the nodes' log tails.
async fn run_modes(
    bench: &mut Bench<'_>,
    label: &str,
    progress: &ProgressBar,
) -> Result<Vec<ModeReport>, BenchError> {
    let config = bench.config;
    let mut modes = Vec::new();
    for mode in &config.modes {
        let mut mode_report = ModeReport::new(*mode);
        for trial in 0..config.trials {
            progress.set_message(format!("{label}: {} trial {}", mode.name(), trial + 1));
            let outcome = bench.trial(*mode, trial).await;
            match outcome {
                Ok(outcome) => {
                    say(progress, &outcome.describe(*mode, trial));
                    mode_report.absorb(outcome);
                }
                Err(e) => {
                    progress.abandon();
                    return Err(BenchError::Failed(format!(
                        "{} trial {}: {e}\n{}",
                        mode.name(),
                        trial + 1,
                        bench.logs()
                    )));
                }
            }
            progress.inc(1);
        }
        modes.push(mode_report);
    }
    Ok(modes)
}

/// The progress bar over `total` trials (hidden without `progress`).
fn progress_bar(config: &FailoverConfig, total: u64) -> ProgressBar {
    let progress = if config.progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress
}

/// Narration on stderr that does not tear the progress bar.
fn say(progress: &ProgressBar, line: &str) {
    if progress.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.println(line);
    }
}
