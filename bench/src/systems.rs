//! The same operations against DeviceGrid and etcd, over their HTTP/JSON APIs.
//!
//! | op | DeviceGrid | etcd (v3 JSON gateway) |
//! | --- | --- | --- |
//! | get | `GET /v1/maps/bench/{key}` (linearizable) | `POST /v3/kv/range` (linearizable) |
//! | put | `PUT /v1/maps/bench/{key}` | `POST /v3/kv/put` |
//! | shadow | `POST /v1/maps/shadows/{key}/process` with the `shadow` processor | read, merge, `POST /v3/kv/txn` on `mod_revision`, retried on conflict |
//!
//! etcd has no server-side document update, so the shadow row measures what an etcd client
//! must do for the same atomic result.
//!
//! DeviceGrid requests and answers are the wire contract's types ([`devicegrid_proto`]); etcd's
//! gateway JSON is written by hand.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use devicegrid_proto::maps::{
    BatchPut, BatchPutEntry, BatchPutResults, Processor, ShadowPatch, ShadowUpdate,
};
use futures::StreamExt;
use rand::Rng;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// A system under test. Cloning is cheap.
#[derive(Clone)]
pub enum System {
    /// DeviceGrid members.
    DeviceGrid {
        /// Member base URLs.
        urls: Vec<String>,
        /// Shared client.
        http: reqwest::Client,
    },
    /// etcd members.
    Etcd {
        /// Member client URLs.
        urls: Vec<String>,
        /// Shared client.
        http: reqwest::Client,
    },
}

/// A JSON document of exactly `size` bytes (when `size` leaves room for the fields).
pub fn value(size: usize, seq: u64) -> String {
    let base = json!({ "fw": "1.0", "seq": seq, "pad": "" }).to_string();
    let pad = size.saturating_sub(base.len());
    json!({ "fw": "1.0", "seq": seq, "pad": "x".repeat(pad) }).to_string()
}

fn key(i: usize) -> String {
    format!("device-{i}")
}

impl System {
    /// DeviceGrid at `urls`.
    pub fn devicegrid(urls: Vec<String>, http: reqwest::Client) -> Self {
        System::DeviceGrid { urls, http }
    }

    /// etcd at `urls`.
    pub fn etcd(urls: Vec<String>, http: reqwest::Client) -> Self {
        System::Etcd { urls, http }
    }

    fn pick(&self) -> (&str, &reqwest::Client) {
        let (urls, http) = match self {
            System::DeviceGrid { urls, http } | System::Etcd { urls, http } => (urls, http),
        };
        (&urls[rand::thread_rng().gen_range(0..urls.len())], http)
    }

