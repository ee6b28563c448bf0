//! The reconciler: one pass brings a grid's children in line with its spec and writes what
//! it observed to the status subresource.
//!
//! A pass (a) applies the ServiceAccount, ConfigMap, Services and PDB with server-side
//! apply; (b) reads the grid's own view (`GET /v1/cluster` through the client Service);
//! (c) takes one scale step ([`decisions::scale_step`]): raise the StatefulSet, or drain the
//! highest member through the grid and shrink only once it is decommissioned; (d) rolls one
//! outdated pod when the grid is fully replicated; (e) writes the status and publishes an
//! Event when the phase changes. Passes are level-triggered and idempotent; a pass that
//! changed something is followed by another a few seconds later.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::builders::{self, Names};
use crate::crd::{DeviceGrid, DeviceGridStatus, MemberStatus, PartitionStatus};
use crate::decisions::{self, GridMember, PodState, ScaleStep};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "devicegrid-operator";

/// Errors of one reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building a child failed.
    #[error(transparent)]
    Build(#[from] crate::Error),
    /// The Kubernetes API refused or failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The grid's admin API failed.
    #[error("grid: {0}")]
    Grid(String),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Build(e) => e.metric_label(),
            Error::Kube(_) => "kubernetes",
            Error::Grid(_) => "grid",
        }
    }
}

/// How the operator reaches a grid's admin API.
#[derive(Clone)]
pub struct GridApi {
    http: reqwest::Client,
    /// URL with `{name}` and `{namespace}`, e.g. `http://{name}.{namespace}.svc:7001`.
    pub url_template: String,
}

/// The part of `GET /v1/cluster` the operator uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ClusterView {
    /// Members.
    pub members: Vec<ViewMember>,
    /// Partition health.
    pub partitions: ViewPartitions,
    /// Balance.
    pub balance: ViewBalance,
}

/// A member in [`ClusterView`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ViewMember {
    /// Member id.
    pub id: u64,
    /// Lifecycle state.
    pub state: String,
    /// Ready.
    pub ready: bool,
    /// Replicas held.
    pub partitions_held: u64,
    /// Partitions led.
    pub partitions_led: u64,
}

/// Partition health in [`ClusterView`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ViewPartitions {
    /// Partitions.
    pub count: u64,
    /// Under-replicated partitions.
    pub under_replicated: u64,
    /// Partitions without a leader.
    pub without_leader: u64,
}

/// Balance in [`ClusterView`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ViewBalance {
    /// Balanced.
    pub balanced: bool,
    /// Moves in progress.
    pub moves_in_progress: u64,
    /// Moves stalled.
    pub moves_stalled: u64,
}

/// The answer to a drain request.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainAnswer {
    /// Accepted (or already draining).
    Accepted,
    /// Refused by the grid, with its message.
    Refused(String),
}

impl GridApi {
    /// A client for grids at `url_template`.
    pub fn new(url_template: impl Into<String>) -> Self {
        GridApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            url_template: url_template.into(),
        }
    }

    fn base(&self, names: &Names) -> String {
        self.url_template
            .replace("{name}", &names.grid)
            .replace("{namespace}", &names.namespace)
    }

    /// The grid's cluster view.
    pub async fn cluster(&self, names: &Names) -> Result<ClusterView, Error> {
        let url = format!("{}/v1/cluster", self.base(names));
        let r = self.http.get(&url).send().await;
        let r = r.map_err(|e| Error::Grid(format!("{url}: {e}")))?;
        if !r.status().is_success() {
            return Err(Error::Grid(format!("{url}: {}", r.status())));
        }
        r.json()
            .await
            .map_err(|e| Error::Grid(format!("{url}: {e}")))
    }

    /// Asks the grid to drain member `id`.
    pub async fn drain(&self, names: &Names, id: u64) -> Result<DrainAnswer, Error> {
        let url = format!("{}/v1/members/{id}/drain", self.base(names));
        let r = self.http.post(&url).send().await;
        let r = r.map_err(|e| Error::Grid(format!("{url}: {e}")))?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(DrainAnswer::Accepted)
        } else if status.as_u16() == 409 {
            let message = body["error"]["message"].as_str().unwrap_or("refused");
            Ok(DrainAnswer::Refused(message.to_string()))
        } else {
            Err(Error::Grid(format!("{url}: {status} {body}")))
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The grids' admin API.
    pub grid: GridApi,
    /// Event publisher.
    pub recorder: Recorder,
    /// A drain without progress for this long is reported stalled.
    pub stall_after: Duration,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, grid: GridApi, stall_after: Duration) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), Reporter::from(MANAGER));
        Arc::new(Context {
            client,
            grid,
            recorder,
            stall_after,
        })
    }
}

