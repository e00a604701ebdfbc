//! Benchmarks: `minos bench failover` (see `failover`).

/// Benchmark subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Failover latency of a real cluster of `minos serve` processes.
    Failover,
}

/// A benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// The run failed.
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
        BenchCommand::Failover => Err(BenchError::Failed("not built yet".into())),
    }
}
