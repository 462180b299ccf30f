//! Files and byte counts of a run: the workload's file contents, waiting for a transfer to end,
//! and what a node's transports sent.

use commucat::{data, node::Node, store::transfers::State};
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use crate::meter;

/// Waits for the sender's `TransferFinished` of transfer `id`; true when it completed.
pub async fn wait_file(
    events: &mut commucat::broadcast::Subscription<data::Event>,
    id: &str,
    until: Instant,
) -> bool {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(data::Event::TransferFinished {
                    id: done,
                    direction: "out",
                    state,
                    ..
                }) if done == id => return state == State::Complete,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return false,
            }
        }
    };
    tokio::time::timeout_at(until, wait).await.unwrap_or(false)
}

/// Writes `size` bytes of incompressible-looking content derived from `seed`.
pub fn write_file(path: &std::path::Path, size: usize, seed: u64) -> std::io::Result<()> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut content = vec![0u8; size];
    rng.fill(&mut content[..]);
    std::fs::write(path, content)
}

/// Bytes a node's transports sent, from its `…libp2p_bandwidth_bytes_total` counters (None if the
/// node has no such counter).
pub fn outbound_bytes(node: &Node) -> Option<u64> {
    let mut found = false;
    let mut sum = 0u64;
    let encoded = meter::for_each_sample(&node.metrics(), |name, labels, value| {
        if name.ends_with("libp2p_bandwidth_bytes_total")
            && labels.contains("direction=\"Outbound\"")
        {
            found = true;
            sum += value as u64;
        }
    });
    (encoded && found).then_some(sum)
}
