//! The controller wiring: one kube-rs controller per watched namespace, the context every
//! pass shares, and what happens after a failed pass (metrics, the failure in the status, a
//! per-grid exponential backoff of 5 s doubling to 5 min).
//!
//! What one pass does is [`crate::reconciler`]'s job; this module decides when passes run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::builders;
use crate::crd::DeviceGrid;
use crate::grid_api::GridApi;
use crate::metrics::Metrics;
use crate::reconciler::{self, MANAGER};
use crate::{Error, Result};

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
    .owns(scoped::<Secret>(&client, &namespace), owned())
    .owns(scoped::<NetworkPolicy>(&client, &namespace), owned())
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

/// [`reconciler::reconcile`] with its duration and outcome recorded.
async fn measured(dg: Arc<DeviceGrid>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconciler::reconcile(dg.clone(), ctx.clone()).await;
    let kind = result.as_ref().err().map(Error::metric_label);
    ctx.metrics.reconciled(started.elapsed(), kind);
    if let Err(e) = &result {
        reconciler::report_failure(&ctx, &dg, e).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passes_back_off_from_five_seconds_to_five_minutes() {
        let secs: Vec<u64> = [0, 1, 2, 3, 6, 7, 8, 1000]
            .into_iter()
            .map(|n| backoff(n).as_secs())
            .collect();
        assert_eq!(secs, [5, 5, 10, 20, 160, 300, 300, 300]);
    }
}
