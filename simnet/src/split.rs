//! `simnet run --processes N`: an inproc scenario split over N worker processes (`simnet worker`),
//! node `i` in process `i mod N`, the nodes of all processes connected over loopback TCP with the
//! scenario's link model. The coordinator (this module's [`run`]) starts the workers, moves them
//! through the run's steps together (`simnet::team`) and draws the report from their pieces
//! (`simnet::piece`). Every process derives the same plan, and the same node identities, from the
//! scenario and the seed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    time::Instant,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    inproc,
    piece::Piece,
    plan::Plan,
    scenario::{Mode, Scenario},
    team::{self, Addresses, Down, Team, Up},
};

/// Most worker processes of one run.
pub const MAX_PROCESSES: usize = 64;
/// The lowest port the nodes of a split run may listen on; blocks of ports are looked for from
/// here up to [`LAST_PORT`], below Linux's ephemeral ports (32768–60999) where dials take theirs.
pub const FIRST_PORT: u16 = 20_000;
pub const LAST_PORT: u16 = 32_767;
/// Lines from the workers not yet handled by the coordinator.
pub const LINE_QUEUE: usize = 256;

/// The first line the coordinator writes a worker.
#[derive(Serialize, Deserialize)]
struct Start {
    scenario: Scenario,
    seed: u64,
    part: usize,
    hosts: Vec<IpAddr>,
    base_port: u16,
}

/// Where the processes of a split run run.
#[derive(Debug, Clone)]
pub struct Layout {
    /// One per process: the address its nodes listen on, which the other processes reach.
    pub hosts: Vec<IpAddr>,
    /// How to start a worker: a shell command line, `{host}` replaced by the process's host (for
    /// example `ssh {host} simnet`), `worker` appended. `None`: this binary, here.
    pub worker_command: Option<String>,
    /// Node `i` listens on this port + `i`; `None`: the first block free here on loopback.
    pub base_port: Option<u16>,
}

impl Layout {
    /// `parts` processes on this host, over loopback.
    pub fn local(parts: usize) -> Self {
        Self {
            hosts: vec![IpAddr::V4(Ipv4Addr::LOCALHOST); parts],
            worker_command: None,
            base_port: None,
        }
    }
}

/// Runs `s` with `seed` over the processes of `layout`; `exe` is the `simnet` binary (the
/// workers', unless the layout has a command of its own).
pub async fn run(
    exe: &Path,
    s: &Scenario,
    seed: u64,
    layout: &Layout,
    progress: &crate::Progress,
) -> anyhow::Result<crate::Outcome> {
    let parts = layout.hosts.len();
    anyhow::ensure!(
        s.mode == Mode::Inproc,
        "--processes splits inproc scenarios; {:?} runs in network namespaces",
        s.name
    );
    anyhow::ensure!(
        s.clock == crate::scenario::Clock::Real,
        "--processes runs on the real clock: each process's virtual clock would be its own (use --clock real)"
    );
    anyhow::ensure!(
        (1..=MAX_PROCESSES).contains(&parts),
        "--processes must be 1..={MAX_PROCESSES}"
    );
    let started = crate::track::Started::now();
    let plan = Plan::new(s, seed);
    let base_port = match layout.base_port {
        Some(p) => p,
        None => free_ports(plan.nodes.len())?,
    };
    let (tx, mut rx) = mpsc::channel(LINE_QUEUE);
    let mut workers = Workers(Vec::with_capacity(parts));
    for part in 0..parts {
        let start = Start {
            scenario: s.clone(),
            seed,
            part,
            hosts: layout.hosts.clone(),
            base_port,
        };
        let command = match &layout.worker_command {
            None => Command::new(exe),
            Some(line) => {
                let mut c = Command::new("sh");
                let line = line.replace("{host}", &layout.hosts[part].to_string());
                c.args(["-c", &format!("{line} \"$@\""), "sh"]);
                c
            }
        };
        workers.0.push(spawn(command, &start, tx.clone())?);
    }
    drop(tx);
    let mut waiting: Vec<Option<(String, Value)>> = vec![None; parts];
    let mut pieces: Vec<Option<Piece>> = (0..parts).map(|_| None).collect();
    while pieces.iter().any(Option::is_none) {
        let (part, line) = rx.recv().await.context("every worker went away")?;
        let Some(line) = line else {
            if pieces[part].is_some() {
                continue; // its output ends after its piece
            }
            let status = workers.0[part].0.wait()?;
            anyhow::bail!(
                "worker {part} ended ({status}) before its report (its messages are above)"
            );
        };
        match serde_json::from_str(&line).with_context(|| format!("a line of worker {part}"))? {
            Up::Gather { step, value } => {
                waiting[part] = Some((step, value));
                if waiting.iter().all(Option::is_some) {
                    release(&mut waiting, &mut workers.0)?;
                }
            }
            Up::Progress { phase, done, total } if part == 0 => progress(&phase, done, total),
            Up::Progress { .. } => {}
            Up::Piece(p) => pieces[part] = Some(serde_json::from_value(p)?),
        }
    }
    for (part, (child, stdin)) in workers.0.iter_mut().enumerate() {
        stdin.take();
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "worker {part} ended with {status}");
    }
    crate::piece::merge(
        s,
        &plan,
        "inproc",
        started,
        pieces.into_iter().flatten().collect(),
    )
}

