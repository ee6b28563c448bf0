//! The status a grid shows: its phase and conditions, built from what one reconcile pass
//! observed and did. Pure functions, so every phase and condition is tested here rather than
//! only against an API server.
//!
//! Conditions: `Available` (some member ready and every partition led), `Progressing` (a
//! scale step or a roll under way), `Rebalancing` (the grid is moving replicas) and
//! `Degraded` (something needs a person: a refused or stalled drain, a retired member inside
//! the desired size, under-replicated partitions, a grid that does not answer, a failed
//! pass). A condition's transition time moves only when its status or reason does.

use std::time::Duration;

use devicegrid_proto::views::ClusterView;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::builders::{self, Names};
use crate::crd::{DeviceGrid, DeviceGridStatus, MemberStatus, PartitionStatus};
use crate::decisions::ScaleStep;

/// The phase of a grid (`status.phase`), most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A `Degraded` condition holds.
    Degraded,
    /// No member pod is ready.
    Pending,
    /// Pods are being replaced with a new revision.
    Upgrading,
    /// Members are being added or drained and removed (or a new template is not yet
    /// observed).
    Scaling,
    /// The grid is moving replicas between members.
    Rebalancing,
    /// Nothing to do.
    Running,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 6] = [
        Phase::Degraded,
        Phase::Pending,
        Phase::Upgrading,
        Phase::Scaling,
        Phase::Rebalancing,
        Phase::Running,
    ];

    /// The phase a status names (`None`: none, or one this version does not know).
    pub fn parse(phase: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == phase)
    }

    /// The phase as written to the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Degraded => "Degraded",
            Phase::Pending => "Pending",
            Phase::Upgrading => "Upgrading",
            Phase::Scaling => "Scaling",
            Phase::Rebalancing => "Rebalancing",
            Phase::Running => "Running",
        }
    }
}

/// Where a roll stands after a pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roll {
    /// The StatefulSet controller has not yet observed the latest template, so which pods
    /// are outdated is not known yet.
    pub unobserved: bool,
    /// Pods not on the StatefulSet's update revision.
    pub outdated: usize,
    /// The ordinal whose pod this pass deleted.
    pub replaced: Option<i32>,
}

/// What one reconcile pass observed and did: the input of [`build`].
pub struct Observed<'a> {
    /// The grid, with the status the previous pass wrote (transition times are kept from it).
    pub grid: &'a DeviceGrid,
    /// Names of its children.
    pub names: &'a Names,
    /// The StatefulSet as applied in this pass.
    pub sts: &'a StatefulSet,
    /// The grid's own view; `None` when its admin API did not answer.
    pub view: Option<&'a ClusterView>,
    /// The scale step this pass took.
    pub step: &'a ScaleStep,
    /// The grid's message when it refused to drain the member of a [`ScaleStep::Drain`].
    pub drain_refused: Option<&'a str>,
    /// Where a roll stands.
    pub roll: &'a Roll,
}

/// `Progressing` while draining: how [`draining_for`] finds when the drain started.
const DRAINING: &str = "Draining";

/// The grid's status after a pass.
pub fn build(o: &Observed<'_>) -> DeviceGridStatus {
    let (view, step, roll) = (o.view, o.step, o.roll);
    let s = o.sts.status.as_ref();
    let ready = s.and_then(|s| s.ready_replicas).unwrap_or(0);
    let replicas = s.map(|s| s.replicas).unwrap_or(0);
    let under = view.map(|v| v.partitions.under_replicated);
    let leaderless = view.map(|v| v.partitions.without_leader);
    let rebalancing = view.is_some_and(|v| !v.balance.balanced);
    let (progressing, reason, message) = progress(o.names, step, roll);
    let stalled = matches!(step, ScaleStep::WaitForDrain { stalled: true, .. });
    // A member inside the desired size that is leaving (a scale-down reverted mid-drain)
    // serves nothing and cannot come back: the grid only moves members forward.
    let desired = u64::try_from(o.grid.spec.replicas).unwrap_or(0);
    let retired = view.and_then(|v| {
        v.members.iter().find(|m| {
            m.id <= desired
                && m.state.retiring()
                && matches!(step, ScaleStep::Steady | ScaleStep::Grow { .. })
        })
    });
    let degraded = if let Some(m) = o.drain_refused {
        Some(("DrainRefused", m.to_string()))
    } else if stalled {
        Some((
            "DrainStalled",
            "the drain has made no progress in time".to_string(),
        ))
    } else if let Some(m) = retired {
        Some((
            "MemberRetired",
            format!(
                "member {} is {} although the desired size includes it; it holds and takes no replicas",
                m.id, m.state
            ),
        ))
    } else if under.is_some_and(|u| u > 0) && roll.outdated == 0 {
        // (During a roll, the replaced pod's replicas are expected to catch up.)
        Some((
            "UnderReplicated",
            format!("{} partitions under-replicated", under.unwrap_or(0)),
        ))
    } else if view.is_none() && ready > 0 {
        Some((
            "GridUnreachable",
            "the grid's admin API does not answer".to_string(),
        ))
    } else {
        None
    };
    let available = ready > 0 && leaderless == Some(0);
    let old = o.grid.status.as_ref().map_or(&[][..], |s| &s.conditions);
    let conditions = vec![
        condition(
            "Available",
            available,
            if available {
                "PartitionsLed"
            } else {
                "NotReady"
            },
            format!("{ready} of {replicas} members ready"),
            old,
        ),
        condition("Progressing", progressing, reason, message, old),
        condition(
            "Rebalancing",
            rebalancing,
            if rebalancing {
                "MovesInProgress"
            } else {
                "Balanced"
            },
            view.map_or("unknown".into(), |v| {
                format!("{} moves in progress", v.balance.moves_in_progress)
            }),
            old,
        ),
        condition(
            "Degraded",
            degraded.is_some(),
            degraded.as_ref().map_or("Healthy", |d| d.0),
            degraded.as_ref().map_or(String::new(), |d| d.1.clone()),
            old,
        ),
    ];
    let phase = if degraded.is_some() {
        Phase::Degraded
    } else if ready == 0 {
        Phase::Pending
    } else if progressing && reason == "Rolling" {
        Phase::Upgrading
    } else if progressing {
        Phase::Scaling
    } else if rebalancing {
        Phase::Rebalancing
    } else {
        Phase::Running
    };
    DeviceGridStatus {
        observed_generation: o.grid.metadata.generation,
        phase: Some(phase.as_str().into()),
        replicas,
        ready_replicas: ready,
        selector: Some(builders::selector_string(o.names)),
        conditions,
        members: view.map_or_else(Vec::new, |v| {
            v.members
                .iter()
                .map(|m| MemberStatus {
                    id: m.id,
                    state: m.state,
                    ready: m.ready,
                    partitions_held: m.partitions_held as u64,
                    partitions_led: m.partitions_led as u64,
                })
                .collect()
        }),
        partitions: view.map(|v| PartitionStatus {
            count: u64::from(v.partitions.count),
            under_replicated: v.partitions.under_replicated as u64,
            without_leader: v.partitions.without_leader as u64,
            moves_in_progress: v.balance.moves_in_progress as u64,
        }),
    }
}

