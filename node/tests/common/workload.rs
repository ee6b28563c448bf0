//! A register workload: client threads put and get random keys of one map through random
//! members and record every operation in a [`History`] for the linearizability check.
//!
//! The clients use `reqwest::blocking` on their own threads. [`Client`] must not be created,
//! used or dropped on an async runtime thread (wrap it in `spawn_blocking` there).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use devicegrid_proto::{ErrorBody, ErrorCode};
use rand::Rng;
use serde_json::Value;

use super::history::{Counts, Event, History, Op, Status};

/// Error descriptions kept for [`Workload::recent_errors`].
const RECENT_ERRORS: usize = 20;

/// Shape of a workload.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Client threads.
    pub clients: u32,
    /// Keys `lin-0` .. `lin-{keys-1}`.
    pub keys: u32,
    /// Map written to.
    pub map: String,
    /// Share of operations that are gets.
    pub read_ratio: f64,
    /// Longest pause between a client's operations (uniformly random up to it).
    pub think: Duration,
    /// Per-request timeout; longer than the members' own request timeout.
    pub request_timeout: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 4,
            keys: 40,
            map: "lin".into(),
            read_ratio: 0.5,
            think: Duration::from_millis(5),
            request_timeout: Duration::from_secs(12),
        }
    }
}

/// One client's HTTP connection pool, recording each operation it makes.
pub struct Client {
    id: u32,
    map: String,
    http: reqwest::blocking::Client,
}

/// An error body's `error.code`.
fn error_code(body: &str) -> Option<ErrorCode> {
    serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error.code)
}

/// A request error with its causes ("connection refused" is a cause, not the error).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

impl Client {
    /// A client numbered `id` writing to `map`.
    pub fn new(id: u32, map: &str, request_timeout: Duration) -> Self {
        Client {
            id,
            map: map.to_string(),
            http: reqwest::blocking::Client::builder()
                .timeout(request_timeout)
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        }
    }

    fn url(&self, base: &str, key: &str) -> String {
        format!("{base}/v1/maps/{}/{key}", self.map)
    }

    /// `PUT` of the JSON string `value`; records and returns the operation and, unless it
    /// succeeded, a description of the error.
    pub fn put(&self, h: &History, base: &str, key: &str, value: &str) -> (Event, Option<String>) {
        let call = h.now_ns();
        let resp = self.http.put(self.url(base, key)).json(&value).send();
        let (status, error) = match resp {
            Ok(r) => {
                let code = r.status().as_u16();
                let body = r.text().unwrap_or_default();
                let err = error_code(&body);
                let status = match code {
                    200 | 201 => Status::Ok,
                    // Refused before anything was proposed (unavailable, not_leader,
                    // overloaded).
                    503 if err.is_some_and(ErrorCode::retryable) => Status::Fail,
                    400..=499 => Status::Fail,
                    // 504 outcome_unknown, 5xx, anything unexpected.
                    _ => Status::Unknown,
                };
                let error = (status != Status::Ok).then(|| format!("put {key}: {code} {body}"));
                (status, error)
            }
            // No connection, so nothing was sent.
            Err(e) if e.is_connect() => {
                (Status::Fail, Some(format!("put {key}: {}", describe(&e))))
            }
            Err(e) => (
                Status::Unknown,
                Some(format!("put {key}: {}", describe(&e))),
            ),
        };
        let e = Event {
            client: self.id,
            op: Op::Put,
            key: key.to_string(),
            value: Some(value.to_string()),
            call,
            ret: h.now_ns(),
            status,
        };
        h.record(e.clone());
        (e, error)
    }

