//! `devicegrid dev`: a local grid of `--nodes` members, each a child process running
//! `devicegrid serve`, on 127.0.0.1 ports `base-port .. base-port+N-1` (client API) and
//! `base-port+100 ..` (peer traffic, mutual TLS with certificates the members issue
//! themselves from a CA this command makes once, in `DATA_DIR/pki`).
//!
//! Members keep their data under `DATA_DIR/member-<id>` and log to `member.log` there, so
//! running the same command again resumes the same grid. SIGINT or SIGTERM stops every member
//! with SIGTERM (SIGKILL after a grace period).
//!
//! `devicegrid dev add` and `devicegrid dev drain <id>`, run next to a running `dev`, change
//! its members: they record the change in `DATA_DIR/dev.json`, which the supervisor watches
//! (it starts added members, which join the grid, and stops decommissioned ones), and they
//! follow the rebalance until it is done.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// Prints a line to stdout, ignoring a closed pipe: losing the terminal must not take the
/// supervisor (and with it every member) down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

// After the macro: the module uses it.
mod change;

use change::{add, drain};

/// Flags of `devicegrid dev`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    /// Change the members of a running local grid.
    #[command(subcommand)]
    action: Option<DevAction>,
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Where the members keep their data.
    #[arg(long, default_value = ".devicegrid")]
    data_dir: PathBuf,
    /// HTTP port of member 1; member i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Partitions of a new grid.
    #[arg(long, default_value_t = 271)]
    partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// How long to wait for every member to be ready, seconds.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
}

