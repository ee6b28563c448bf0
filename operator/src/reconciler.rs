//! The reconcile flow: one pass brings a grid's children in line with its spec and writes
//! what it observed to the status subresource.
//!
//! A pass (a) creates the grid's peer CA Secret, and with `spec.auth` the admin token Secret,
//! if missing (never re-applied: a new CA would split the grid, a new token lock the operator
//! out), checks the Secrets `spec.tls` and `spec.auth` name, and applies the ServiceAccount,
//! ConfigMap, Services, PDB and NetworkPolicy with server-side apply; (b) reads the grid's
//! own view (`GET /v1/cluster` through the client Service, over HTTPS trusting the grid's CA
//! with `spec.tls`, with the admin token with `spec.auth`, see [`crate::grid_api`]); (c) takes one scale step
//! ([`decisions::scale_step`]): raise the StatefulSet, or drain the highest member through
//! the grid and shrink only once it is decommissioned; (d) rolls one outdated pod when the
//! grid is fully replicated; (e) writes the status ([`status::build`]) and publishes an
//! Event when its cause changes. Passes are level-triggered and idempotent; a pass that
//! changed something is followed by another a few seconds later. When passes run, and the
//! backoff after a failed one, is [`crate::controller`]'s job.

use std::sync::Arc;
use std::time::Duration;

use devicegrid_proto::views::ClusterView;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builders::Security;
use crate::builders::{self, Names};
use crate::controller::Context;
use crate::crd::{DeviceGrid, DeviceGridStatus};
use crate::decisions::{self, GridMember, PodState, ScaleStep};
use crate::grid_api::{Access, DrainAnswer};
use crate::status::{self, Observed, Phase, Roll};
use crate::{Error, Result};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "devicegrid-operator";
/// Validity of a grid's peer CA, in days.
pub const PEER_CA_DAYS: u32 = 3650;

/// One reconcile pass over `dg`.
pub async fn reconcile(dg: Arc<DeviceGrid>, ctx: Arc<Context>) -> Result<Action> {
    if dg.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children; re-applying them would only race it.
        return Ok(Action::await_change());
    }
    let names = Names::of(&dg)?;
    let ns = names.namespace.clone();
    let client = &ctx.client;
    let peer_ca = ensure_peer_ca(client, &dg, &names).await?;
    let access = grid_access(client, &dg, &names, peer_ca).await?;
    apply::<ServiceAccount>(client, &ns, &builders::service_account(&dg, &names)?).await?;
    apply::<ConfigMap>(client, &ns, &builders::config_map(&dg, &names)?).await?;
    apply::<Service>(client, &ns, &builders::members_service(&dg, &names)?).await?;
    apply::<Service>(client, &ns, &builders::client_service(&dg, &names)?).await?;
    apply::<PodDisruptionBudget>(client, &ns, &builders::pod_disruption_budget(&dg, &names)?)
        .await?;
    apply::<NetworkPolicy>(client, &ns, &builders::network_policy(&dg, &names)?).await?;

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let existing = sts_api.get_opt(&names.main()).await?;
    let current = existing
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(dg.spec.replicas);
    let view = ctx.grid.cluster(&names, &access).await;
    if let Err(e) = &view {
        tracing::debug!(grid = %names.grid, error = %e, "grid view unavailable");
    }
    let view = view.ok();
    let members: Option<Vec<GridMember>> = view.as_ref().map(|v| {
        v.members
            .iter()
            .map(|m| GridMember {
                id: m.id,
                state: m.state,
                partitions_held: m.partitions_held as u64,
            })
            .collect()
    });
    let old_status = dg.status.clone().unwrap_or_default();
    let step = decisions::scale_step(
        dg.spec.replicas,
        current,
        members.as_deref(),
        status::draining_for(&old_status, Timestamp::now()),
        ctx.stall_after,
    );
    let mut refused = None;
    let mut step = step;
    if let ScaleStep::Drain { member } = step {
        match ctx.grid.drain(&names, &access, member).await? {
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

    let status = status::build(&Observed {
        grid: &dg,
        names: &names,
        sts: &sts,
        view: view.as_ref(),
        step: &step,
        drain_refused: refused.as_deref(),
        roll: &rolled,
    });
    let grids: Api<DeviceGrid> = Api::namespaced(client.clone(), &ns);
    let mut body =
        serde_json::to_value(&status).map_err(|e| Error::Build("DeviceGrid status".into(), e))?;
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
        && status.phase.as_deref() == Some(Phase::Running.as_str());
    Ok(Action::requeue(Duration::from_secs(if settled {
        30
    } else {
        3
    })))
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
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

/// Creates the grid's peer CA Secret when it does not exist, and returns the CA
/// certificate (PEM). It is never applied again: a fresh CA on every pass would rotate it and
/// members would no longer verify each other. A Secret created in between (another replica,
/// or a user bringing their own CA) is kept.
async fn ensure_peer_ca(client: &Client, dg: &DeviceGrid, names: &Names) -> Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let (secret, created) = get_or_create(&api, &names.peer_ca(), || {
        let pem = devicegrid_pki::new_ca(&names.cluster(), devicegrid_pki::days(PEER_CA_DAYS))
            .map_err(Error::Pki)?;
        builders::peer_ca_secret(dg, names, &pem)
    })
    .await?;
    if created {
        tracing::info!(grid = %names.grid, secret = %names.peer_ca(), "created the peer CA");
    }
    let mut data = secret.data.unwrap_or_default();
    for key in [builders::PEER_CA_CERT, builders::PEER_CA_KEY] {
        if data.get(key).is_none_or(|v| v.0.is_empty()) {
            return Err(Error::PeerCaIncomplete {
                secret: names.peer_ca(),
                key,
            });
        }
    }
    Ok(data
        .remove(builders::PEER_CA_CERT)
        .map(|v| v.0)
        .unwrap_or_default())
}

/// The Secret `name`, created from `make()` first when it does not exist (a Secret another
/// replica created in between is used instead); whether this call created it. Such Secrets
/// are never applied again.
async fn get_or_create(
    api: &Api<Secret>,
    name: &str,
    make: impl FnOnce() -> Result<Secret>,
) -> Result<(Secret, bool)> {
    if let Some(existing) = api.get_opt(name).await? {
        return Ok((existing, false));
    }
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &make()?).await {
        Ok(created) => Ok((created, true)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok((api.get(name).await?, false)),
        Err(e) => Err(e.into()),
    }
}

/// Reads `keys` of Secret `name` (each must be there and not empty), in that order;
/// `purpose` says in errors why the Secret is needed.
async fn secret_keys<const N: usize>(
    api: &Api<Secret>,
    name: &str,
    keys: [&str; N],
    purpose: &'static str,
) -> Result<[Vec<u8>; N]> {
    let secret = api.get_opt(name).await?;
    keys_of(secret, name, keys, purpose)
}

/// `keys` of `secret` (named `name`; `None`: not found), as [`secret_keys`] reads them.
fn keys_of<const N: usize>(
    secret: Option<Secret>,
    name: &str,
    keys: [&str; N],
    purpose: &'static str,
) -> Result<[Vec<u8>; N]> {
    let unusable = |problem: String| Error::SecretUnusable {
        secret: name.to_string(),
        purpose,
        problem,
    };
    let mut data = secret
        .ok_or_else(|| unusable("not found".into()))?
        .data
        .unwrap_or_default();
    let mut out = std::array::from_fn(|_| Vec::new());
    for (slot, key) in out.iter_mut().zip(keys) {
        *slot = data
            .remove(key)
            .map(|v| v.0)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| unusable(format!("has no {key:?}")))?;
    }
    Ok(out)
}

