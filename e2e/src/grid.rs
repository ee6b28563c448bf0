//! The grid's HTTP API through its client Service, as a client in the cluster reaches it:
//! HTTPS to the Service's ClusterIP (kube-proxy picks a ready member), verifying the
//! certificate against the grid's CA (Secret `<grid>-peer-ca`) under the Service's DNS name,
//! with the bootstrap admin token (Secret `<grid>-admin`) as bearer token. The suite's
//! machine needs a route to ClusterIPs and pod IPs: it is the node of the local cluster;
//! `e2e/run.sh kind` adds routes through the kind node. (The API server's service proxy
//! would not do: it drops the `Authorization` header.)
//!
//! Requests and answers are the wire contract's types ([`devicegrid_proto`]), so the suite
//! reads exactly what members serve.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use devicegrid_proto::maps::{BatchGet, BatchGetResults, BatchPut, BatchPutEntry, BatchPutResults};
use devicegrid_proto::views::{ClusterView, MemberView};
use devicegrid_proto::{ErrorDetail, MemberState};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The map the suite writes devices to.
pub const MAP: &str = "devices";
/// The members' client port.
pub const PORT: u16 = 7001;

/// A grid's API through its client Service.
#[derive(Clone)]
pub struct Grid {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// The grid's CA certificate (PEM).
    pub ca: Vec<u8>,
}

/// The outcome of one write in a batch.
#[derive(Debug)]
pub enum Written {
    /// Acknowledged with this version.
    Acked(u64),
    /// Refused or failed; it may or may not have been applied.
    Failed(String),
}

/// A batch entry's error as one line: its code, message and routing facts.
fn describe(e: &ErrorDetail) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| format!("{}: {}", e.code, e.message))
}

/// Key `key` of Secret `name`.
pub async fn secret_key(secrets: &Api<Secret>, name: &str, key: &str) -> Result<Vec<u8>> {
    let secret = secrets
        .get_opt(name)
        .await?
        .ok_or_else(|| anyhow!("no Secret {name} yet"))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|v| v.0)
        .ok_or_else(|| anyhow!("Secret {name} has no {key:?}"))
}