/// Changes to a running local grid.
#[derive(clap::Subcommand, Debug)]
enum DevAction {
    /// Start more members; they join the grid and receive their share of partitions.
    Add {
        /// How many members to add.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Move every replica off member ID, then stop it.
    Drain {
        /// The member to drain.
        id: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(clap::Args, Debug)]
struct ChangeArgs {
    /// The data directory of the running `devicegrid dev`.
    #[arg(long, default_value = ".devicegrid")]
    data_dir: PathBuf,
    /// How long to follow the rebalance, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// What a dev data directory was created with.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Layout {
    nodes: u32,
    base_port: u16,
    partitions: u32,
    replication_factor: u32,
}

/// `dev.json`: the layout, and the members added and removed since.
#[derive(Debug, Serialize, Deserialize)]
struct DevFile {
    #[serde(flatten)]
    layout: Layout,
    /// Members added by `dev add` (ids above `nodes`).
    #[serde(default)]
    added: Vec<u32>,
    /// Members drained by `dev drain` and stopped.
    #[serde(default)]
    removed: Vec<u32>,
}

impl DevFile {
    fn path(dir: &Path) -> PathBuf {
        dir.join("dev.json")
    }

    fn read(dir: &Path) -> anyhow::Result<Option<DevFile>> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written to a temporary file and renamed, so a reader never sees half of it.
    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("dev.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, Self::path(dir))?;
        Ok(())
    }

    /// Members that should run.
    fn members(&self) -> Vec<u32> {
        (1..=self.layout.nodes)
            .chain(self.added.iter().copied())
            .filter(|id| !self.removed.contains(id))
            .collect()
    }

    fn port(&self, id: u32) -> u16 {
        self.layout.base_port + (id - 1) as u16
    }

    fn peer_port(&self, id: u32) -> u16 {
        self.port(id) + PEER_PORT_OFFSET
    }
}

/// Member i's peer port is its client port plus this; so at most this many members.
const PEER_PORT_OFFSET: u16 = 100;

struct Member {
    id: u32,
    port: u16,
    child: Child,
    running: bool,
}

fn check_layout(dir: &Path, layout: Layout) -> anyhow::Result<DevFile> {
    match DevFile::read(dir)? {
        Some(stored) if stored.layout != layout => bail!(
            "{} holds a grid created with {:?}; run with the same flags, or use another --data-dir",
            dir.display(),
            stored.layout
        ),
        Some(stored) => Ok(stored),
        None => {
            let file = DevFile {
                layout,
                added: Vec::new(),
                removed: Vec::new(),
            };
            file.write(dir)?;
            Ok(file)
        }
    }
}

/// Runs the local grid until SIGINT or SIGTERM, or changes it (`add`, `drain`).
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    match args.action {
        Some(DevAction::Add { count, change }) => return add(count, change).await,
        Some(DevAction::Drain { id, change }) => return drain(id, change).await,
        None => {}
    }
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    if u32::from(args.base_port) + u32::from(PEER_PORT_OFFSET) + args.nodes > 65_535 {
        bail!(
            "--base-port {} leaves no room for {} members",
            args.base_port,
            args.nodes
        );
    }
    let layout = Layout {
        nodes: args.nodes,
        base_port: args.base_port,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
    };
    let file = check_layout(&args.data_dir, layout)?;
    let pki = args.data_dir.join("pki");
    if !pki.join("ca.crt").exists() {
        let ca = devicegrid_pki::new_ca(DEV_CLUSTER, devicegrid_pki::days(3650))?;
        super::certs::write_pair(&pki, "ca", &ca)?;
    }
    let launcher = Launcher {
        pki,
        exe: std::env::current_exe().context("locating the devicegrid binary")?,
        data_dir: args.data_dir.clone(),
        seeds: (1..=args.nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", file.peer_port(i)))
            .collect::<Vec<_>>()
            .join(","),
        partitions: args.partitions,
        replication_factor: args.replication_factor,
    };
    // Caught from now on: a signal right after `ready` is printed still stops the grid.
    let mut signals = super::Signals::catch();
    let mut members = Vec::new();
    for id in file.members() {
        members.push(launcher.start(id, file.port(id), file.peer_port(id))?);
    }
    let ready = tokio::select! {
        r = wait_ready(&members, Duration::from_secs(args.ready_timeout)) => r,
        _ = signals.recv() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = ready {
        stop_all(&mut members).await;
        return Err(e.context(format!(
            "see the member logs under {}",
            args.data_dir.display()
        )));
    }
    say!("ready");
    let first = format!("http://127.0.0.1:{}", args.base_port);
    say!("# try:");
    say!(
        "#   curl -X PUT {first}/v1/maps/devices/dev-1 -d '{{\"model\":\"t1000\",\"fw\":\"1.0\"}}'"
    );
    say!("#   curl {first}/v1/maps/devices/dev-1");
    say!("#   curl -X POST {first}/v1/maps/shadows/dev-1/process -d '{{\"processor\":\"shadow\",\"args\":{{\"state\":{{\"desired\":{{\"led\":\"on\"}}}}}}}}'");
    say!("#   curl {first}/v1/cluster");
    say!("#   devicegrid dev add / devicegrid dev drain <id>   (grow or shrink this grid)");
    say!(
        "# logs: {}/member-<id>/member.log; Ctrl-C stops the grid",
        args.data_dir.display()
    );
    supervise(&launcher, &mut members, &mut signals).await;
    Ok(())
}

/// The cluster name of local grids.
const DEV_CLUSTER: &str = "devicegrid";

/// Starts member processes.
struct Launcher {
    /// Holds the CA (`ca.crt`, `ca.key`) members issue their peer certificates from.
    pki: PathBuf,
    exe: PathBuf,
    data_dir: PathBuf,
    seeds: String,
    partitions: u32,
    replication_factor: u32,
}

impl Launcher {
    fn start(&self, id: u32, port: u16, peer_port: u16) -> anyhow::Result<Member> {
        let dir = self.data_dir.join(format!("member-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("member.log"))
            .with_context(|| format!("opening {}", dir.join("member.log").display()))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
            .args(["--cluster-name", DEV_CLUSTER])
            .arg("--peer-ca")
            .arg(self.pki.join("ca.crt"))
            .arg("--peer-ca-key")
            .arg(self.pki.join("ca.key"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--initial-members", &self.seeds])
            .args(["--partitions", &self.partitions.to_string()])
            .args(["--replication-factor", &self.replication_factor.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting a member")?;
        let pid = child.id().unwrap_or_default();
        say!("member {id} pid {pid} http://127.0.0.1:{port}");
        Ok(Member {
            id,
            port,
            child,
            running: true,
        })
    }
}

async fn wait_ready(members: &[Member], timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Member> = members.iter().collect();
    while !pending.is_empty() {
        if Instant::now() > deadline {
            let ids: Vec<u32> = pending.iter().map(|m| m.id).collect();
            bail!("members {ids:?} were not ready within {timeout:?}");
        }
        let mut still = Vec::new();
        for m in pending {
            let url = format!("http://127.0.0.1:{}/readyz", m.port);
            let ok = http
                .get(url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if !ok {
                still.push(m);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Watches the members and `dev.json` until SIGINT or SIGTERM.
async fn supervise(launcher: &Launcher, members: &mut Vec<Member>, signals: &mut super::Signals) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            _ = signals.recv() => {
                say!("stopping");
                stop_all(members).await;
                say!("stopped");
                return;
            }
            _ = tick.tick() => {}
        }
        for m in members.iter_mut().filter(|m| m.running) {
            if let Ok(Some(status)) = m.child.try_wait() {
                m.running = false;
                say!("member {} exited: {status}", m.id);
            }
        }
        let file = match DevFile::read(&launcher.data_dir) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                say!("ignoring dev.json: {e:#}");
                continue;
            }
        };
        let wanted = file.members();
        for id in &wanted {
            if !members.iter().any(|m| m.id == *id) {
                match launcher.start(*id, file.port(*id), file.peer_port(*id)) {
                    Ok(m) => members.push(m),
                    Err(e) => say!("member {id} did not start: {e:#}"),
                }
            }
        }
        for m in members.iter_mut() {
            if m.running && !wanted.contains(&m.id) {
                stop_one(m).await;
                say!("member {} stopped", m.id);
            }
        }
        if members.iter().all(|m| !m.running) {
            say!("every member has exited");
            return;
        }
    }
}

/// Stops every running member at once (each with its own grace period).
async fn stop_all(members: &mut [Member]) {
    let stops = members.iter_mut().filter(|m| m.running).map(stop_one);
    futures::future::join_all(stops).await;
}

/// SIGTERM, then SIGKILL after a grace period.
async fn stop_one(m: &mut Member) {
    if let Some(pid) = m.child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(15), m.child.wait())
        .await
        .is_err()
    {
        let _ = m.child.kill().await;
    }
    m.running = false;
}