/// The workers of a run, each with its standard input (`None` once closed): killed if the run
/// ends before they do.
struct Workers(Vec<(Child, Option<ChildStdin>)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts a worker, hands it `start`, and forwards its lines (then `None`) to `lines` from a
/// thread of their own.
fn spawn(
    mut command: Command,
    start: &Start,
    lines: mpsc::Sender<(usize, Option<String>)>,
) -> anyhow::Result<(Child, Option<ChildStdin>)> {
    let mut child = command
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start worker {}: {command:?}", start.part))?;
    let mut stdin = child.stdin.take().context("a worker's stdin")?;
    let stdout = child.stdout.take().context("a worker's stdout")?;
    let mut first = serde_json::to_vec(start)?;
    first.push(b'\n');
    stdin.write_all(&first)?;
    let part = start.part;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("simnet: cannot read worker {part}'s output: {e}");
                    break;
                }
            };
            if lines.blocking_send((part, Some(line))).is_err() {
                return;
            }
        }
        let _ = lines.blocking_send((part, None));
    });
    Ok((child, Some(stdin)))
}

/// Every worker reached a step: each gets every worker's value.
fn release(
    waiting: &mut [Option<(String, Value)>],
    workers: &mut [(Child, Option<ChildStdin>)],
) -> anyhow::Result<()> {
    let (steps, values): (Vec<String>, Vec<Value>) =
        waiting.iter_mut().flat_map(Option::take).unzip();
    anyhow::ensure!(
        steps.iter().all(|s| *s == steps[0]),
        "the workers are at different steps: {steps:?}"
    );
    let mut line = serde_json::to_vec(&Down {
        step: steps[0].clone(),
        values,
    })?;
    line.push(b'\n');
    for (part, (_, stdin)) in workers.iter_mut().enumerate() {
        let stdin = stdin.as_mut().context("a worker's stdin")?;
        (stdin.write_all(&line)).with_context(|| format!("worker {part} went away"))?;
    }
    Ok(())
}

/// A block of `n` ports free on loopback, from [`FIRST_PORT`].
fn free_ports(n: usize) -> anyhow::Result<u16> {
    let n = u16::try_from(n)
        .ok()
        .context("too many nodes for one host's ports")?;
    let mut base = FIRST_PORT;
    while base.checked_add(n).is_some_and(|end| end <= LAST_PORT) {
        match (0..n).find(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).is_err()) {
            None => return Ok(base),
            Some(busy) => base += busy + 1,
        }
    }
    anyhow::bail!("no {n} free ports in a row between {FIRST_PORT} and {LAST_PORT}")
}

/// `simnet worker`: one process of a split run, started by [`run`].
pub async fn worker() -> anyhow::Result<()> {
    let mut input = team::stdin_lines();
    let line = (input.recv().await).context("no start line from the coordinator")?;
    let start: Start = serde_json::from_str(&line).context("the start line")?;
    start.scenario.validate()?;
    anyhow::ensure!(
        start.part < start.hosts.len(),
        "part {} of {}",
        start.part,
        start.hosts.len()
    );
    let plan = Plan::new(&start.scenario, start.seed);
    let addresses = Addresses {
        hosts: start.hosts,
        base_port: start.base_port,
    };
    let mut team = Team::member(start.part, addresses, input);
    let last = std::sync::Mutex::new((String::new(), Instant::now()));
    let progress = move |phase: &str, done: u64, total: u64| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 != phase || last.1.elapsed().as_millis() >= 500 || done == total {
            *last = (phase.to_owned(), Instant::now());
            let (phase, done, total) = (phase.to_owned(), done, total);
            let _ = team::say(&Up::Progress { phase, done, total });
        }
    };
    let piece = inproc::run_part(&start.scenario, &plan, &mut team, None, &progress).await?;
    team::say(&Up::Piece(serde_json::to_value(piece)?))
}
