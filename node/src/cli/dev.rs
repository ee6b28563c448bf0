//! `devicegrid dev`: a local grid of `--nodes` members, each a child process running
//! `devicegrid serve`, on 127.0.0.1 ports `base-port .. base-port+N-1`.
//!
//! Members keep their data under `DATA_DIR/member-<id>` and log to `member.log` there, so
//! running the same command again resumes the same grid. SIGINT or SIGTERM stops every member
//! with SIGTERM (SIGKILL after a grace period).

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

/// Flags of `devicegrid dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
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

/// What a dev data directory was created with.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Layout {
    nodes: u32,
    base_port: u16,
    partitions: u32,
    replication_factor: u32,
}

struct Member {
    id: u32,
    port: u16,
    child: Child,
    running: bool,
}

fn check_layout(dir: &Path, layout: &Layout) -> anyhow::Result<()> {
    let path = dir.join("dev.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: Layout = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            if &stored != layout {
                bail!(
                    "{} holds a grid created with {:?}; run with the same flags, or use another --data-dir",
                    dir.display(),
                    stored
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, serde_json::to_vec_pretty(layout)?)?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    Ok(())
}

/// Runs the local grid until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    if u32::from(args.base_port) + args.nodes > 65_535 {
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
    check_layout(&args.data_dir, &layout)?;
    let exe = std::env::current_exe().context("locating the devicegrid binary")?;
    let port = |i: u32| args.base_port + (i - 1) as u16;
    let seeds: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", port(i)))
        .collect();
    let mut members = Vec::new();
    for id in 1..=args.nodes {
        let dir = args.data_dir.join(format!("member-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("member.log"))
            .with_context(|| format!("opening {}", dir.join("member.log").display()))?;
        let child = Command::new(&exe)
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", port(id))])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--initial-members", &seeds.join(",")])
            .args(["--partitions", &args.partitions.to_string()])
            .args(["--replication-factor", &args.replication_factor.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting a member")?;
        let pid = child.id().unwrap_or_default();
        say!("member {id} pid {pid} http://127.0.0.1:{}", port(id));
        members.push(Member {
            id,
            port: port(id),
            child,
            running: true,
        });
    }
    let ready = tokio::select! {
        r = wait_ready(&members, Duration::from_secs(args.ready_timeout)) => r,
        _ = super::wait_for_signal() => Err(anyhow::anyhow!("interrupted")),
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
    say!(
        "# logs: {}/member-<id>/member.log; Ctrl-C stops the grid",
        args.data_dir.display()
    );
    supervise(&mut members).await;
    Ok(())
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

async fn supervise(members: &mut [Member]) {
    loop {
        let exited = async {
            loop {
                for m in members.iter_mut().filter(|m| m.running) {
                    if let Ok(Some(status)) = m.child.try_wait() {
                        m.running = false;
                        return Some((m.id, status));
                    }
                }
                if members.iter().all(|m| !m.running) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = super::wait_for_signal() => {
                say!("stopping");
                stop_all(members).await;
                say!("stopped");
                return;
            }
            e = exited => match e {
                Some((id, status)) => say!("member {id} exited: {status}"),
                None => {
                    say!("every member has exited");
                    return;
                }
            },
        }
    }
}

async fn stop_all(members: &mut [Member]) {
    for m in members.iter().filter(|m| m.running) {
        if let Some(pid) = m.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for m in members.iter_mut().filter(|m| m.running) {
        if tokio::time::timeout(Duration::from_secs(15), m.child.wait())
            .await
            .is_err()
        {
            let _ = m.child.kill().await;
        }
        m.running = false;
    }
}
