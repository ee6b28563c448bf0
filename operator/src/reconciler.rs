//! The reconciler: one pass brings a grid's children in line with its spec and writes what
//! it observed to the status subresource.
//!
//! A pass (a) applies the ServiceAccount, ConfigMap, Services and PDB with server-side
//! apply; (b) reads the grid's own view (`GET /v1/cluster` through the client Service);
//! (c) takes one scale step ([`decisions::scale_step`]): raise the StatefulSet, or drain the
//! highest member through the grid and shrink only once it is decommissioned; (d) rolls one
//! outdated pod when the grid is fully replicated; (e) writes the status and publishes an
//! Event when the phase changes. Passes are level-triggered and idempotent; a pass that
//! changed something is followed by another a few seconds later; a failed pass is retried
//! with a per-grid exponential backoff (5 s doubling to 5 min).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::builders::{self, Names};
use crate::crd::{DeviceGrid, DeviceGridStatus, MemberStatus, PartitionStatus};
use crate::decisions::{self, GridMember, PodState, ScaleStep};
use crate::metrics::Metrics;

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
    /// The metadata group has no such member: it never joined, so it holds nothing.
    NotAMember,
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
        } else if status.as_u16() == 404 && body["error"]["code"] == "member_not_found" {
            Ok(DrainAnswer::NotAMember)
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
    /// Reconcile counters and durations.
    pub metrics: Arc<Metrics>,
    /// Consecutive failed passes per grid (`namespace/name`), for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        grid: GridApi,
        stall_after: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), Reporter::from(MANAGER));
        Arc::new(Context {
            client,
            grid,
            recorder,
            stall_after,
            metrics,
            failures: Mutex::default(),
        })
    }

    /// Records the outcome of a pass over `key`; returns the consecutive failures so far.
    fn record(&self, key: String, failed: bool) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failed {
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            failures.remove(&key);
            0
        }
    }
}

/// Retry delay after `failures` consecutive failed passes: 5 s doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// Runs one controller per namespace in `namespaces` (one over all namespaces when empty)
/// until `shutdown` is cancelled; passes in flight finish first.
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>, shutdown: CancellationToken) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let controllers = scopes
        .into_iter()
        .map(|ns| run_scope(ctx.clone(), ns, shutdown.clone()));
    futures::future::join_all(controllers).await;
}

