//! The operator's Prometheus metrics (prometheus-client, OpenMetrics text at `GET /metrics`)
//! and its HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Labels of reconcile failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's kind ([`crate::Error::metric_label`]).
    pub kind: String,
}

/// The operator's metric families.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("devicegrid_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes", reconciles.clone());
        let failures = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes by error kind",
            failures.clone(),
        );
        // 1 ms .. about 16 s: a pass is a handful of API calls and one call to the grid.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            ready: AtomicBool::new(false),
        }
    }

    /// Records one reconcile pass; `error` is the failed pass's error kind.
    pub fn reconciled(&self, took: Duration, error: Option<&str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.failures
                .get_or_create(&ErrorLabels { kind: kind.into() })
                .inc();
        }
    }

    /// Whether this replica leads (and runs the controllers).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Marks the process ready: connected to the API server and standing for leadership.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn scrape(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

/// Live while the process serves (liveness: a slow API server is no reason for a restart).
async fn healthz() -> &'static str {
    "ok"
}

/// Ready once it has reached the API server.
async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    Ok(tokio::spawn(async move {
        let stop = shutdown.cancelled_owned();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_errors_are_counted() {
        let m = Metrics::new();
        m.reconciled(Duration::from_millis(5), None);
        m.reconciled(Duration::from_millis(7), Some("kubernetes"));
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains("devicegrid_operator_reconciles_total 2"),
            "{text}"
        );
        assert!(
            text.contains("devicegrid_operator_reconcile_errors_total{kind=\"kubernetes\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("devicegrid_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("devicegrid_operator_leader 1"), "{text}");
    }
}