    /// Writes `range` in one batch request (DeviceGrid only).
    async fn put_batch(&self, range: std::ops::Range<usize>, size: usize) -> anyhow::Result<()> {
        let entries = range
            .map(|i| {
                Ok(BatchPutEntry {
                    key: key(i),
                    value: RawValue::from_string(value(size, 0))?,
                    ttl: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let (url, http) = self.pick();
        let r = http
            .post(format!("{url}/v1/batch/maps/bench/put"))
            .json(&BatchPut { entries })
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        let answer: BatchPutResults = serde_json::from_str(&text)
            .with_context(|| format!("preload failed: {status} {text}"))?;
        if let Some(e) = answer.results.iter().find_map(|x| x.error.as_ref()) {
            bail!("preload failed: {}: {}", e.code, e.message);
        }
        Ok(())
    }

    /// Writes every key once.
    pub async fn preload(&self, keys: usize, size: usize) -> anyhow::Result<()> {
        match self {
            System::DeviceGrid { .. } => {
                // Batches of 500, four in flight.
                let starts: Vec<usize> = (0..keys).step_by(500).collect();
                let mut batches = futures::stream::iter(starts.into_iter().map(|start| {
                    let this = self.clone();
                    async move { this.put_batch(start..(start + 500).min(keys), size).await }
                }))
                .buffer_unordered(4);
                while let Some(r) = batches.next().await {
                    r?;
                }
            }
            System::Etcd { .. } => {
                let tasks = (0..32).map(|w| {
                    let this = self.clone();
                    async move {
                        for i in (w..keys).step_by(32) {
                            this.put(i, size, 0).await?;
                        }
                        anyhow::Ok(())
                    }
                });
                for r in futures::future::join_all(tasks).await {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// Reads one key.
    pub async fn get(&self, i: usize) -> anyhow::Result<()> {
        let (url, http) = self.pick();
        match self {
            System::DeviceGrid { .. } => {
                let r = http
                    .get(format!("{url}/v1/maps/bench/{}", key(i)))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("get: {}", r.status());
                }
                r.bytes().await?;
            }
            System::Etcd { .. } => {
                let r = http
                    .post(format!("{url}/v3/kv/range"))
                    .json(&json!({ "key": B64.encode(key(i)) }))
                    .send()
                    .await?;
                let body: Value = r.json().await?;
                if body["kvs"].as_array().is_none_or(Vec::is_empty) {
                    bail!("range: {body}");
                }
            }
        }
        Ok(())
    }

    /// Writes one key.
    pub async fn put(&self, i: usize, size: usize, seq: u64) -> anyhow::Result<()> {
        let (url, http) = self.pick();
        let v = value(size, seq);
        let r = match self {
            System::DeviceGrid { .. } => {
                http.put(format!("{url}/v1/maps/bench/{}", key(i)))
                    .header("content-type", "application/json")
                    .body(v)
                    .send()
                    .await?
            }
            System::Etcd { .. } => {
                http.post(format!("{url}/v3/kv/put"))
                    .json(&json!({ "key": B64.encode(key(i)), "value": B64.encode(v) }))
                    .send()
                    .await?
            }
        };
        if !r.status().is_success() {
            bail!("put: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        r.bytes().await?;
        Ok(())
    }

    /// Updates the reported state of one device shadow atomically.
    pub async fn shadow(&self, i: usize, client: u64, seq: u64) -> anyhow::Result<()> {
        let reported = json!({ "temp": 20 + (seq % 10), "client": client, "seq": seq });
        match self {
            System::DeviceGrid { .. } => {
                let (url, http) = self.pick();
                let body = Processor::Shadow(ShadowUpdate {
                    state: ShadowPatch {
                        desired: None,
                        reported: Some(reported),
                    },
                    version: None,
                });
                let r = http
                    .post(format!("{url}/v1/maps/shadows/{}/process", key(i)))
                    .json(&body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!(
                        "shadow: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                r.bytes().await?;
            }
            System::Etcd { .. } => {
                let k = B64.encode(format!("shadow/{}", key(i)));
                for _ in 0..100 {
                    let (url, http) = self.pick();
                    let got: Value = http
                        .post(format!("{url}/v3/kv/range"))
                        .json(&json!({ "key": k }))
                        .send()
                        .await?
                        .json()
                        .await?;
                    let (mut doc, rev) = match got["kvs"].get(0) {
                        Some(kv) => {
                            let raw = B64.decode(kv["value"].as_str().context("value")?)?;
                            let rev: i64 = kv["mod_revision"]
                                .as_str()
                                .context("mod_revision")?
                                .parse()?;
                            (serde_json::from_slice::<Value>(&raw)?, rev)
                        }
                        None => (json!({ "state": {}, "version": 0 }), 0),
                    };
                    doc["state"]["reported"] = reported.clone();
                    doc["version"] = json!(doc["version"].as_u64().unwrap_or(0) + 1);
                    let txn = json!({
                        "compare": [{ "key": k, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string() }],
                        "success": [{ "request_put": { "key": k, "value": B64.encode(doc.to_string()) } }],
                    });
                    let r: Value = http
                        .post(format!("{url}/v3/kv/txn"))
                        .json(&txn)
                        .send()
                        .await?
                        .json()
                        .await?;
                    if r["succeeded"] == json!(true) {
                        return Ok(());
                    }
                    if r.get("error").is_some() {
                        bail!("txn: {r}");
                    }
                }
                bail!("shadow: 100 conflicting attempts");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_requested_size() {
        for size in [64, 256, 1024] {
            assert_eq!(value(size, 12345).len(), size);
        }
    }
}
