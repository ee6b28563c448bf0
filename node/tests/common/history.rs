//! Operation histories of concurrent clients, and their linearizability check by
//! `tools/lincheck` (built by `scripts/lincheck-bin.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

/// Checker time budget; past it the check fails as inconclusive.
const CHECK_TIMEOUT: &str = "120s";
/// Lines of checker output quoted in an error.
const OUTPUT_TAIL_LINES: usize = 30;

/// Kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Writes `value`.
    Put,
    /// Reads; `value` is what was read (`None`: absent).
    Get,
    /// Removes the key.
    Delete,
}

/// What the client knows about an operation's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Completed.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// A write that may or may not have taken effect, possibly long after `ret`.
    Unknown,
}

/// One operation, with call and return times in nanoseconds of the history's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Client number.
    pub client: u32,
    /// Operation.
    pub op: Op,
    /// Key (the register).
    pub key: String,
    /// Put: value written; get: value read (`None` = absent); delete: `None`.
    pub value: Option<String>,
    /// When the request was sent.
    pub call: i64,
    /// When the answer (or the error) came back.
    pub ret: i64,
    /// Outcome.
    pub status: Status,
}

/// Outcome counts of one kind of operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Completed.
    pub ok: u64,
    /// Did not happen.
    pub fail: u64,
    /// May or may not have happened.
    pub unknown: u64,
}

/// Outcome counts per kind of operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Puts.
    pub put: OpCounts,
    /// Gets.
    pub get: OpCounts,
    /// Deletes.
    pub delete: OpCounts,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("put", self.put),
            ("get", self.get),
            ("delete", self.delete),
        ];
        let text: Vec<String> = parts
            .iter()
            .map(|(n, c)| format!("{n} {}/{}/{}", c.ok, c.fail, c.unknown))
            .collect();
        write!(f, "{} (ok/fail/unknown)", text.join(", "))
    }
}

/// A thread-safe operation recorder with its own monotonic clock.
#[derive(Debug)]
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history started: the clock for `call` and `ret`.
    pub fn now_ns(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Event>> {
        // A client that panicked leaves complete events behind.
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an operation.
    pub fn record(&self, e: Event) {
        self.lock().push(e);
    }

    /// The operations so far, in recording order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy with the same clock.
    pub fn snapshot(&self) -> History {
        History {
            start: self.start,
            events: Mutex::new(self.events()),
        }
    }

    /// Outcome counts per kind of operation.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in self.lock().iter() {
            let per_op = match e.op {
                Op::Put => &mut c.put,
                Op::Get => &mut c.get,
                Op::Delete => &mut c.delete,
            };
            match e.status {
                Status::Ok => per_op.ok += 1,
                Status::Fail => per_op.fail += 1,
                Status::Unknown => per_op.unknown += 1,
            }
        }
        c
    }

    /// Per key, the value of the acknowledged put that returned last. Concurrent or unknown
    /// writes may still legitimately win: see [`History::possible_final_values`].
    pub fn acknowledged_writes(&self) -> BTreeMap<String, String> {
        let mut last: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for e in self.lock().iter() {
            if let (Op::Put, Status::Ok, Some(v)) = (e.op, e.status, &e.value) {
                if last.get(&e.key).is_none_or(|(ret, _)| e.ret >= *ret) {
                    last.insert(e.key.clone(), (e.ret, v.clone()));
                }
            }
        }
        last.into_iter().map(|(k, (_, v))| (k, v)).collect()
    }

    /// Per written key, every value a read sent after all writes ended may return (`None`:
    /// absent). A write can be the last one unless a completed write started after it returned;
    /// an unknown write can always be. A lost acknowledged write shows as a read outside the set.
    pub fn possible_final_values(&self) -> BTreeMap<String, BTreeSet<Option<String>>> {
        let events = self.lock();
        let mut writes: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in events.iter() {
            if e.op != Op::Get && e.status != Status::Fail {
                writes.entry(&e.key).or_default().push(e);
            }
        }
        writes
            .into_iter()
            .map(|(key, ws)| {
                let done = |w: &Event| w.status == Status::Ok;
                let mut values = BTreeSet::new();
                if !ws.iter().any(|w| done(w)) {
                    values.insert(None);
                }
                for w in &ws {
                    let superseded = done(w)
                        && ws
                            .iter()
                            .any(|v| !std::ptr::eq(*v, *w) && done(v) && v.call > w.ret);
                    if !superseded {
                        values.insert(if w.op == Op::Put {
                            w.value.clone()
                        } else {
                            None
                        });
                    }
                }
                (key.to_string(), values)
            })
            .collect()
    }

    /// Writes the history as JSON lines, the checker's input format.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for e in self.lock().iter() {
            serde_json::to_writer(&mut out, e)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Writes the history to `path` and checks it: see [`check_linearizable`].
    pub fn check(&self, path: &Path) -> Result<String, String> {
        self.write_jsonl(path)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        check_linearizable(path)
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the node crate is inside the repository")
        .to_path_buf()
}

/// `<target>/<profile>/lincheck/<name>.jsonl`: a history path that outlives the test, so a
/// failure's history and visualization can be inspected afterwards.
pub fn history_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_devicegrid"))
        .parent()
        .expect("the binary is in a target directory")
        .join("lincheck")
        .join(format!("{name}.jsonl"))
}

/// The checker binary, built by `scripts/lincheck-bin.sh` when needed.
pub fn lincheck_bin() -> Result<PathBuf, String> {
    let script = repo_root().join("scripts/lincheck-bin.sh");
    let out = Command::new(&script)
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}); the linearizability checker needs Go:\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        return Err(format!("{} printed no path", script.display()));
    }
    Ok(PathBuf::from(path))
}

/// Checks the JSON-lines history at `path`. `Ok`: the checker's summary. `Err`: not
/// linearizable (the message quotes the checker and names the visualization, `path` with
/// extension `html`), the check timed out, or the checker could not be built or run.
pub fn check_linearizable(path: &Path) -> Result<String, String> {
    let bin = lincheck_bin()?;
    let html = path.with_extension("html");
    let out = Command::new(&bin)
        .args(["--timeout", CHECK_TIMEOUT, "--html"])
        .arg(&html)
        .arg(path)
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n");
    match out.status.code() {
        Some(0) => Ok(text.trim().to_string()),
        Some(1) => Err(format!(
            "history {} is not linearizable:\n{tail}\nvisualization: {}",
            path.display(),
            html.display()
        )),
        _ => Err(format!(
            "lincheck could not decide on {} ({}):\n{tail}",
            path.display(),
            out.status
        )),
    }
}
