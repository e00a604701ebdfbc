//! Benchmarks: `minos bench failover` (see [`failover`]), its report
//! ([`report`]) and plot ([`plot`]).

pub mod failover;
pub mod plot;
pub mod report;
pub mod throughput;

pub use failover::{FailoverArgs, FailoverConfig, Mode};
pub use report::Report;

/// Benchmark subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Failover latency of a real cluster of `minos serve` processes: per
    /// mode (graceful, crash, leader-crash, freeze), the time from the signal
    /// to the first answer of each affected session on its new owner.
    Failover(FailoverArgs),
    /// Throughput, idle cost, memory per session, placement balance,
    /// restart and mass failover of a real cluster, side by side with a
    /// three-member etcd cluster started in the same run (same load
    /// generator); prints both and their ratio.
    Throughput(throughput::ThroughputArgs),
}

/// A benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// The run failed, or lost a session, or saw a double owner.
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Usage(_) => 2,
            BenchError::Failed(_) => 1,
        }
    }
}

/// Runs a benchmark command.
pub async fn run(command: BenchCommand) -> Result<(), BenchError> {
    match command {
        BenchCommand::Failover(args) => {
            let json = args.json.clone();
            let plot = args.plot.clone();
            let config = args.into_config()?;
            let report = failover::run(&config).await?;
            publish(&report, json.as_deref(), plot.as_deref())
        }
        BenchCommand::Throughput(args) => {
            let report = throughput::run(&args).await?;
            publish_throughput(&report, args.json.as_deref(), args.plot.as_deref())
        }
    }
}

/// Prints a throughput report's tables and writes its JSON and bar chart
/// when asked.
pub fn publish_throughput(
    report: &throughput::ThroughputReport,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> Result<(), BenchError> {
    print!("{}", report.tables());
    if let Some(path) = json {
        report.write_json(path).map_err(BenchError::Failed)?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = plot {
        report.write_plot(path).map_err(BenchError::Failed)?;
        eprintln!("bar chart written to {}", path.display());
    }
    Ok(())
}

/// Prints the tables (stdout) and alarms (stderr), writes the JSON and the
/// plot when asked, and fails when a session was lost, came back with the
/// wrong state, or had two owners.
pub fn publish(
    report: &Report,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> Result<(), BenchError> {
    print!("{}", report.tables());
    for alarm in report.alarms() {
        eprintln!("{alarm}");
    }
    if let Some(path) = json {
        report.write_json(path).map_err(BenchError::Failed)?;
        eprintln!(
            "raw samples and configuration written to {}",
            path.display()
        );
    }
    if let Some(path) = plot {
        report.write_plot(path).map_err(BenchError::Failed)?;
        eprintln!("latency CDF written to {}", path.display());
    }
    let (lost, double, wrong) = report.failures();
    if lost + double + wrong > 0 {
        return Err(BenchError::Failed(format!(
            "FAILED: {lost} sessions lost, {double} double owners, {wrong} sessions back with a wrong state or keyed writes that failed or were not applied exactly once"
        )));
    }
    Ok(())
}
