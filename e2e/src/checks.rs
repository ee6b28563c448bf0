//! What the suite checks after each step: a settled grid (as the grid itself reports it and
//! as the DeviceGrid's status does), a pod back after a restart, and every acknowledged write
//! and every device intact after a disturbance.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use devicegrid_operator::crd::DeviceGrid;
use devicegrid_operator::status::Phase;
use devicegrid_proto::MemberState;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::ResourceExt;
use serde_json::Value;

use crate::diag::Diag;
use crate::grid::{Grid, Writer, WriterLog};
use crate::wait::{step, until};

/// The grid's status as one line, for "last observed".
pub fn summary(dg: &DeviceGrid) -> String {
    let Some(s) = &dg.status else {
        return "no status yet".into();
    };
    let conditions: Vec<String> = s
        .conditions
        .iter()
        .map(|c| format!("{}={}({})", c.type_, c.status, c.reason))
        .collect();
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| format!("{}:{}:{}", m.id, m.state, m.partitions_held))
        .collect();
    format!(
        "phase {:?}, ready {}/{}, {}, members [{}], partitions {:?}",
        s.phase,
        s.ready_replicas,
        s.replicas,
        conditions.join(" "),
        members.join(" "),
        s.partitions
    )
}

/// Whether condition `type_` of the grid holds.
pub fn holds(dg: &DeviceGrid, type_: &str) -> bool {
    dg.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// Waits until the grid runs `n` ready, active members, balanced, nothing under-replicated:
/// as the grid itself reports it now (`GET /v1/cluster`) and in the status of the
/// DeviceGrid `name`.
pub async fn settled(
    diag: &Diag,
    grids: &Api<DeviceGrid>,
    name: &str,
    grid: &Grid,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    until(
        diag,
        timeout,
        &format!("a settled grid of {n} members"),
        || async {
            let view = grid.cluster().await.map_err(|e| format!("grid: {e:#}"))?;
            let active: Vec<_> = view
                .members
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .collect();
            let grid_ok = active.len() == n
                && active.iter().all(|m| m.ready && m.partitions_held > 0)
                && view.balance.balanced
                && view.partitions.under_replicated == 0
                && view.partitions.without_leader == 0;
            if !grid_ok {
                return Err(format!(
                    "grid: {} active of {} members, balanced {}, partitions {:?}",
                    active.len(),
                    view.members.len(),
                    view.balance.balanced,
                    view.partitions
                ));
            }
            let dg = grids.get(name).await.map_err(|e| e.to_string())?;
            let s = dg.status.clone().unwrap_or_default();
            let active = s
                .members
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .count();
            let spread = s
                .members
                .iter()
                .all(|m| m.state != MemberState::Active || m.partitions_held > 0);
            let healthy = s.partitions.as_ref().is_some_and(|p| {
                p.under_replicated == 0 && p.without_leader == 0 && p.moves_in_progress == 0
            });
            let ok = s.phase.as_deref() == Some(Phase::Running.as_str())
                && s.ready_replicas == n as i32
                && active == n
                && spread
                && healthy
                && holds(&dg, "Available")
                && !holds(&dg, "Rebalancing")
                && s.observed_generation == dg.metadata.generation;
            if ok {
                Ok(())
            } else {
                Err(summary(&dg))
            }
        },
    )
    .await
}

/// Waits until pod `name` is ready with more restarts than `restarts` (or a new uid).
pub async fn back(
    diag: &Diag,
    pods: &Api<Pod>,
    name: &str,
    uid: &str,
    restarts: i32,
) -> Result<()> {
    until(
        diag,
        Duration::from_secs(300),
        &format!("pod {name} back and ready"),
        || async {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            let status = pod.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let count = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum::<i32>();
            let renewed = pod.uid().as_deref() != Some(uid) || count > restarts;
            if ready && renewed {
                Ok(())
            } else {
                Err(format!(
                    "ready {ready}, restarts {count}, same pod {}",
                    !renewed
                ))
            }
        },
    )
    .await
}

/// What "nothing was lost" is checked against.
pub struct Intact<'a> {
    /// Where to look when a check fails.
    pub diag: &'a Diag,
    /// The DeviceGrids of the grid's namespace.
    pub grids: &'a Api<DeviceGrid>,
    /// The DeviceGrid's name.
    pub name: &'a str,
    /// The grid's API.
    pub grid: &'a Grid,
    /// Every device written before the disturbances, with its value.
    pub devices: &'a BTreeMap<String, Value>,
}

impl Intact<'_> {
    /// After a disturbance: the grid settles at `n` members, the writer stops, and every
    /// write it had acknowledged, and every device, reads back intact.
    pub async fn after(
        &self,
        writer: Writer,
        n: usize,
        timeout: Duration,
        what: &str,
    ) -> Result<()> {
        settled(self.diag, self.grids, self.name, self.grid, n, timeout).await?;
        // The grid kept taking writes while it was disturbed, not only once it had settled.
        let during = writer.acked();
        let log = writer.stop().await?;
        ensure!(
            during > 0,
            "no write was acknowledged during {what} before the grid settled"
        );
        show_writer(&log, what);
        let writes = self.grid.verify(&log.acked).await;
        step(
            self.diag,
            &format!("writes acknowledged during {what}"),
            writes,
        )
        .await?;
        let read = self.grid.verify(self.devices).await;
        step(self.diag, &format!("devices after {what}"), read).await
    }
}

/// Prints what a writer did during `what`.
pub fn show_writer(log: &WriterLog, what: &str) {
    eprintln!(
        "e2e: writer during {what}: {} acknowledged, {} failed or unknown {:?}",
        log.acked.len(),
        log.failed,
        log.errors
    );
}
