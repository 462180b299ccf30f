//! simnet: runs scenarios of many CommuCat nodes (the real node library) and reports what the
//! network did. See `simnet/README.md`.

pub mod files;
pub mod fleet;
pub mod groups;
pub mod hops;
pub mod host;
pub mod inproc;
pub mod link;
pub mod meter;
pub mod netns;
pub mod overrides;
pub mod piece;
pub mod plan;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod split;
pub mod team;
pub mod track;

use std::path::{Path, PathBuf};

pub use plan::Plan;
pub use report::Report;
pub use scenario::Scenario;

/// Called as the run goes: (phase, done, total).
pub type Progress = dyn Fn(&str, u64, u64) + Send + Sync;

/// A finished run: the report and the samples behind its distributions (for the plots).
pub struct Outcome {
    pub report: Report,
    pub lookup_ms: Vec<f64>,
    pub delivery_ms: Vec<f64>,
    /// Group messages every member got: from the send to the last member's arrival.
    pub group_ms: Vec<f64>,
}

/// The runtime a scenario with `clock` runs on.
///
/// - [`Clock::Real`]: tokio's multi-thread runtime on the host's clock.
/// - [`Clock::Virtual`]: a one-thread runtime whose clock starts paused. tokio then advances it to
///   the next timer whenever no task can run (and not while a `spawn_blocking` task, such as a
///   store commit or a signature, is still running), so the nodes' CPU work takes no simulated
///   time and a busy host makes a run slower, not different. libp2p reads this clock through
///   `simnet/webtime` (web-time, patched) and waits on it through `simnet/timer` (futures-timer,
///   patched), which this switches to register on the current-thread runtime.
pub fn runtime(clock: scenario::Clock) -> std::io::Result<tokio::runtime::Runtime> {
    match clock {
        scenario::Clock::Real => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        scenario::Clock::Virtual => {
            futures_timer::timers_on_current_thread_runtimes();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
        }
    }
}

/// Runs `scenario` with `seed` (the scenario's own when `None`); in inproc mode, prints summed
/// node metrics every `metrics_every` (see [`meter`]). A scenario with `clock = "virtual"` must
/// run on [`runtime`]`(Clock::Virtual)`.
pub async fn run(
    scenario: &Scenario,
    seed: Option<u64>,
    metrics_every: Option<std::time::Duration>,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    if scenario.clock == scenario::Clock::Virtual {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        anyhow::ensure!(
            flavor == tokio::runtime::RuntimeFlavor::CurrentThread,
            "clock = \"virtual\" runs on simnet::runtime(Clock::Virtual), a paused one-thread runtime; this one is {flavor:?}"
        );
    }
    let plan = Plan::new(scenario, seed.unwrap_or(scenario.seed));
    match scenario.mode {
        scenario::Mode::Inproc => inproc::run(scenario, &plan, metrics_every, progress).await,
        scenario::Mode::Netns => {
            if metrics_every.is_some() {
                anyhow::bail!(
                    "--metrics-every works in inproc mode only: netns nodes run in namespaces of their own"
                );
            }
            netns::run(scenario, &plan, progress).await
        }
    }
}

/// Writes `report.json` and the plots into `dir`; returns the files written.
pub fn write(outcome: &Outcome, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&outcome.report)?)?;
    let mut files = vec![json];
    files.extend(plot::write_all(
        &outcome.report,
        &outcome.lookup_ms,
        &outcome.delivery_ms,
        &outcome.group_ms,
        dir,
    )?);
    Ok(files)
}