async fn run_scope(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let owned = || watcher::Config::default().labels(builders::GRID_LABEL);
    // Status writes, Events and child updates arrive as watch events; the debounce folds a
    // burst of them into one pass.
    let config = ControllerConfig::default().debounce(Duration::from_secs(1));
    Controller::new(
        scoped::<DeviceGrid>(&client, &namespace),
        watcher::Config::default(),
    )
    .with_config(config)
    .owns(scoped::<StatefulSet>(&client, &namespace), owned())
    .owns(scoped::<Service>(&client, &namespace), owned())
    .owns(scoped::<ConfigMap>(&client, &namespace), owned())
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(measured, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "controller");
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

fn key(dg: &DeviceGrid) -> String {
    format!("{}/{}", dg.namespace().unwrap_or_default(), dg.name_any())
}

/// [`reconcile`] with its duration and outcome recorded.
async fn measured(dg: Arc<DeviceGrid>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile(dg.clone(), ctx.clone()).await;
    let kind = result.as_ref().err().map(Error::metric_label);
    ctx.metrics.reconciled(started.elapsed(), kind);
    if let Err(e) = &result {
        report_failure(&ctx, &dg, e).await;
    }
    ctx.record(key(&dg), result.is_err());
    result
}

fn error_policy(dg: Arc<DeviceGrid>, e: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx
        .failures
        .lock()
        .map(|f| f.get(&key(&dg)).copied().unwrap_or(1))
        .unwrap_or(1);
    let retry = backoff(failures);
    tracing::warn!(grid = %key(&dg), error = %e, kind = e.metric_label(), ?retry, "reconcile failed");
    Action::requeue(retry)
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
    if dg.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children; re-applying them would only race it.
        return Ok(Action::await_change());
    }
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
    let mut step = step;
    if let ScaleStep::Drain { member } = step {
        match ctx.grid.drain(&names, member).await? {
            DrainAnswer::Accepted => {}
            DrainAnswer::Refused(m) => refused = Some(m),
            DrainAnswer::NotAMember => {
                step = ScaleStep::Shrink {
                    member,
                    to: current - 1,
                }
            }
        }
    }
    let replicas = match &step {
        ScaleStep::Grow { to } | ScaleStep::Shrink { to, .. } => *to,
        _ => current,
    };
    let sts =
        apply::<StatefulSet>(client, &ns, &builders::stateful_set(&dg, &names, replicas)?).await?;
    // Rolls wait for a settled size: a pod is never replaced while members are added,
    // drained or removed.
    let rolled = if matches!(step, ScaleStep::Steady) {
        roll(client, &names, &sts, view.as_ref()).await?
    } else {
        Roll::default()
    };

    let status = status_of(
        &dg,
        &names,
        &sts,
        view.as_ref(),
        &step,
        refused,
        &rolled,
        &old_status,
    );
    let grids: Api<DeviceGrid> = Api::namespaced(client.clone(), &ns);
    let mut body = serde_json::to_value(&status)
        .map_err(|e| Error::Build(crate::Error::Build("DeviceGrid status".into(), e)))?;
    // A merge patch keeps fields it does not name: clear what the grid did not report.
    if status.members.is_empty() {
        body["members"] = serde_json::json!([]);
    }
    if status.partitions.is_none() {
        body["partitions"] = serde_json::Value::Null;
    }
    let patch = serde_json::json!({ "status": body });
    grids
        .patch_status(&names.grid, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    announce(&ctx, &dg, &old_status, &status).await;
    let settled = matches!(step, ScaleStep::Steady)
        && rolled.outdated == 0
        && status.phase.as_deref() == Some("Running");
    Ok(Action::requeue(Duration::from_secs(if settled {
        30
    } else {
        3
    })))
}

/// Publishes an Event when the cause the status reports has changed.
async fn announce(ctx: &Context, dg: &DeviceGrid, old: &DeviceGridStatus, new: &DeviceGridStatus) {
    let (warning, reason, note) = headline(new);
    if reason == headline(old).1 {
        return;
    }
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason,
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &dg.object_ref(&())).await {
        tracing::warn!(error = %e, "event not published");
    }
}

/// Makes a failed pass visible where users look: Degraded/ReconcileFailed in the status and a
/// Warning Event (best effort: the API server may be what failed).
async fn report_failure(ctx: &Context, dg: &DeviceGrid, e: &Error) {
    let (Some(ns), name) = (dg.namespace(), dg.name_any()) else {
        return;
    };
    let old = dg.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let failed = condition(
        "Degraded",
        true,
        "ReconcileFailed",
        e.to_string(),
        &old.conditions,
    );
    match status.conditions.iter_mut().find(|c| c.type_ == "Degraded") {
        Some(c) => *c = failed,
        None => status.conditions.push(failed),
    }
    status.phase = Some("Degraded".into());
    let patch =
        serde_json::json!({ "status": { "phase": status.phase, "conditions": status.conditions } });
    let grids: Api<DeviceGrid> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(e) = grids
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "failure not written to the status");
    }
    announce(ctx, dg, &old, &status).await;
}

/// What a grid's status is about, for Events: (warning, reason, message) of the Degraded
/// condition when it holds, else of Progressing when it holds, else the phase. An Event is
/// published when the reason changes (kube's recorder folds repeats of a reason into a series,
/// so each cause gets a reason of its own).
fn headline(status: &DeviceGridStatus) -> (bool, String, String) {
    let holds = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if let Some(c) = holds("Degraded") {
        (true, c.reason.clone(), c.message.clone())
    } else if let Some(c) = holds("Progressing") {
        (false, c.reason.clone(), c.message.clone())
    } else {
        let phase = status.phase.clone().unwrap_or_default();
        let available = holds("Available").map(|c| c.message.clone());
        (false, phase, available.unwrap_or_default())
    }
}

/// Where a roll stands after a pass.
#[derive(Debug, Default)]
struct Roll {
    /// The StatefulSet controller has not yet observed the latest template, so which pods
    /// are outdated is not known yet.
    unobserved: bool,
    /// Pods not on the StatefulSet's update revision.
    outdated: usize,
    /// The ordinal whose pod this pass deleted.
    replaced: Option<i32>,
}

