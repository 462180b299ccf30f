//! The processes of a run. A run in one process is a team of one; `simnet run --processes N`
//! (`simnet::split`) starts N worker processes, each running the nodes whose index is its part
//! modulo N, and coordinates them over their standard input and output, one JSON object per line:
//!
//! - a worker writes `{"gather":{"step":S,"value":V}}` when it reaches step `S` of the run (the
//!   bootstrap nodes are up, the DHT is warm, the groups are made, ...) and waits; when every
//!   worker has reached `S` the coordinator writes each of them `{"step":S,"values":[V0,…]}`,
//!   every worker's value in part order, and they go on together;
//! - `{"progress":{"phase":P,"done":D,"total":T}}` is a worker's progress (shown for part 0);
//! - `{"piece":{…}}` is its last line: what its nodes did (`simnet::piece::Piece`).
//!
//! Nothing else is written on a worker's standard output; its diagnostics go to standard error.

use std::io::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::mpsc;

/// Lines from the coordinator read ahead of the run.
pub const INPUT_QUEUE: usize = 16;

/// What a worker writes to its coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Up {
    Gather {
        step: String,
        value: Value,
    },
    Progress {
        phase: String,
        done: u64,
        total: u64,
    },
    Piece(Value),
}

/// What the coordinator writes to each worker when every worker reached `step`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Down {
    pub step: String,
    pub values: Vec<Value>,
}

/// Where a worker's nodes listen: `--base-port` + node index, on its host's address.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// Per part: the address its nodes listen on.
    pub hosts: Vec<std::net::IpAddr>,
    pub base_port: u16,
}

impl Addresses {
    /// The TCP address node `i` listens on (the node's part runs it).
    pub fn of(&self, i: usize) -> anyhow::Result<libp2p::Multiaddr> {
        use libp2p::multiaddr::Protocol;
        let port = u16::try_from(usize::from(self.base_port) + i)
            .ok()
            .context("node ports run past 65535: choose a lower --base-port")?;
        let host = self.hosts[i % self.hosts.len()];
        Ok(libp2p::Multiaddr::from(host).with(Protocol::Tcp(port)))
    }
}

pub enum Team {
    /// Every node in this process.
    Alone,
    /// Part `part` of `parts` (`simnet worker`).
    Member {
        part: usize,
        parts: usize,
        addresses: Addresses,
        input: mpsc::Receiver<String>,
    },
}

impl Team {
    /// A worker of a split run, talking to its coordinator on standard input (`input`, its lines
    /// after the first, see [`stdin_lines`]) and output.
    pub fn member(part: usize, addresses: Addresses, input: mpsc::Receiver<String>) -> Self {
        Team::Member {
            part,
            parts: addresses.hosts.len(),
            addresses,
            input,
        }
    }

    /// Whether this process runs node `i`.
    pub fn owns(&self, i: usize) -> bool {
        match self {
            Team::Alone => true,
            Team::Member { part, parts, .. } => i % parts == *part,
        }
    }

    /// Waits until every process reached `step`; every process's `mine`, in part order.
    pub async fn gather<T: Serialize + DeserializeOwned>(
        &mut self,
        step: &str,
        mine: T,
    ) -> anyhow::Result<Vec<T>> {
        let Team::Member { input, .. } = self else {
            return Ok(vec![mine]);
        };
        let value = serde_json::to_value(mine)?;
        say(&Up::Gather {
            step: step.to_owned(),
            value,
        })?;
        let line = (input.recv().await)
            .with_context(|| format!("the coordinator went away at step {step:?}"))?;
        let down: Down = serde_json::from_str(&line).context("a line from the coordinator")?;
        anyhow::ensure!(
            down.step == step,
            "the coordinator is at step {:?}, this worker at {step:?}",
            down.step
        );
        (down.values.into_iter())
            .map(|v| serde_json::from_value(v).context("a value another worker gathered"))
            .collect()
    }
}

/// Writes one line to the coordinator.
pub fn say(up: &Up) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(up)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

/// Standard input's lines, read by a thread of their own (a blocking read would hold one of the
/// runtime's threads); the channel closes at the end of the input or on an error.
pub fn stdin_lines() -> mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}
