//! The `commucat` command line: verbs over the local control API, plus `init`, `run`, `id` and
//! `config show`, which work without a running node.

mod bench;
mod contacts;
mod data;
mod groups;
mod names;
mod output;
mod pairing;
mod run;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use libp2p::Multiaddr;

use crate::{
    config::{self, Config, Role},
    control::{self, ConnectRequest, FindPeerRequest},
    identity::Identity,
    node,
};

#[derive(Debug, Parser)]
#[command(
    name = "commucat",
    version,
    about = "CommuCat peer-to-peer node",
    propagate_version = true
)]
pub struct Cli {
    /// Data directory: identity, database, control files.
    /// [default: $XDG_DATA_HOME/commucat, else ~/.local/share/commucat]
    #[arg(long, global = true, env = "COMMUCAT_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, global = true, env = "COMMUCAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory and this node's identity (an existing identity is kept).
    Init,
    /// Run the node until Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Check the data directory without starting the node: does the database still hold
    /// everything it committed? Exits 1 when it does not (the node would refuse to start).
    Doctor(Output),
    /// Show this node's PeerId and ML-DSA-65 key (reads the data dir; no running node needed).
    Id(Output),
    /// Show the running node's status: addresses, reachability, peers, DHT.
    Status(Output),
    /// List connected peers, one line per connection.
    Peers(Output),
    /// Connect to a peer: a multiaddr ending in /p2p/<id>, or a peer id or @handle looked up in the
    /// DHT.
    Connect {
        /// Peer id, @handle or multiaddr.
        target: String,
        #[command(flatten)]
        output: Output,
    },
    /// Queue a text message for a peer; it is delivered when the peer is reachable.
    Send {
        /// Peer id, @handle or contact label.
        #[arg(value_name = "PEER")]
        peer: control::contacts::Recipient,
        /// The message (UTF-8, at most 64 KiB).
        text: String,
        /// Deliver to this light client of PEER (the client id a received message's
        /// `from_client` shows), through PEER's WebRTC gateway.
        #[arg(long)]
        client: Option<crate::wire::ClientId>,
        #[command(flatten)]
        output: Output,
    },
    /// Messages queued for peers, and recently delivered ones.
    Outbox(Output),
    /// Received messages.
    Inbox {
        /// Only messages after this inbox position (the `seq` of `--json` output).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep running and print new messages as they arrive.
        #[arg(long, short)]
        follow: bool,
        /// Only the messages of this group (id or name).
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Send a file to a peer (RaptorQ blocks, resumed after interruptions), showing progress.
    SendFile {
        /// Peer id, @handle or contact label.
        #[arg(value_name = "PEER")]
        peer: control::contacts::Recipient,
        path: PathBuf,
        /// Return once the file is queued instead of waiting for delivery.
        #[arg(long)]
        no_wait: bool,
        /// Print progress as JSON lines instead of a progress bar.
        #[command(flatten)]
        output: Output,
    },
    /// Outgoing and incoming file transfers.
    Transfers(Output),
    /// Measure throughput and handshake rates on loopback (run with --release).
    Bench(bench::BenchArgs),
    /// Kademlia DHT operations.
    Dht {
        #[command(subcommand)]
        command: DhtCommand,
    },
    /// Names people can type (@handle): claim one for this node, release it, look one up.
    Name {
        #[command(subcommand)]
        command: NameCommand,
    },
    /// The address book: contacts with pinned keys, and their safety numbers.
    Contact {
        #[command(subcommand)]
        command: contacts::Command,
    },
    /// Groups of peers: a signed membership log, messages to every member exactly once.
    Group {
        #[command(subcommand)]
        command: groups::Command,
    },
    /// Pair a light client (a browser, a phone): print a one-time code, the light client's URL
    /// with it, and that URL as a QR code.
    Pair(Output),
    /// Paired light clients; `devices revoke <id>` unpairs one and closes its sessions.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
        #[command(flatten)]
        output: Output,
    },
    /// Bearer tokens of the assist API (for light clients).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DhtCommand {
    /// Find a peer's addresses through the DHT.
    Find {
        /// Peer id, @handle or contact label.
        #[arg(value_name = "PEER")]
        peer: control::contacts::Recipient,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum NameCommand {
    /// Claim a handle for this node (refused while another node holds it or a look-alike).
    Claim {
        handle: crate::names::Handle,
        #[command(flatten)]
        output: Output,
    },
    /// Give up this node's handle.
    Release,
    /// Who holds a handle.
    Resolve {
        handle: crate::names::Handle,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Unpair a device: its token is revoked and its open sessions close at once.
    Revoke {
        id: crate::wire::ClientId,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a token on the running node; the token alone is printed on the last line.
    Issue {
        /// Lifetime in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
        ttl: u64,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a token, given as itself or by its client id.
    Revoke { token_or_id: String },
    /// Issued tokens that have not expired (client ids, never the tokens).
    List(Output),
    /// The SHA-256 of a token, for `assist.token_hashes` (no running node needed).
    Hash { token: String },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults < --config file < COMMUCAT_* env < flags).
    Show(ConfigArgs),
}

#[derive(Debug, Args)]
struct Output {
    /// Machine-readable JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Start even though the database lost state it had committed (`commucat doctor` tells):
    /// the damaged files are kept beside it as `db.damaged-<time>`, peers are asked to send
    /// again what they still have, and no message is shown twice.
    #[arg(long)]
    accept_data_loss: bool,
}

/// Flags that feed the configuration (the strongest layer).
#[derive(Debug, Clone, Args)]
struct ConfigArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node role.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// Listen address (repeatable); replaces `network.listen`.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Address this node is publicly reachable at (repeatable); replaces `network.external_addresses`.
    #[arg(long = "external", value_name = "MULTIADDR")]
    external: Vec<Multiaddr>,
    /// Bootstrap peer, a multiaddr ending in /p2p/<id> (repeatable); replaces `bootstrap.peers`.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Control API address; port 0 picks a free port. [default: 127.0.0.1:5731]
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<SocketAddr>,
    /// Serve assist mode: REST endpoints for light clients, STUN, TURN credentials, /metrics.
    #[arg(long)]
    assist: bool,
    /// Assist API address (HTTP, or HTTPS with assist.tls_cert). [default: 0.0.0.0:8443]
    #[arg(long, value_name = "ADDR")]
    assist_listen: Option<SocketAddr>,
    /// ICE-lite STUN responder address (UDP). [default: 0.0.0.0:3478]
    #[arg(long, value_name = "ADDR")]
    stun_listen: Option<SocketAddr>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let nonempty = |v: &Vec<Multiaddr>| (!v.is_empty()).then(|| v.clone());
        let overrides = config::Overrides {
            role: self.role,
            network: config::NetworkOverrides {
                listen: nonempty(&self.listen),
                external_addresses: nonempty(&self.external),
            },
            bootstrap: config::BootstrapOverrides {
                peers: nonempty(&self.bootstrap),
            },
            control: config::ControlOverrides {
                listen: self.control_listen,
            },
            assist: config::AssistOverrides {
                enabled: self.assist.then_some(true),
                listen: self.assist_listen,
                stun_listen: self.stun_listen,
            },
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

/// Entry point of the binary: parse, set up logging, run the verb, map errors to exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => "info",
        // The bench's throwaway nodes have no peers; kad would warn about it.
        Command::Bench(_) => "error",
        _ => "warn",
    };
    init_tracing(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn data_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => crate::fsutil::default_data_dir()
            .context("cannot tell the default data directory (no HOME); pass --data-dir"),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let dir = data_dir(&cli)?;
    match cli.command {
        Command::Init => init(&dir),
        Command::Run(args) => run::run(&dir, args.config.load()?, args.accept_data_loss).await,
        Command::Doctor(out) => doctor(&dir, out.json),
        Command::Id(out) => {
            let identity = Identity::load(&dir)?.with_context(|| {
                format!(
                    "no identity in {} (create one with `commucat init`)",
                    dir.display()
                )
            })?;
            output::id(&control::Id::new(identity.binding().clone()), out.json)
        }
        Command::Status(out) => {
            let status: control::Status = control::Client::for_data_dir(&dir)?
                .get(control::routes::STATUS)
                .await?;
            output::status(&status, out.json)
        }
        Command::Peers(out) => {
            let peers: Vec<node::PeerInfo> = control::Client::for_data_dir(&dir)?
                .get(control::routes::PEERS)
                .await?;
            output::peers(&peers, out.json)
        }
        Command::Connect {
            target,
            output: out,
        } => connect(&dir, &target, out.json).await,
        Command::Send {
            peer,
            text,
            client,
            output: out,
        } => data::send(&dir, peer, text, client, out.json).await,
        Command::Outbox(out) => data::outbox(&dir, out.json).await,
        Command::Inbox {
            after,
            follow,
            group,
            output: out,
        } => data::inbox(&dir, after, follow, group, out.json).await,
        Command::SendFile {
            peer,
            path,
            no_wait,
            output: out,
        } => data::send_file(&dir, peer, &path, !no_wait, out.json).await,
        Command::Transfers(out) => data::transfers(&dir, out.json).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Dht {
            command: DhtCommand::Find { peer, output: out },
        } => {
            let client = control::Client::for_data_dir(&dir)?;
            let found: node::FoundPeer = client
                .post(
                    control::routes::FIND_PEER,
                    &FindPeerRequest { peer_id: peer },
                )
                .await?;
            output::found(&found, out.json)
        }
        Command::Name { command } => match command {
            NameCommand::Claim { handle, output } => names::claim(&dir, handle, output.json).await,
            NameCommand::Release => names::release(&dir).await,
            NameCommand::Resolve { handle, output } => {
                names::resolve(&dir, handle, output.json).await
            }
        },
        Command::Contact { command } => contacts::run(&dir, command).await,
        Command::Group { command } => groups::run(&dir, command).await,
        Command::Pair(out) => pairing::pair(&dir, out.json).await,
        Command::Devices { command, output } => match command {
            None => pairing::list(&dir, output.json).await,
            Some(DevicesCommand::Revoke { id, output }) => {
                pairing::revoke(&dir, id, output.json).await
            }
        },
        Command::Token { command } => token(&dir, command).await,
        Command::Config {
            command: ConfigCommand::Show(args),
        } => {
            print!("{}", args.load()?.to_toml());
            Ok(())
        }
    }
}

/// `commucat init`: the identity of the data directory, created if there is none.
fn init(dir: &std::path::Path) -> anyhow::Result<()> {
    let (identity, created) = Identity::load_or_create(dir)?;
    if created {
        eprintln!("Created a new identity in {}", dir.display());
    } else {
        eprintln!(
            "An identity already exists in {}; keeping it",
            dir.display()
        );
    }
    println!("{}", identity.peer_id());
    Ok(())
}

/// `commucat connect TARGET`: a peer id or @handle (addresses from the DHT) or a multiaddr ending in
/// its id.
async fn connect(dir: &std::path::Path, target: &str, json: bool) -> anyhow::Result<()> {
    let request = if target.starts_with('/') {
        let addr: Multiaddr = target
            .parse()
            .with_context(|| format!("`{target}` is not a multiaddr"))?;
        if crate::net::peer_id_of(&addr).is_none() {
            bail!("{addr} does not end in /p2p/<peer-id>");
        }
        ConnectRequest {
            peer_id: None,
            addrs: vec![addr],
        }
    } else {
        let to: control::contacts::Recipient = target
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{e}, nor a multiaddr"))?;
        ConnectRequest {
            peer_id: Some(to),
            addrs: Vec::new(),
        }
    };
    let client = control::Client::for_data_dir(dir)?;
    let connected: node::Connected = client.post(control::routes::CONNECT, &request).await?;
    output::connected(&connected, json)
}

async fn token(dir: &std::path::Path, command: TokenCommand) -> anyhow::Result<()> {
    use crate::assist::tokens::{Issued, TokenInfo};
    match command {
        TokenCommand::Hash { token } => {
            println!("{}", crate::assist::tokens::hash_hex(&token));
            Ok(())
        }
        TokenCommand::Issue { ttl, output } => {
            let issued: Issued = control::Client::for_data_dir(dir)?
                .post(
                    control::routes::TOKENS,
                    &control::IssueTokenRequest { ttl_secs: ttl },
                )
                .await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                eprintln!(
                    "Client id {}, valid until {}",
                    issued.info.id,
                    crate::time::rfc3339(issued.info.expires_at)
                );
                println!("{}", issued.token);
            }
            Ok(())
        }
        TokenCommand::Revoke { token_or_id } => {
            let path = format!("{}/{}", control::routes::TOKENS, urlencode(&token_or_id));
            control::Client::for_data_dir(dir)?.delete(&path).await?;
            eprintln!("Revoked");
            Ok(())
        }
        TokenCommand::List(output) => {
            let list: Vec<TokenInfo> = control::Client::for_data_dir(dir)?
                .get(control::routes::TOKENS)
                .await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for t in list {
                    println!("{}  expires {}", t.id, crate::time::rfc3339(t.expires_at));
                }
            }
            Ok(())
        }
    }
}

/// Percent-encodes a path segment (tokens and ids are hex; anything else is encoded).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `commucat doctor`: [`crate::store::Store::check`] on a copy of the database.
fn doctor(dir: &Path, json: bool) -> anyhow::Result<()> {
    use crate::store::{Error, Store};
    match Store::check(dir) {
        Ok(check) => output::doctor_ok(dir, &check, json),
        Err(Error::DataLoss(loss)) => {
            output::doctor_loss(&loss, json)?;
            anyhow::bail!("the database lost committed state; the node will not start on it")
        }
        Err(e) => Err(e.into()),
    }
}