/// How the operator reaches the grid's admin API: the CA its client port's certificate
/// chains to (with `spec.tls`) and the admin token (with `spec.auth`; the operator makes
/// `<grid>-admin` once when the spec names no Secret).
async fn grid_access(
    client: &Client,
    dg: &DeviceGrid,
    names: &Names,
    peer_ca: Vec<u8>,
) -> Result<Access> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let security = Security::of(dg, names);
    let ca = match (security.tls(), security.tls_secret()) {
        (false, _) => None,
        (true, None) => Some(peer_ca),
        (true, Some(name)) => {
            // The member checks the certificate and key when it loads them; the operator
            // needs the CA to trust.
            let keys = [builders::TLS_CA, builders::TLS_CERT, builders::TLS_KEY];
            let [ca, ..] = secret_keys(&api, name, keys, "spec.tls.secretName").await?;
            Some(ca)
        }
    };
    if let Some(name) = dg
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.client_ca_secret_name.as_deref())
    {
        secret_keys(
            &api,
            name,
            [builders::TLS_CA],
            "spec.tls.clientCaSecretName",
        )
        .await?;
    }
    let token = match security.auth_secret() {
        None => None,
        Some(name) => {
            let purpose = if dg
                .spec
                .auth
                .as_ref()
                .is_some_and(|a| a.secret_name.is_some())
            {
                "spec.auth.secretName"
            } else {
                "bootstrap admin token"
            };
            let secret = if name == names.admin() {
                let (secret, created) = get_or_create(&api, &name, || {
                    let token =
                        devicegrid_pki::new_token().ok_or_else(|| Error::SecretUnusable {
                            secret: name.clone(),
                            purpose,
                            problem: "the system's random source failed".into(),
                        })?;
                    builders::admin_secret(dg, names, &token)
                })
                .await?;
                if created {
                    tracing::info!(grid = %names.grid, secret = %name, "created the admin token");
                }
                Some(secret)
            } else {
                api.get_opt(&name).await?
            };
            let [raw] = keys_of(secret, &name, [builders::ADMIN_TOKEN], purpose)?;
            let token = String::from_utf8(raw)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| devicegrid_pki::valid_token(t))
                .ok_or_else(|| Error::SecretUnusable {
                    secret: name.clone(),
                    purpose,
                    problem: devicegrid_pki::TOKEN_RULE.into(),
                })?;
            Some(token)
        }
    };
    Ok(Access { ca, token })
}

async fn announce(ctx: &Context, dg: &DeviceGrid, old: &DeviceGridStatus, new: &DeviceGridStatus) {
    let headline = status::headline(new);
    if headline.reason == status::headline(old).reason {
        return;
    }
    let event = Event {
        type_: if headline.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: headline.reason,
        note: Some(headline.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &dg.object_ref(&())).await {
        tracing::warn!(error = %e, "event not published");
    }
}

/// Makes a failed pass visible where users look: Degraded/ReconcileFailed in the status and a
/// Warning Event (best effort: the API server may be what failed).
pub async fn report_failure(ctx: &Context, dg: &DeviceGrid, e: &Error) {
    let (Some(ns), name) = (dg.namespace(), dg.name_any()) else {
        return;
    };
    let old = dg.status.clone().unwrap_or_default();
    let status = status::failed(&old, e.to_string());
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

/// Deletes the next outdated pod of a roll, if it is its turn.
async fn roll(
    client: &Client,
    names: &Names,
    sts: &StatefulSet,
    view: Option<&ClusterView>,
) -> Result<Roll> {
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
        .map(|v| (v.partitions.under_replicated + v.partitions.without_leader) as u64);
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
