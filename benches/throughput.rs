//! `cargo bench --bench throughput`: a short run of the throughput benchmark
//! (the library code behind `minos bench throughput`): 1000 operations per
//! cell at 1 and 64 clients, a load of 20,000 sessions, idle CPU, memory,
//! placement, mass failover and restart, on a cluster of the `minos` binary
//! Cargo built next to this bench, side by side with etcd when `etcd` is on
//! the PATH (else minos alone).
//!
//! Any `minos bench throughput` flag can be added after `--` and overrides
//! the short defaults: `cargo bench --bench throughput -- --load 100000`.
//! The JSON and the bar chart go to Cargo's target tmp directory unless
//! `--json` / `--plot` say otherwise.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use common::given;
use minos::bench::throughput::ThroughputArgs;

#[derive(Parser)]
#[command(name = "throughput-bench", args_override_self = true)]
struct Cli {
    #[command(flatten)]
    args: ThroughputArgs,
}

fn etcd_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("etcd").is_file()))
}

fn main() -> ExitCode {
    let user = common::user_flags();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut argv: Vec<String> = vec!["throughput-bench".into()];
    let mut default = |flag: &str, value: Option<String>| {
        if !given(&user, flag) {
            argv.push(flag.to_string());
            argv.extend(value);
        }
    };
    default("--ops", Some("1000".into()));
    default("--load", Some("20000".into()));
    default("--clients", Some("1,64".into()));
    // Cargo builds the binary targets of the package for its benches.
    default("--bin", Some(env!("CARGO_BIN_EXE_minos").to_string()));
    default(
        "--json",
        Some(out.join("throughput.json").display().to_string()),
    );
    default(
        "--plot",
        Some(out.join("throughput.svg").display().to_string()),
    );
    if !etcd_on_path() {
        default("--no-etcd", None);
    }
    argv.extend(user);
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let args = cli.args;
    common::run(async {
        let report = minos::bench::throughput::run(&args).await?;
        minos::bench::publish_throughput(&report, args.json.as_deref(), args.plot.as_deref())
    })
}
