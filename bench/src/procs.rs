//! Starting and stopping the systems under test, and reading their CPU time and memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// CPU time and memory of a set of processes.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// CPU seconds used by each process.
    pub cpu: Vec<f64>,
    /// Resident memory of each process, bytes.
    pub rss: Vec<u64>,
}

impl Usage {
    /// Usage of `pids` now.
    pub fn of(pids: &[u32]) -> anyhow::Result<Self> {
        let tick = 100.0; // USER_HZ on Linux
        let mut u = Usage::default();
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .with_context(|| format!("process {pid}"))?;
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let (utime, stime): (f64, f64) = (
                f.get(11).context("utime")?.parse()?,
                f.get(12).context("stime")?.parse()?,
            );
            u.cpu.push((utime + stime) / tick);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let rss_kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            u.rss.push(rss_kb * 1024);
        }
        Ok(u)
    }

    /// CPU used since `before`; memory as now.
    pub fn since(&self, before: &Usage) -> Usage {
        Usage {
            cpu: self
                .cpu
                .iter()
                .zip(&before.cpu)
                .map(|(a, b)| a - b)
                .collect(),
            rss: self.rss.clone(),
        }
    }

    /// "x% / y% / z% of a core, RSS a / b / c MiB".
    pub fn describe(&self, secs: u64) -> String {
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|c| format!("{:.1}%", 100.0 * c / secs as f64))
            .collect();
        let rss: Vec<String> = self
            .rss
            .iter()
            .map(|r| format!("{}", r / (1024 * 1024)))
            .collect();
        format!(
            "CPU {} of one core per member, RSS {} MiB",
            cpu.join(" / "),
            rss.join(" / ")
        )
    }
}

/// A `devicegrid dev` grid.
pub struct Grid {
    child: Child,
    members: Vec<(u32, String)>,
}

impl Grid {
    /// Starts 3 members under `dir` and waits for `ready`.
    pub async fn start(exe: &Path, dir: &Path, port: u16) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(["dev", "--nodes", "3", "--base-port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir)
            // Members log warnings only, unless DGBENCH_MEMBER_LOG says otherwise (a filter).
            .env(
                "RUST_LOG",
                std::env::var("DGBENCH_MEMBER_LOG")
                    .unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut members = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                // member <id> pid <pid> http://...
                let f: Vec<&str> = line.split_whitespace().collect();
                if let ["member", _, "pid", pid, url] = f.as_slice() {
                    members.push((pid.parse()?, url.to_string()));
                }
                if line == "ready" {
                    return anyhow::Ok(true);
                }
            }
            Ok(false)
        })
        .await;
        // Keep draining stdout so the grid never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match ready {
            Ok(Ok(true)) => Ok(Grid { child, members }),
            Ok(Err(e)) => Err(e),
            _ => bail!("the grid did not get ready; see {}", dir.display()),
        }
    }

    /// Member URLs.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|(_, u)| u.clone()).collect()
    }

    /// Current usage of the members.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&self.members.iter().map(|(p, _)| *p).collect::<Vec<_>>())
    }

    /// SIGINT to `devicegrid dev`, which stops the members.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A 3-member etcd started by the cluster script.
pub struct Etcd {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Etcd {
    /// Builds (if needed) and starts etcd.
    pub async fn start(script: &Path, dir: &Path, port: u16) -> anyhow::Result<Self> {
        let status = Command::new(script)
            .arg("start")
            .arg(dir)
            .arg(port.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("{} start failed: {status}", script.display());
        }
        Ok(Etcd {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
        })
    }

    /// Client URLs.
    pub fn urls(&self) -> Vec<String> {
        (0..3)
            .map(|i| format!("http://127.0.0.1:{}", self.port + i))
            .collect()
    }

    /// Current usage of the members.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let mut pids = Vec::new();
        for i in 0..3 {
            let p = std::fs::read_to_string(self.dir.join(format!("m{i}.pid")))?;
            pids.push(p.trim().parse()?);
        }
        Usage::of(&pids)
    }

    /// Stops the members.
    pub async fn stop(self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .status()
            .await;
    }
}
