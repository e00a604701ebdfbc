//! What the benches share: reading the user's flags after `--`, and running
//! a benchmark on a tokio runtime with `minos bench`'s exit codes.

use std::future::Future;
use std::process::ExitCode;

use minos::bench::BenchError;

/// The flags given after `--` (Cargo adds `--bench` to a bench without the
/// libtest harness).
pub fn user_flags() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect()
}

/// True when the user gave `flag` (as `--flag value` or `--flag=value`).
pub fn given(user: &[String], flag: &str) -> bool {
    user.iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// Runs `bench` on a multi-threaded runtime: exit 0, or the error's code
/// (2 bad flags, 1 a failed run) with its message.
pub fn run(bench: impl Future<Output = Result<(), BenchError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(bench) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