/// Runs the controller over grids in `namespace` (all when `None`) until the stream ends.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let grids: Api<DeviceGrid> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned = |_: ()| watcher::Config::default().labels(builders::GRID_LABEL);
    Controller::new(grids, watcher::Config::default())
        .owns(scoped::<StatefulSet>(&client, &namespace), owned(()))
        .owns(scoped::<Service>(&client, &namespace), owned(()))
        .owns(scoped::<ConfigMap>(&client, &namespace), owned(()))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn error_policy(_dg: Arc<DeviceGrid>, e: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, kind = e.metric_label(), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(MANAGER).force();
    Ok(api
        .patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await?)
}

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
        last_transition_time: since.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
        observed_generation: None,
    }
}

/// One reconcile pass over `dg`.
pub async fn reconcile(dg: Arc<DeviceGrid>, ctx: Arc<Context>) -> Result<Action, Error> {
    let names = Names::of(&dg)?;
    let ns = names.namespace.clone();
    let client = &ctx.client;
    apply::<ServiceAccount>(client, &ns, &builders::service_account(&dg, &names)?).await?;
    apply::<ConfigMap>(client, &ns, &builders::config_map(&dg, &names)?).await?;
    apply::<Service>(client, &ns, &builders::members_service(&dg, &names)?).await?;
    apply::<Service>(client, &ns, &builders::client_service(&dg, &names)?).await?;
    apply::<PodDisruptionBudget>(client, &ns, &builders::pod_disruption_budget(&dg, &names)?)
        .await?;

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let existing = sts_api.get_opt(&names.main()).await?;
    let current = existing
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(dg.spec.replicas);
    let view = ctx.grid.cluster(&names).await;
    if let Err(e) = &view {
        tracing::debug!(grid = %names.grid, error = %e, "grid view unavailable");
    }
    let view = view.ok();
    let members: Option<Vec<GridMember>> = view.as_ref().map(|v| {
        v.members
            .iter()
            .map(|m| GridMember {
                id: m.id,
                state: m.state.clone(),
                partitions_held: m.partitions_held,
            })
            .collect()
    });
    let old_status = dg.status.clone().unwrap_or_default();
    let draining_since = old_status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.reason == "Draining")
        .map(|c| c.last_transition_time.0);
    let draining_for = draining_since.and_then(|t| {
        let secs = k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second();
        u64::try_from(secs).ok().map(Duration::from_secs)
    });
    let step = decisions::scale_step(
        dg.spec.replicas,
        current,
        members.as_deref(),
        draining_for,
        ctx.stall_after,
    );
    let mut refused = None;
    let replicas = match &step {
        ScaleStep::Grow { to } | ScaleStep::Shrink { to, .. } => *to,
        ScaleStep::Drain { member } => {
            if let DrainAnswer::Refused(m) = ctx.grid.drain(&names, *member).await? {
                refused = Some(m);
            }
            current
        }
        _ => current,
    };
    let sts =
        apply::<StatefulSet>(client, &ns, &builders::stateful_set(&dg, &names, replicas)?).await?;
    let rolled = roll(client, &names, &sts, view.as_ref()).await?;

    let status = status_of(
        &dg,
        &names,
        &sts,
        view.as_ref(),
        &step,
        refused,
        rolled,
        &old_status,
    );
    let phase_changed = status.phase != old_status.phase;
    let grids: Api<DeviceGrid> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({ "status": status });
    grids
        .patch_status(&names.grid, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    if phase_changed {
        let warning = matches!(status.phase.as_deref(), Some("Degraded"));
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: status.phase.clone().unwrap_or_default(),
            note: status
                .conditions
                .iter()
                .find(|c| c.type_ == if warning { "Degraded" } else { "Progressing" })
                .map(|c| c.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &dg.object_ref(&())).await {
            tracing::debug!(error = %e, "event not published");
        }
    }
    let settled = matches!(step, ScaleStep::Steady) && status.phase.as_deref() == Some("Running");
    Ok(Action::requeue(Duration::from_secs(if settled {
        30
    } else {
        3
    })))
}