    /// Linearizable `GET`; records and returns the operation (value read, `None`: absent)
    /// and, unless it succeeded, a description of the error.
    pub fn get(&self, h: &History, base: &str, key: &str) -> (Event, Option<String>) {
        let call = h.now_ns();
        let (status, value, error) = match self.http.get(self.url(base, key)).send() {
            Ok(r) => {
                let code = r.status().as_u16();
                let body = r.text().unwrap_or_default();
                match (code, serde_json::from_str::<Value>(&body)) {
                    (200, Ok(v)) => match &v["value"] {
                        Value::String(s) => (Status::Ok, Some(s.clone()), None),
                        Value::Null => (Status::Fail, None, Some(format!("get {key}: {body}"))),
                        // Not written by a workload: the check reports it as never written.
                        other => (Status::Ok, Some(other.to_string()), None),
                    },
                    (404, _) if error_code(&body) == Some(ErrorCode::NotFound) => {
                        (Status::Ok, None, None)
                    }
                    _ => (
                        Status::Fail,
                        None,
                        Some(format!("get {key}: {code} {body}")),
                    ),
                }
            }
            Err(e) => (
                Status::Fail,
                None,
                Some(format!("get {key}: {}", describe(&e))),
            ),
        };
        let e = Event {
            client: self.id,
            op: Op::Get,
            key: key.to_string(),
            value,
            call,
            ret: h.now_ns(),
            status,
        };
        h.record(e.clone());
        (e, error)
    }
}

/// Shared between the workload and its clients.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok_writes: AtomicU64,
    ok_reads: AtomicU64,
    errors: Mutex<VecDeque<String>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() == RECENT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(e);
    }
}

/// Running client threads; [`Workload::stop`] ends them and hands over the history.
pub struct Workload {
    history: Arc<History>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `cfg.clients` threads against the member base URLs in `members`
    /// (e.g. `http://127.0.0.1:7001`), which the test may change while the workload runs.
    pub fn start(members: Arc<RwLock<Vec<String>>>, cfg: WorkloadConfig) -> Self {
        let history = Arc::new(History::new());
        let shared = Arc::new(Shared::default());
        let threads = (0..cfg.clients)
            .map(|id| {
                let (members, cfg) = (members.clone(), cfg.clone());
                let (history, shared) = (history.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("lin-client-{id}"))
                    .spawn(move || run_client(id, &members, &cfg, &history, &shared))
                    .expect("spawn a client thread")
            })
            .collect();
        Workload {
            history,
            shared,
            threads,
        }
    }

    /// Acknowledged puts so far.
    pub fn ok_writes(&self) -> u64 {
        self.shared.ok_writes.load(Ordering::Relaxed)
    }

    /// Successful gets so far.
    pub fn ok_reads(&self) -> u64 {
        self.shared.ok_reads.load(Ordering::Relaxed)
    }

    /// Outcome counts so far.
    pub fn counts(&self) -> Counts {
        self.history.counts()
    }

    /// Per key, the last acknowledged value so far: see [`History::acknowledged_writes`].
    pub fn acknowledged_writes(&self) -> BTreeMap<String, String> {
        self.history.acknowledged_writes()
    }

    /// The latest error descriptions (oldest first), for failure messages.
    pub fn recent_errors(&self) -> Vec<String> {
        let errors = self.shared.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().cloned().collect()
    }

    /// Stops the clients and returns the history. Blocks until requests in flight end (at
    /// most the request timeout).
    pub fn stop(self) -> History {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            // A panicked client has recorded what it completed.
            let _ = t.join();
        }
        Arc::try_unwrap(self.history).unwrap_or_else(|h| h.snapshot())
    }
}

fn run_client(
    id: u32,
    members: &RwLock<Vec<String>>,
    cfg: &WorkloadConfig,
    history: &History,
    shared: &Shared,
) {
    let client = Client::new(id, &cfg.map, cfg.request_timeout);
    let mut rng = rand::thread_rng();
    let mut writes = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let base = {
            let m = members.read().unwrap_or_else(|e| e.into_inner());
            (!m.is_empty()).then(|| m[rng.gen_range(0..m.len())].clone())
        };
        let Some(base) = base else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let key = format!("lin-{}", rng.gen_range(0..cfg.keys.max(1)));
        let (e, error) = if rng.gen_bool(cfg.read_ratio.clamp(0.0, 1.0)) {
            client.get(history, &base, &key)
        } else {
            writes += 1;
            client.put(history, &base, &key, &format!("c{id}-{writes}"))
        };
        match (e.op, e.status) {
            (Op::Put, Status::Ok) => shared.ok_writes.fetch_add(1, Ordering::Relaxed),
            (Op::Get, Status::Ok) => shared.ok_reads.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if let Some(error) = error {
            shared.note_error(format!("client {id} via {base}: {error}"));
        }
        let think = cfg.think.as_micros() as u64;
        if think > 0 {
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..=think)));
        }
    }
}
