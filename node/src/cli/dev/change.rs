//! `devicegrid dev add` and `devicegrid dev drain`: changes to a running local grid, recorded
//! in its `dev.json` (the supervisor starts and stops members from it), followed until the
//! grid reports balance.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use devicegrid_proto::views::{ClusterView, MemberView};
use devicegrid_proto::{ErrorBody, MemberState};

use super::{ChangeArgs, DevFile, PEER_PORT_OFFSET};

/// The running grid's `dev.json`, or an error telling to start it.
fn running_grid(dir: &Path) -> anyhow::Result<DevFile> {
    DevFile::read(dir)?.with_context(|| {
        format!(
            "no local grid in {}: start one with `devicegrid dev --data-dir {}`",
            dir.display(),
            dir.display()
        )
    })
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// `GET path` from the first member that answers, as `T`.
async fn get_any<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    file: &DevFile,
    path: &str,
) -> Option<T> {
    for id in file.members() {
        let url = format!("http://127.0.0.1:{}{path}", file.port(id));
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                if let Ok(v) = r.json().await {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// Prints the rebalance every couple of seconds until the grid reports balance.
async fn follow(http: &reqwest::Client, dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let file = running_grid(dir)?;
        if let Some(v) = get_any::<ClusterView>(http, &file, "/v1/cluster").await {
            let counts: Vec<String> = v
                .members
                .iter()
                .filter(|m| m.state != MemberState::Decommissioned)
                .map(|m| {
                    format!(
                        "{}:{}/{}{}",
                        m.id,
                        m.partitions_held,
                        m.partitions_led,
                        if m.state == MemberState::Active {
                            ""
                        } else {
                            "*"
                        }
                    )
                })
                .collect();
            let line = format!(
                "moves {} (finished {}), replicas/leaders per member {}",
                v.balance.moves_in_progress,
                v.balance.moves_finished,
                counts.join(" ")
            );
            if line != last {
                say!("{line}");
                last = line;
            }
            if v.balance.balanced {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the grid was not balanced within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `devicegrid dev add`.
pub(super) async fn add(count: u32, args: ChangeArgs) -> anyhow::Result<()> {
    if !(1..=16).contains(&count) {
        bail!("--count must be between 1 and 16");
    }
    let mut file = running_grid(&args.data_dir)?;
    let http = http()?;
    if get_any::<serde_json::Value>(&http, &file, "/healthz")
        .await
        .is_none()
    {
        bail!(
            "no member of the grid in {} answers: is `devicegrid dev` running?",
            args.data_dir.display()
        );
    }
    let last = file
        .added
        .iter()
        .copied()
        .chain(file.removed.iter().copied())
        .chain([file.layout.nodes])
        .max()
        .unwrap_or(0);
    let ids: Vec<u32> = (last + 1..=last + count).collect();
    if last + count > u32::from(PEER_PORT_OFFSET)
        || u32::from(file.layout.base_port) + u32::from(PEER_PORT_OFFSET) + last + count > 65_535
    {
        bail!("no ports left for members {ids:?}");
    }
    file.added.extend(&ids);
    file.write(&args.data_dir)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        let url = format!("http://127.0.0.1:{}", file.port(*id));
        say!("member {id} added at {url}; the supervisor starts it");
        loop {
            let ready = http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "member {id} was not ready within 60 s; see {}/member-{id}/member.log",
                    args.data_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        say!("member {id} joined");
    }
    say!("rebalancing");
    follow(&http, &args.data_dir, Duration::from_secs(args.timeout)).await?;
    say!("balanced");
    Ok(())
}

/// `devicegrid dev drain ID`.
pub(super) async fn drain(id: u32, args: ChangeArgs) -> anyhow::Result<()> {
    let file = running_grid(&args.data_dir)?;
    if !file.members().contains(&id) {
        bail!("member {id} is not running in {}", args.data_dir.display());
    }
    let http = http()?;
    let mut answer = None;
    for other in file.members().into_iter().filter(|m| *m != id) {
        let url = format!(
            "http://127.0.0.1:{}/v1/members/{id}/drain",
            file.port(other)
        );
        if let Ok(r) = http.post(&url).send().await {
            answer = Some((r.status(), r.text().await.unwrap_or_default()));
            break;
        }
    }
    let Some((status, body)) = answer else {
        bail!("no member of the grid answers: is `devicegrid dev` running?");
    };
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or(body);
        bail!("drain refused ({status}): {message}");
    }
    say!("member {id} is draining");
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let file = running_grid(&args.data_dir)?;
        if let Some(m) = get_any::<MemberView>(&http, &file, &format!("/v1/members/{id}")).await {
            say!(
                "member {id}: {}, {} replicas left",
                m.state,
                m.partitions_held
            );
            if m.state == MemberState::Decommissioned {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("member {id} was not drained within {:?}", args.timeout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut file = running_grid(&args.data_dir)?;
    file.removed.push(id);
    file.write(&args.data_dir)?;
    say!("member {id} decommissioned; the supervisor stops it");
    follow(&http, &args.data_dir, Duration::from_secs(args.timeout)).await?;
    say!("balanced");
    Ok(())
}
