//! `simnet run <scenario.toml> [--out DIR] [--seed N] [--clock real|virtual] [--metrics-every SECS]
//! [--processes N]`,
//! `simnet list`; `simnet worker` is one process of a split run (started by `run`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use simnet::{Scenario, scenario::shipped_dir};

/// jemalloc, not glibc's malloc, which took ~15% of the CPU while a thousand nodes opened
/// connections (see "What a node costs" in simnet/README.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the
/// environment still overrides them): pages freed are returned to the system at once instead of
/// kept ten seconds for reuse. On the virtual clock a simulated minute of joins passes in a few
/// real seconds, so every connection freed in the last ten was still resident: `bursty-join`
/// peaked at 3,969 MiB with jemalloc's defaults and 3,209 MiB with these (simnet/README.md,
/// "What a node costs").
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 34] = b"dirty_decay_ms:0,muzzy_decay_ms:0\0";

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
        /// The nodes' clock (default: the scenario's `clock`, else real). `virtual`: inproc in one
        /// process, on one thread, time advancing only when every node waits (README, "Virtual
        /// time"): results do not depend on the host's load.
        #[arg(long, value_enum)]
        clock: Option<simnet::scenario::Clock>,
        /// inproc: every SECS seconds, print the nodes' libp2p metrics summed, and the CPU used.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        metrics_every: Option<u64>,
        /// inproc: split the nodes over N processes of this binary, connected over loopback TCP.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u16).range(1..=simnet::split::MAX_PROCESSES as i64))]
        processes: u16,
        /// With --processes: the address each process's nodes listen on, one per process
        /// (default: 127.0.0.1 for each).
        #[arg(long, value_delimiter = ',', requires = "processes")]
        hosts: Vec<std::net::IpAddr>,
        /// With --processes: how to start a worker, through `sh -c`, `{host}` replaced by its
        /// host and `worker` appended (for example 'ssh {host} simnet'). Default: this binary.
        #[arg(long, requires = "processes")]
        worker_command: Option<String>,
        /// With --processes: node i listens on this port + i (default: the first block of free
        /// ports from 20000 on this host).
        #[arg(long, requires = "processes")]
        base_port: Option<u16>,
    },
    /// One process of a split run, started by `simnet run --processes`; speaks JSON lines on
    /// standard input and output.
    #[command(hide = true)]
    Worker,
    /// The shipped scenarios, one line each.
    List,
}

/// netns scenarios run in patchbay's user namespace, which a process can only enter while it has
/// a single thread: `run` re-executes this binary with `SIMNET_NETNS_USERNS=1`, and this
/// constructor enters the namespace before `main`.
#[ctor::ctor]
fn userns() {
    simnet::netns::enter_userns_if_asked();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Run {
        scenario, clock, ..
    } = &cli.command
        && std::env::var_os(simnet::netns::USERNS_ENV).is_none()
        && let Ok(s) = load(scenario, *clock)
        && s.mode == simnet::scenario::Mode::Netns
    {
        if let Some(why) = simnet::netns::unavailable() {
            eprintln!(
                "simnet: scenario {:?} needs network namespaces and nftables: {why}",
                s.name
            );
            return std::process::ExitCode::FAILURE;
        }
        return reexec();
    }
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
            clock,
            metrics_every,
            processes,
            hosts,
            worker_command,
            base_port,
        } => load(&scenario, clock).and_then(|scenario| {
            let rt = simnet::runtime(scenario.clock)?;
            let every = metrics_every.map(std::time::Duration::from_secs);
            let mut layout = simnet::split::Layout::local(processes.into());
            if !hosts.is_empty() && hosts.len() != usize::from(processes) {
                return Err(anyhow::anyhow!(
                    "--hosts names {} hosts for {processes} processes: one per process",
                    hosts.len()
                ));
            }
            if !hosts.is_empty() {
                layout.hosts = hosts;
            }
            layout.worker_command = worker_command;
            layout.base_port = base_port;
            rt.block_on(run(scenario, out, seed, every, layout))
        }),
        Command::Worker => simnet::runtime(simnet::scenario::Clock::Real)
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(simnet::split::worker())),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simnet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The scenario at `path`, on `clock` when given.
fn load(
    path: &std::path::Path,
    clock: Option<simnet::scenario::Clock>,
) -> anyhow::Result<Scenario> {
    let mut s = Scenario::load(path)?;
    if let Some(clock) = clock {
        s.clock = clock;
        s.validate()
            .map_err(|e| anyhow::anyhow!("scenario {}: {e:#}", path.display()))?;
    }
    Ok(s)
}

/// Runs this binary again with the same arguments inside patchbay's user namespace.
fn reexec() -> std::process::ExitCode {
    let status = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(simnet::netns::USERNS_ENV, "1")
            .status()
    });
    match status {
        Ok(s) if s.success() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("simnet: cannot re-execute itself for the netns lab: {e}");
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

async fn run(
    scenario: Scenario,
    out: Option<PathBuf>,
    seed: Option<u64>,
    metrics_every: Option<std::time::Duration>,
    layout: simnet::split::Layout,
) -> anyhow::Result<()> {
    let split = layout.hosts.len() > 1 || layout.worker_command.is_some();
    if split && metrics_every.is_some() {
        anyhow::bail!("--metrics-every works in one process only");
    }
    let out = out.unwrap_or_else(|| PathBuf::from("simnet-out").join(&scenario.name));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:16} [{bar:40}] {pos}/{len} {elapsed}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // Without a terminal (CI, a log file) the bar is hidden: a line per phase and every 10 s.
    let plain = bar.is_hidden();
    let last_line = std::sync::Mutex::new((String::new(), std::time::Instant::now()));
    let progress = {
        let bar = bar.clone();
        move |phase: &str, done: u64, total: u64| {
            if bar.message() != phase {
                bar.set_message(phase.to_owned());
            }
            bar.set_length(total);
            bar.set_position(done);
            if plain {
                let mut last = last_line.lock().unwrap_or_else(|e| e.into_inner());
                if last.0 != phase || last.1.elapsed() >= std::time::Duration::from_secs(10) {
                    eprintln!("simnet: {phase} {done}/{total}");
                    *last = (phase.to_owned(), std::time::Instant::now());
                }
            }
        }
    };
    let outcome = match split {
        false => simnet::run(&scenario, seed, metrics_every, &progress).await?,
        true => {
            let exe = std::env::current_exe()?;
            let seed = seed.unwrap_or(scenario.seed);
            simnet::split::run(&exe, &scenario, seed, &layout, &progress).await?
        }
    };
    bar.finish_and_clear();
    let files = simnet::write(&outcome, &out)?;
    println!("{}", outcome.report.summary());
    for f in files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}
