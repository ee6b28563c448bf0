//! Hazelcast 5.x as the third system: three members (`io.devicegrid.bench.Member`, one JVM
//! each, on loopback, maps with 2 synchronous backups, in memory) and a load generator on
//! Hazelcast's smart client (`io.devicegrid.bench.Load`), both from `bench/hazelcast`, built by
//! `scripts/hazelcast-bench.sh`. The Java tool runs one cell (the same keys, values, client
//! count and duration as the Rust load generator; a short JIT warm-up first, not counted) and
//! prints one JSON line, read here into an [`Outcome`]. The shadow update is an entry
//! processor on the member that owns the key.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::load::{Op, Outcome};
use crate::procs::Usage;

/// JVM flags of each member: a fixed 1 GiB heap (RSS readings compare across runs) and the
/// module access Hazelcast asks for to run at its best.
const MEMBER_JVM: &[&str] = &[
    "-Xms1g",
    "-Xmx1g",
    "--add-modules",
    "java.se",
    "--add-exports",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.management/sun.management=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
];

/// Three Hazelcast members.
pub struct Hazelcast {
    classpath: String,
    members: String,
    children: Vec<Child>,
    pids: Vec<u32>,
    dir: PathBuf,
}

impl Hazelcast {
    /// Starts members on `port`..`port + 2` with their logs under `dir`; waits until each
    /// sees all three.
    pub async fn start(classpath: &str, dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let members = (0..3)
            .map(|i| format!("127.0.0.1:{}", port + i))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for i in 0..3u16 {
            let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
            let child = Command::new("java")
                .args(MEMBER_JVM)
                .args(["-cp", classpath])
                .arg("io.devicegrid.bench.Member")
                .args(["--port", &(port + i).to_string(), "--members", &members])
                .stdout(Stdio::piped())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting a Hazelcast member (java)")?;
            children.push(child);
        }
        let mut pids = Vec::new();
        for (i, child) in children.iter_mut().enumerate() {
            pids.push(child.id().context("member pid")?);
            let stdout = child.stdout.take().context("stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(Duration::from_secs(120), async {
                while let Some(line) = lines.next_line().await? {
                    if line == "ready" {
                        return anyhow::Ok(true);
                    }
                }
                Ok(false)
            })
            .await;
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            if !matches!(ready, Ok(Ok(true))) {
                bail!(
                    "Hazelcast member {i} did not get ready; see {}",
                    dir.join(format!("m{i}.log")).display()
                );
            }
        }
        Ok(Hazelcast {
            classpath: classpath.to_string(),
            members,
            children,
            pids,
            dir: dir.to_path_buf(),
        })
    }

    /// Current usage of the members.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(&self.pids)
    }

    /// Runs the load generator with `args`; its JSON line.
    async fn load(&self, args: &[String]) -> anyhow::Result<Value> {
        let out = Command::new("java")
            .args(["-cp", &self.classpath, "io.devicegrid.bench.Load"])
            .args(["--members", &self.members])
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running the Hazelcast load generator (java)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        match (out.status.success(), line) {
            (true, Some(l)) => serde_json::from_str(l).with_context(|| format!("its answer: {l}")),
            _ => bail!(
                "the Hazelcast load generator failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Writes every key once.
    pub async fn preload(&self, keys: usize, value_size: usize) -> anyhow::Result<()> {
        let args = [
            "--op".into(),
            "preload".into(),
            "--keys".into(),
            keys.to_string(),
            "--value-size".into(),
            value_size.to_string(),
        ];
        self.load(&args).await.map(|_| ())
    }

    /// One cell.
    pub async fn cell(
        &self,
        op: Op,
        clients: usize,
        keys: usize,
        value_size: usize,
        duration: Duration,
    ) -> anyhow::Result<Outcome> {
        let name = match op {
            Op::Get => "get",
            Op::Put => "put",
            Op::Shadow => "shadow",
        };
        let args = [
            "--op",
            name,
            "--clients",
            &clients.to_string(),
            "--duration",
            &duration.as_secs().to_string(),
            "--keys",
            &keys.to_string(),
            "--value-size",
            &value_size.to_string(),
        ]
        .map(String::from);
        let v = self.load(&args).await?;
        let num = |k: &str| v[k].as_u64().with_context(|| format!("{k} in {v}"));
        Ok(Outcome {
            ops: num("ops")?,
            errors: num("errors")?,
            elapsed: Duration::from_secs_f64(v["seconds"].as_f64().context("seconds")?),
            percentiles: [num("p50_us")?, num("p99_us")?, num("p999_us")?],
            cpu_secs: None,
        })
    }

    /// SIGTERM to each member; killed after 30 s.
    pub async fn stop(mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        eprintln!("   Hazelcast logs in {}", self.dir.display());
    }
}
