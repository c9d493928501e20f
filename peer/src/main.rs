//! `peer <SERVER_IP> <SERVER_PORT> [--dir DIR] [--up-limit RATE] [--down-limit RATE]
//! [--tracker-fingerprint SHA256:...] [--insecure-plaintext]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

/// swarmchat client: chat through the tracker, privately with peers, and share files.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The tracker's address (an IP address or host name).
    server_ip: String,
    /// The tracker's port.
    server_port: u16,
    /// Your folder: files you share and files you download.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Most bytes per second to upload, across all transfers (e.g. 500K, 5M).
    #[arg(long, value_name = "RATE")]
    up_limit: Option<peer::ratelimit::Rate>,
    /// Most bytes per second to download, across all transfers (e.g. 500K, 5M).
    #[arg(long, value_name = "RATE")]
    down_limit: Option<peer::ratelimit::Rate>,
    /// Accept only a tracker whose key has this fingerprint (`tracker fingerprint` prints
    /// it), instead of trusting the key it presents the first time.
    #[arg(long, value_name = "SHA256:...")]
    tracker_fingerprint: Option<link::Fingerprint>,
    /// No encryption, to the tracker or to other peers: passwords, messages and files
    /// cross the network in clear. Only against a tracker started with the same option,
    /// for benchmarks and debugging on a trusted network.
    #[arg(long, conflicts_with = "tracker_fingerprint")]
    insecure_plaintext: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error. {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.dir.is_dir() {
        bail!("--dir {} is not a folder", args.dir.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        let server = tokio::net::lookup_host((args.server_ip.as_str(), args.server_port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("cannot resolve server address {}", args.server_ip))?;
        let mut term = peer::terminal::Terminal::start();
        let limits = peer::session::Limits {
            down: args.down_limit,
            up: args.up_limit,
        };
        let server = peer::session::Server {
            addr: server,
            security: if args.insecure_plaintext {
                link::Security::Plaintext
            } else {
                link::Security::Encrypted
            },
            pinned: args.tracker_fingerprint,
        };
        let code = peer::session::run(server, &args.dir, limits, &mut term).await;
        Ok(code)
    });
    // A `register` still reading a huge file, or a disk that stopped answering, must not
    // keep a user who logged out waiting: blocking work gets a moment, then the process
    // exits around it (nothing it could still do is needed: what is not recorded as
    // verified is fetched again). The terminal reader thread may still be blocked in a
    // read, so leave through process exit rather than waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