/// (progressing, reason, message) of the `Progressing` condition.
fn progress(names: &Names, step: &ScaleStep, roll: &Roll) -> (bool, &'static str, String) {
    match step {
        ScaleStep::Steady if roll.unobserved => (
            true,
            "Updating",
            "waiting for the StatefulSet controller to observe the new template".to_string(),
        ),
        ScaleStep::Steady if roll.outdated > 0 => (
            true,
            "Rolling",
            match roll.replaced {
                Some(o) => format!(
                    "replacing pod {}-{o}; {} pods on the old revision",
                    names.main(),
                    roll.outdated
                ),
                None => format!(
                    "{} pods on the old revision; the next is replaced once every pod is ready and every partition fully replicated",
                    roll.outdated
                ),
            },
        ),
        ScaleStep::Steady => (
            false,
            "Steady",
            "the StatefulSet has the desired size".into(),
        ),
        ScaleStep::Grow { to } => (true, "ScalingUp", format!("raising members to {to}")),
        ScaleStep::Drain { member } | ScaleStep::WaitForGrid { member } => (
            true,
            DRAINING,
            format!("draining member {member} before removing its pod"),
        ),
        ScaleStep::WaitForDrain { member, left, .. } => (
            true,
            DRAINING,
            format!("member {member} is draining, {left} replicas left"),
        ),
        ScaleStep::Shrink { member, to } => (
            true,
            "ScalingDown",
            format!("member {member} holds no replicas; shrinking to {to}"),
        ),
    }
}

/// The status after a failed pass: the previous one with `Degraded`/`ReconcileFailed`
/// holding, saying `message`.
pub fn failed(old: &DeviceGridStatus, message: String) -> DeviceGridStatus {
    let mut status = old.clone();
    let failed = condition(
        "Degraded",
        true,
        "ReconcileFailed",
        message,
        &old.conditions,
    );
    match status.conditions.iter_mut().find(|c| c.type_ == "Degraded") {
        Some(c) => *c = failed,
        None => status.conditions.push(failed),
    }
    status.phase = Some(Phase::Degraded.as_str().into());
    status
}

/// How long the current drain has been running, from when `Progressing` turned `Draining`
/// in the previous status (`None`: no drain, or one that started in the future).
pub fn draining_for(old: &DeviceGridStatus, now: Timestamp) -> Option<Duration> {
    let since = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.reason == DRAINING)?;
    let secs = now.as_second() - since.last_transition_time.0.as_second();
    u64::try_from(secs).ok().map(Duration::from_secs)
}

/// What a status is about, for Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headline {
    /// Whether it is a warning (a `Degraded` cause).
    pub warning: bool,
    /// The Event's reason: one per cause.
    pub reason: String,
    /// The Event's note.
    pub note: String,
}

/// The reason and message of the `Degraded` condition when it holds, else of `Progressing`
/// when it holds, else the phase. An Event is published when the reason changes (kube's
/// recorder folds repeats of a reason into a series, so each cause gets a reason of its own).
pub fn headline(status: &DeviceGridStatus) -> Headline {
    let holds = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    let of = |warning: bool, c: &Condition| Headline {
        warning,
        reason: c.reason.clone(),
        note: c.message.clone(),
    };
    if let Some(c) = holds("Degraded") {
        of(true, c)
    } else if let Some(c) = holds("Progressing") {
        of(false, c)
    } else {
        Headline {
            warning: false,
            reason: status.phase.clone().unwrap_or_default(),
            note: holds("Available")
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        }
    }
}

/// A condition, keeping the transition time of the same one in `old`.
fn condition(type_: &str, ok: bool, reason: &str, message: String, old: &[Condition]) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since.unwrap_or_else(|| Time(Timestamp::now())),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests;
