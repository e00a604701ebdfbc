//! `cargo bench --bench failover`: a short run of the failover-latency
//! benchmark (the library code behind `minos bench failover`): 20 sessions,
//! 3 trials of the `graceful` and `crash` modes on a cluster of the `minos`
//! binary Cargo built next to this bench.
//!
//! Any `minos bench failover` flag can be added after `--`, and overrides
//! the short defaults: `cargo bench --bench failover -- --trials 10 --mode freeze`.
//! The JSON samples and the CDF plot go to Cargo's target tmp directory
//! unless `--json` / `--plot` say otherwise.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use common::given;
use minos::bench::{publish, FailoverArgs};

#[derive(Parser)]
#[command(name = "failover-bench", args_override_self = true)]
struct Cli {
    #[command(flatten)]
    args: FailoverArgs,
}

fn main() -> ExitCode {
    let user = common::user_flags();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut argv: Vec<String> = ["failover-bench", "--sessions", "20", "--trials", "3"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut default = |flag: &str, value: String| {
        if !given(&user, flag) {
            argv.push(flag.to_string());
            argv.push(value);
        }
    };
    // Cargo builds the binary targets of the package for its benches.
    default("--bin", env!("CARGO_BIN_EXE_minos").to_string());
    default("--json", out.join("failover.json").display().to_string());
    default("--plot", out.join("failover.svg").display().to_string());
    if !given(&user, "--mode") {
        argv.extend(["--mode", "graceful", "--mode", "crash"].map(String::from));
    }
    argv.extend(user);
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let json = cli.args.json.clone();
    let plot = cli.args.plot.clone();
    common::run(async {
        let config = cli.args.into_config()?;
        let report = minos::bench::failover::run(&config).await?;
        publish(&report, json.as_deref(), plot.as_deref())
    })
}