impl Grid {
    /// The grid `name` in `namespace`: its client Service (named like the grid), CA and
    /// admin token. Fails until the operator has made them.
    pub async fn connect(client: &Client, namespace: &str, name: &str) -> Result<Grid> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let ca = secret_key(&secrets, &format!("{name}-peer-ca"), "ca.crt").await?;
        let token = secret_key(&secrets, &format!("{name}-admin"), "token").await?;
        let token = String::from_utf8(token).context("the admin token")?;
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let ip: IpAddr = services
            .get(name)
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .ok_or_else(|| anyhow!("Service {name} has no ClusterIP yet"))?
            .parse()
            .context("the Service's ClusterIP")?;
        let host = format!("{name}.{namespace}.svc");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .tls_built_in_root_certs(false)
            .resolve(&host, SocketAddr::new(ip, PORT))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Grid {
            http,
            base: format!("https://{host}:{PORT}"),
            token: Some(token),
            ca,
        })
    }

    /// The same grid without the token.
    pub fn anonymous(&self) -> Grid {
        Grid {
            token: None,
            ..self.clone()
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::GET, path, Vec::new()).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(reqwest::Method::POST, path, serde_json::to_vec(body)?)
            .await
    }

    /// One request; its status and body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, String)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        let answer = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = answer.status();
        let text = answer
            .text()
            .await
            .with_context(|| format!("{method} {path}"))?;
        Ok((status, text))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T> {
        let (status, text) = self.send(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text}"))
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterView> {
        self.get("/v1/cluster").await
    }

    /// `GET /v1/members/{id}`: the member's lifecycle state.
    pub async fn member_state(&self, id: u64) -> Result<MemberState> {
        let member: MemberView = self.get(&format!("/v1/members/{id}")).await?;
        Ok(member.state)
    }

    /// Writes `entries` in one batch; one outcome per entry, in order.
    pub async fn put_batch(&self, entries: &[(String, Value)]) -> Result<Vec<Written>> {
        let body = BatchPut {
            entries: entries
                .iter()
                .map(|(key, value)| {
                    Ok(BatchPutEntry {
                        key: key.clone(),
                        value: RawValue::from_string(value.to_string())?,
                        ttl: None,
                    })
                })
                .collect::<Result<_>>()?,
        };
        let path = format!("/v1/batch/maps/{MAP}/put");
        let answer: BatchPutResults = self.post(&path, &body).await?;
        let results = answer.results;
        if results.len() != entries.len() {
            bail!(
                "batch put: {} results for {} entries",
                results.len(),
                entries.len()
            );
        }
        Ok(results
            .into_iter()
            .map(|r| match (r.version, r.error) {
                (Some(version), _) => Written::Acked(version),
                (None, Some(e)) => Written::Failed(describe(&e)),
                (None, None) => Written::Failed(format!("{}: neither version nor error", r.key)),
            })
            .collect())
    }

    /// Reads `keys` in batches of up to 1,000 (linearizable reads); absent keys are `None`.
    /// A batch that meets an unavailable partition (an election in progress, a member just
    /// restarted) is retried for up to two minutes, as a client honouring `retry_after_ms`
    /// would; what this checks is the data, not availability.
    pub async fn get_all(&self, keys: &[String]) -> Result<BTreeMap<String, Option<Value>>> {
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(1000) {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let entries = loop {
                let attempt = self.get_chunk(chunk).await;
                match attempt {
                    Ok(entries) => break entries,
                    Err(e) if std::time::Instant::now() < deadline => {
                        eprintln!("e2e: read retried: {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.context("reading for two minutes")),
                }
            };
            out.extend(entries);
        }
        Ok(out)
    }

    async fn get_chunk(&self, chunk: &[String]) -> Result<Vec<(String, Option<Value>)>> {
        let body = BatchGet {
            keys: chunk.to_vec(),
            consistency: None,
        };
        let path = format!("/v1/batch/maps/{MAP}/get");
        let answer: BatchGetResults = self.post(&path, &body).await?;
        let mut out = Vec::with_capacity(chunk.len());
        for (key, e) in chunk.iter().zip(answer.entries) {
            if let Some(err) = &e.error {
                bail!("reading {key}: {}", describe(err));
            }
            let value = match (e.found.unwrap_or(false), e.value) {
                (false, _) => None,
                (true, None) => Some(Value::Null),
                (true, Some(raw)) => Some(
                    serde_json::from_str(raw.get())
                        .with_context(|| format!("value of {key}: {}", raw.get()))?,
                ),
            };
            out.push((key.clone(), value));
        }
        Ok(out)
    }

    /// Writes `keys` with `value_of(key)` in batches of 500; every write must be acknowledged.
    pub async fn load(&self, keys: &[String], value_of: impl Fn(&str) -> Value) -> Result<()> {
        for chunk in keys.chunks(500) {
            let entries: Vec<(String, Value)> =
                chunk.iter().map(|k| (k.clone(), value_of(k))).collect();
            for ((key, _), w) in entries.iter().zip(self.put_batch(&entries).await?) {
                if let Written::Failed(e) = w {
                    bail!("writing {key}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Checks that every key in `expected` reads back with exactly its value.
    pub async fn verify(&self, expected: &BTreeMap<String, Value>) -> Result<()> {
        let keys: Vec<String> = expected.keys().cloned().collect();
        let got = self.get_all(&keys).await?;
        let mut wrong = Vec::new();
        for (key, want) in expected {
            match got.get(key) {
                Some(Some(v)) if v == want => {}
                other => wrong.push(format!("{key}: want {want}, read {other:?}")),
            }
        }
        if !wrong.is_empty() {
            bail!(
                "{} of {} acknowledged writes are missing or wrong, e.g.\n{}",
                wrong.len(),
                expected.len(),
                wrong[..wrong.len().min(10)].join("\n")
            );
        }
        Ok(())
    }
}

/// A writer that keeps writing new keys while the cluster is disturbed, recording which
/// writes were acknowledged (each key is written once, so an acknowledged key must read back
/// with exactly its value afterwards).
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<WriterLog>,
}

/// What a [`Writer`] did.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Acknowledged writes.
    pub acked: BTreeMap<String, Value>,
    /// Writes that failed or whose outcome is unknown.
    pub failed: u64,
    /// A sample of the failures.
    pub errors: Vec<String>,
}

impl Writer {
    /// Starts writing batches of 20 keys `PREFIX-N` to `grid`.
    pub fn start(grid: Grid, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acked = Arc::new(AtomicU64::new(0));
        let count = acked.clone();
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let mut log = WriterLog::default();
            let mut n = 0u64;
            while !flag.load(Ordering::Acquire) {
                let entries: Vec<(String, Value)> = (0..20)
                    .map(|i| {
                        let key = format!("{prefix}-{}", n + i);
                        let value = json!({ "seq": n + i, "by": prefix });
                        (key, value)
                    })
                    .collect();
                n += 20;
                match grid.put_batch(&entries).await {
                    Ok(outcomes) => {
                        for ((key, value), w) in entries.into_iter().zip(outcomes) {
                            match w {
                                Written::Acked(_) => {
                                    log.acked.insert(key, value);
                                    count.fetch_add(1, Ordering::Relaxed);
                                }
                                Written::Failed(e) => log.fail(e),
                            }
                        }
                    }
                    Err(e) => {
                        for _ in 0..entries.len() {
                            log.fail(format!("{e:#}"));
                        }
                        // The Service may have no ready endpoint for a moment.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            log
        });
        Writer { stop, acked, task }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the writer and returns its log.
    pub async fn stop(self) -> Result<WriterLog> {
        self.stop.store(true, Ordering::Release);
        Ok(self.task.await?)
    }
}

impl WriterLog {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }
}