/// Deletes the next outdated pod of a roll, if it is its turn; returns whether one was.
async fn roll(
    client: &Client,
    names: &Names,
    sts: &StatefulSet,
    view: Option<&ClusterView>,
) -> Result<bool, Error> {
    let Some(update) = sts.status.as_ref().and_then(|s| s.update_revision.clone()) else {
        return Ok(false);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let selector = builders::selector_string(names);
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let states: Vec<PodState> = list
        .items
        .iter()
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = name.rsplit_once('-')?.1.parse().ok()?;
            let revision = p.labels().get("controller-revision-hash")?.clone();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(PodState {
                ordinal,
                revision,
                ready,
            })
        })
        .collect();
    let under = view.map(|v| v.partitions.under_replicated);
    let Some(ordinal) = decisions::next_pod_to_roll(&states, &update, under) else {
        return Ok(false);
    };
    let name = format!("{}-{ordinal}", names.main());
    tracing::info!(pod = %name, "replacing a pod with the new revision");
    pods.delete(&name, &DeleteParams::default()).await?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
fn status_of(
    dg: &DeviceGrid,
    names: &Names,
    sts: &StatefulSet,
    view: Option<&ClusterView>,
    step: &ScaleStep,
    refused: Option<String>,
    rolled: bool,
    old: &DeviceGridStatus,
) -> DeviceGridStatus {
    let s = sts.status.as_ref();
    let ready = s.and_then(|s| s.ready_replicas).unwrap_or(0);
    let replicas = s.map(|s| s.replicas).unwrap_or(0);
    let under = view.map(|v| v.partitions.under_replicated);
    let leaderless = view.map(|v| v.partitions.without_leader);
    let rebalancing = view.is_some_and(|v| !v.balance.balanced);
    let (progressing, reason, message) = match step {
        ScaleStep::Steady if rolled => {
            (true, "Rolling", "replacing pods one at a time".to_string())
        }
        ScaleStep::Steady => (
            false,
            "Steady",
            "the StatefulSet has the desired size".into(),
        ),
        ScaleStep::Grow { to } => (true, "ScalingUp", format!("raising members to {to}")),
        ScaleStep::Drain { member } | ScaleStep::WaitForGrid { member } => (
            true,
            "Draining",
            format!("draining member {member} before removing its pod"),
        ),
        ScaleStep::WaitForDrain { member, left, .. } => (
            true,
            "Draining",
            format!("member {member} is draining, {left} replicas left"),
        ),
        ScaleStep::Shrink { member, to } => (
            true,
            "ScalingDown",
            format!("member {member} is decommissioned; shrinking to {to}"),
        ),
    };
    let stalled = matches!(step, ScaleStep::WaitForDrain { stalled: true, .. });
    let degraded_reason = if let Some(m) = &refused {
        Some(("DrainRefused", m.clone()))
    } else if stalled {
        Some((
            "DrainStalled",
            "the drain has made no progress in time".to_string(),
        ))
    } else if under.is_some_and(|u| u > 0) {
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
    let c = &old.conditions;
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
            c,
        ),
        condition("Progressing", progressing, reason, message, c),
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
            c,
        ),
        condition(
            "Degraded",
            degraded_reason.is_some(),
            degraded_reason.as_ref().map_or("Healthy", |d| d.0),
            degraded_reason
                .as_ref()
                .map_or(String::new(), |d| d.1.clone()),
            c,
        ),
    ];
    let phase = if degraded_reason.is_some() {
        "Degraded"
    } else if ready == 0 {
        "Pending"
    } else if progressing {
        "Scaling"
    } else if rebalancing {
        "Rebalancing"
    } else {
        "Running"
    };
    DeviceGridStatus {
        observed_generation: dg.metadata.generation,
        phase: Some(phase.into()),
        replicas,
        ready_replicas: ready,
        selector: Some(builders::selector_string(names)),
        conditions,
        members: view.map_or_else(Vec::new, |v| {
            v.members
                .iter()
                .map(|m| MemberStatus {
                    id: m.id,
                    state: m.state.clone(),
                    ready: m.ready,
                    partitions_held: m.partitions_held,
                    partitions_led: m.partitions_led,
                })
                .collect()
        }),
        partitions: view.map(|v| PartitionStatus {
            count: v.partitions.count,
            under_replicated: v.partitions.under_replicated,
            without_leader: v.partitions.without_leader,
            moves_in_progress: v.balance.moves_in_progress,
        }),
    }
}
