//! `guildhall-bench [options]`: see `--help` and loadtest/README.md.

use std::process::ExitCode;

use guildhall_bench::options::{Command, Options, usage};
use guildhall_bench::scenario::Threads;

fn main() -> ExitCode {
    let options: Options = match Command::parse(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(Command::Run(options)) => *options,
        Ok(Command::Help) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("guildhall-bench: {err:#}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = match guildhall_bench::scenario::find(&options.scenario).map(|entry| entry.threads) {
        Some(Threads::PerCore) => tokio::runtime::Builder::new_multi_thread(),
        // An unknown scenario is reported by `run`.
        Some(Threads::One) | None => tokio::runtime::Builder::new_current_thread(),
    };
    let result =
        runtime.enable_all().build().map_err(anyhow::Error::from).and_then(|runtime| runtime.block_on(guildhall_bench::run(&options)));
    match result.and_then(|report| Ok((report.json()?, report))) {
        Ok((json, report)) => {
            println!("{report}");
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("guildhall-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