/// Deletes the next outdated pod of a roll, if it is its turn.
async fn roll(
    client: &Client,
    names: &Names,
    sts: &StatefulSet,
    view: Option<&ClusterView>,
) -> Result<Roll, Error> {
    let observed = sts.status.as_ref().and_then(|s| s.observed_generation);
    if observed.is_none() || observed < sts.metadata.generation {
        return Ok(Roll {
            unobserved: true,
            ..Roll::default()
        });
    }
    let Some(update) = sts.status.as_ref().and_then(|s| s.update_revision.clone()) else {
        return Ok(Roll::default());
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
            let ready = p.metadata.deletion_timestamp.is_none()
                && p.status
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
    // Partitions not fully replicated or without a leader; unknown while replica moves
    // are under way.
    let under = view
        .filter(|v| v.balance.moves_in_progress == 0)
        .map(|v| v.partitions.under_replicated + v.partitions.without_leader);
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let outdated = states.iter().filter(|p| p.revision != update).count();
    let Some(ordinal) = decisions::next_pod_to_roll(&states, replicas, &update, under) else {
        return Ok(Roll {
            outdated,
            replaced: None,
            ..Roll::default()
        });
    };
    let name = format!("{}-{ordinal}", names.main());
    // Delete exactly the pod that was judged outdated, not a replacement created since.
    let uid = list
        .items
        .iter()
        .find(|p| p.name_any() == name)
        .and_then(|p| p.uid());
    let params = DeleteParams {
        preconditions: uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    tracing::info!(pod = %name, "replacing a pod with the new revision");
    match pods.delete(&name, &params).await {
        Ok(_) => Ok(Roll {
            outdated,
            replaced: Some(ordinal),
            ..Roll::default()
        }),
        // Gone already, or replaced since the list: the next pass looks again.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Roll {
            outdated,
            replaced: None,
            ..Roll::default()
        }),
        Err(e) => Err(e.into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn status_of(
    dg: &DeviceGrid,
    names: &Names,
    sts: &StatefulSet,
    view: Option<&ClusterView>,
    step: &ScaleStep,
    refused: Option<String>,
    rolled: &Roll,
    old: &DeviceGridStatus,
) -> DeviceGridStatus {
    let s = sts.status.as_ref();
    let ready = s.and_then(|s| s.ready_replicas).unwrap_or(0);
    let replicas = s.map(|s| s.replicas).unwrap_or(0);
    let under = view.map(|v| v.partitions.under_replicated);
    let leaderless = view.map(|v| v.partitions.without_leader);
    let rebalancing = view.is_some_and(|v| !v.balance.balanced);
    let (progressing, reason, message) = match step {
        ScaleStep::Steady if rolled.unobserved => (
            true,
            "Updating",
            "waiting for the StatefulSet controller to observe the new template".to_string(),
        ),
        ScaleStep::Steady if rolled.outdated > 0 => (
            true,
            "Rolling",
            match rolled.replaced {
                Some(o) => format!(
                    "replacing pod {}-{o}; {} pods on the old revision",
                    names.main(),
                    rolled.outdated
                ),
                None => format!(
                    "{} pods on the old revision; the next is replaced once every pod is ready and every partition fully replicated",
                    rolled.outdated
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
            format!("member {member} holds no replicas; shrinking to {to}"),
        ),
    };
    let stalled = matches!(step, ScaleStep::WaitForDrain { stalled: true, .. });
    // A member inside the desired size that is leaving (a scale-down reverted mid-drain)
    // serves nothing and cannot come back: the grid only moves members forward.
    let retired = view.and_then(|v| {
        v.members.iter().find(|m| {
            m.id <= u64::try_from(dg.spec.replicas).unwrap_or(0)
                && matches!(m.state.as_str(), "draining" | "decommissioned")
                && matches!(step, ScaleStep::Steady | ScaleStep::Grow { .. })
        })
    });
    let degraded_reason = if let Some(m) = &refused {
        Some(("DrainRefused", m.clone()))
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
    } else if under.is_some_and(|u| u > 0) && rolled.outdated == 0 {
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
    } else if progressing && reason == "Rolling" {
        "Upgrading"
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
