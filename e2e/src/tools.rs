//! kubectl, helm and node commands, each with a deadline; a failure carries the command and
//! its output.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::settings::Settings;

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `program args` with `stdin`, killing it after `timeout`.
pub async fn run(
    program: &str,
    args: &[String],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("`{shown}` did not finish within {timeout:?}"))??;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a command that must succeed; returns its standard output.
pub async fn run_ok(program: &str, args: &[String], timeout: Duration) -> Result<String> {
    let out = run(program, args, None, timeout).await?;
    if !out.ok {
        bail!(
            "`{program} {}` failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
    }
    Ok(out.stdout)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// kubectl with a one-minute deadline.
pub async fn kubectl(s: &Settings, args: &[&str]) -> Result<String> {
    run_ok(&s.kubectl, &strings(args), Duration::from_secs(60)).await
}

/// `kubectl apply -f -` of `yaml`: the output, or kubectl's refusal as the error.
pub async fn kubectl_apply(s: &Settings, yaml: &str) -> Result<String> {
    let args = strings(&["apply", "-f", "-"]);
    let out = run(&s.kubectl, &args, Some(yaml), Duration::from_secs(60)).await?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(anyhow!("{}", out.stderr.trim()))
    }
}

/// helm with a five-minute deadline.
pub async fn helm(s: &Settings, args: &[&str]) -> Result<String> {
    run_ok(&s.helm, &strings(args), Duration::from_secs(300)).await
}

/// Runs `script` with `sh -c` on `node` (through `E2E_NODE_EXEC`).
pub async fn on_node(s: &Settings, node: &str, script: &str) -> Result<String> {
    let mut argv: Vec<String> = s
        .node_exec
        .iter()
        .map(|a| a.replace("{node}", node))
        .collect();
    argv.extend(strings(&["sh", "-c", script]));
    let (program, args) = argv.split_first().context("empty node command")?;
    run_ok(program, args, Duration::from_secs(60)).await
}
