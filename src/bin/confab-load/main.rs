//! confab-load: Confab's own load generator and benchmark runner.
//!
//! `run` drives running servers over the documented WebSocket protocol the way browsers do (connect, get
//! the history, join, send, receive) and reports connects, losses, duplicates and send→receive latency.
//! `bench` starts the release build itself and runs the standard scenario set, writing a report.
//! `floor` measures what this machine charges for fan-out's system calls alone, with no server.
//!
//! Bounded by design: at most [`run::MAX_CLIENTS`] clients and [`run::MAX_DURATION`] of measurement, and
//! only loopback servers unless `--allow-remote` is given.

mod bench;
mod floor;
mod proc;
mod run;
mod signins;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "confab-load",
    about = "Load generator and benchmarks for Confab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One load run against running server(s); prints a table and one JSON line.
    Run(run::RunArgs),
    /// The standard scenarios against the release build; writes report.md, report.json and latency.svg.
    Bench(bench::BenchArgs),
    /// The machine's floor for fan-out: loopback writes alone, no server; prints a table and one JSON line.
    Floor(floor::FloorArgs),
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => {
                let check = args.check;
                let report = run::run(args).await?;
                println!("{}", report.table());
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports serialise")
                );
                if check {
                    report.check()?;
                }
                Ok(())
            }
            Command::Bench(args) => bench::bench(args).await,
            Command::Floor(args) => {
                let report = floor::floor(args).await?;
                println!("{}", report.table());
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports serialise")
                );
                Ok(())
            }
        }
    });
    // Thousands of sockets may still be closing; there is nothing left to wait for.
    runtime.shutdown_background();
    if let Err(err) = outcome {
        eprintln!("confab-load: {err}");
        std::process::exit(1);
    }
}
