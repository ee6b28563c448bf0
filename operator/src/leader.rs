//! Leader election: only the replica holding a `coordination.k8s.io/v1` Lease reconciles, so
//! two operator replicas are safe.
//!
//! The Lease is kept by kube-lease-manager (renewed with server-side apply `grace` seconds
//! before it expires). A replica that loses the Lease stops at once and reports
//! [`Error::LostLeadership`]; the binary then exits and Kubernetes restarts it as a
//! candidate, as client-go's leader election does. kube-lease-manager keeps reporting
//! "leading" while its renewals fail, so a watchdog reads the Lease too and steps down when
//! another replica holds it or when its own renewal is overdue by half the grace period,
//! before the Lease expires and a standby may take it. Every reconcile step is idempotent, so
//! the remaining overlap (clock skew between replicas) does no harm.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::{Error, Result};

/// Which Lease and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub duration: Duration,
    /// How long before expiry the holder renews.
    pub grace: Duration,
}

impl LeaseConfig {
    /// Checks the timing rules kube-lease-manager would otherwise panic on.
    pub fn validate(&self) -> Result<()> {
        let (d, g) = (self.duration.as_secs(), self.grace.as_secs());
        if g == 0 || d <= g {
            return Err(Error::LeaseSettings(format!(
                "the lease duration ({d} s) must exceed the renew grace ({g} s), which must be at least 1 s"
            )));
        }
        if self.identity.is_empty() || self.name.is_empty() || self.namespace.is_empty() {
            return Err(Error::LeaseSettings(
                "lease name, namespace and identity must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// Runs `work` while this replica holds the Lease.
///
/// Waits to acquire the Lease (or for `shutdown`), then runs `work` until it finishes (it
/// should finish on `shutdown`); releases the Lease afterwards so a standby takes over at
/// once. Returns [`Error::LostLeadership`] when the Lease is lost while leading.
pub async fn while_leading<W>(
    client: Client,
    lease: &LeaseConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    work: W,
) -> Result<()>
where
    W: Future<Output = ()>,
{
    lease.validate()?;
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration.as_secs())
        .with_grace(lease.grace.as_secs())
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %lease.name, identity = %lease.identity, "standing for leadership");
    let acquired = loop {
        if *leading.borrow_and_update() {
            break true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            changed = leading.changed() => {
                if changed.is_err() {
                    break false;
                }
            }
        }
    };
    let outcome = if acquired {
        tracing::info!(lease = %lease.name, identity = %lease.identity, "leading");
        metrics.set_leader(true);
        let lost = async {
            loop {
                if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            () = work => Ok(()),
            () = lost => Err(Error::LostLeadership(lease.name.clone())),
            () = watchdog(&client, lease) => Err(Error::LostLeadership(lease.name.clone())),
        }
    } else {
        Ok(())
    };
    metrics.set_leader(false);
    // Closing the channel makes the manager release the Lease and end its task.
    drop(leading);
    match task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease"),
        Err(e) => tracing::warn!(error = %e, "lease task"),
    }
    if outcome.is_ok() && !acquired && !shutdown.is_cancelled() {
        return Err(Error::LeaseSettings(
            "the lease task ended unexpectedly".into(),
        ));
    }
    outcome
}

/// Returns when this replica can no longer count on holding the Lease: another holds it, or
/// the last renewal seen is older than `duration - grace/2` (renewals are due at
/// `duration - grace`; the Lease expires at `duration`).
async fn watchdog(client: &Client, lease: &LeaseConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let every = (lease.grace / 2).max(Duration::from_millis(500));
    let deadline_ms =
        i64::try_from((lease.duration - lease.grace / 2).as_millis()).unwrap_or(i64::MAX);
    let mut renewed_ms = Timestamp::now().as_millisecond();
    loop {
        tokio::time::sleep(every).await;
        match leases.get(&lease.name).await {
            Ok(l) => {
                let spec = l.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
                    tracing::warn!(holder = ?spec.holder_identity, "the Lease has another holder");
                    return;
                }
                if let Some(t) = spec.renew_time {
                    renewed_ms = renewed_ms.max(t.0.as_millisecond());
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the Lease"),
        }
        if Timestamp::now().as_millisecond() - renewed_ms > deadline_ms {
            tracing::warn!(lease = %lease.name, "the Lease was not renewed in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(duration: u64, grace: u64) -> LeaseConfig {
        LeaseConfig {
            namespace: "ops".into(),
            name: "devicegrid-operator".into(),
            identity: "op-0".into(),
            duration: Duration::from_secs(duration),
            grace: Duration::from_secs(grace),
        }
    }

    #[test]
    fn timing_rules_are_checked_before_use() {
        assert!(lease(15, 5).validate().is_ok());
        assert!(lease(5, 5).validate().is_err());
        assert!(lease(15, 0).validate().is_err());
        let mut anonymous = lease(15, 5);
        anonymous.identity.clear();
        assert!(anonymous.validate().is_err());
    }
}
