//! Chaos: a seeded fault schedule against a real cluster, a recorded history
//! of every request, and a checker of minos's promises over that history.

/// `minos chaos` flags.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Seed of the fault schedule (random when absent; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// A chaos run failed or found violations.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// The run failed or the checker found violations.
    #[error("{0}")]
    Failed(String),
}

impl ChaosError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ChaosError::Usage(_) => 2,
            ChaosError::Failed(_) => 1,
        }
    }
}

/// Runs `minos chaos`.
pub async fn run(_args: ChaosArgs) -> Result<(), ChaosError> {
    Err(ChaosError::Failed("not built yet".into()))
}
