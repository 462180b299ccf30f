//! `simnet run <scenario.toml> [--out DIR] [--seed N]`, `simnet list`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use simnet::{Scenario, scenario::shipped_dir};

#[derive(Parser)]
#[command(
    name = "simnet",
    version,
    about = "Simulate a network of CommuCat nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write report.json and PNG plots.
    Run {
        scenario: PathBuf,
        /// Output directory. Default: simnet-out/<scenario name>.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of the topology and workload (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The shipped scenarios, one line each.
    List,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::List => list(),
        Command::Run {
            scenario,
            out,
            seed,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(scenario, out, seed))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simnet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn list() -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(shipped_dir())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        let s = Scenario::load(&path)?;
        println!("{:<18} {}", s.name, s.description);
    }
    Ok(())
}

async fn run(path: PathBuf, out: Option<PathBuf>, seed: Option<u64>) -> anyhow::Result<()> {
    let scenario = Scenario::load(&path)?;
    let out = out.unwrap_or_else(|| PathBuf::from("simnet-out").join(&scenario.name));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:16} [{bar:40}] {pos}/{len} {elapsed}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let progress = {
        let bar = bar.clone();
        move |phase: &str, done: u64, total: u64| {
            if bar.message() != phase {
                bar.set_message(phase.to_owned());
            }
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let outcome = simnet::run(&scenario, seed, &progress).await?;
    bar.finish_and_clear();
    let files = simnet::write(&outcome, &out)?;
    println!("{}", outcome.report.summary());
    for f in files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}
