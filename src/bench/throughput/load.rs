//! The load generator of `minos bench throughput`: the same closed-loop
//! clients drive minos and etcd. Each client holds one keep-alive HTTP/1.1
//! connection and sends its next request when the last one answered; a
//! cell ends when its operations are done or its time is up, whichever
//! comes first (every loop is bounded in count and time).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use tokio::time::Instant;

/// Writes sent in this process (every write's value is unique in the run).
static WRITES: AtomicU64 = AtomicU64::new(0);

/// A system under test and how to talk to it.
#[derive(Clone, Debug)]
pub(super) enum Backend {
    /// minos nodes: the public API with a bearer token.
    Minos { token: String },
    /// etcd members: the v3 JSON gateway (`/v3/kv/...`).
    Etcd,
}

impl Backend {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Backend::Minos { .. } => "minos",
            Backend::Etcd => "etcd",
        }
    }
}

/// One kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Op {
    /// minos: create a `kv` session; etcd: put a new key.
    Create,
    /// minos: a state-changing call (`set`) to a live session; etcd: put
    /// over an existing key.
    Write,
    /// minos: a linearizable read of a session; etcd: a linearizable range.
    Read,
}

impl Op {
    pub(super) fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Write => "write",
            Op::Read => "read",
        }
    }
}

/// What a cell measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct CellResult {
    /// Operations answered 2xx.
    pub ok: usize,
    /// Operations answered otherwise (status, or 0 for a transport error).
    pub failed: usize,
    /// The failures by status code (0: no answer).
    pub failures: Vec<(u16, usize)>,
    /// Wall-clock seconds of the cell.
    pub seconds: f64,
    /// Successful operations per second.
    pub rate: f64,
    /// Latency percentiles of the successful operations, in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time (user + system) the measured system's processes spent per
    /// successful operation, in microseconds, all members together: where
    /// the cores of a machine both share go.
    pub cpu_us_per_op: f64,
    /// minos only: Raft log entries the leader appended per successful
    /// operation (how well the batchers packed the cell's writes).
    pub entries_per_op: Option<f64>,
}

/// A cell to run: one operation by `clients` clients over `endpoints`
/// (round robin by client), on the keys `keys` (each client takes the next
/// unused one), at most `ops` operations and `limit` time.
pub(super) struct Cell<'a> {
    pub backend: &'a Backend,
    pub op: Op,
    pub clients: usize,
    pub endpoints: &'a [String],
    pub keys: &'a [String],
    pub ops: usize,
    pub limit: Duration,
    pub value: &'a str,
    /// Print how far the cell got this often (the bulk load: minutes).
    pub progress: Option<Duration>,
}

/// Runs one cell and measures it.
pub(super) async fn run_cell(cell: Cell<'_>) -> CellResult {
    let next = Arc::new(AtomicUsize::new(0));
    let total = cell.ops.min(if cell.op == Op::Create {
        cell.keys.len()
    } else {
        usize::MAX
    });
    let started = Instant::now();
    let deadline = started + cell.limit;
    let mut workers = Vec::with_capacity(cell.clients);
    let all_keys: Arc<[String]> = cell.keys.into();
    for client in 0..cell.clients.max(1) {
        let endpoint = cell.endpoints[client % cell.endpoints.len()].clone();
        let keys = all_keys.clone();
        let worker = Worker {
            backend: cell.backend.clone(),
            op: cell.op,
            http: http_client(),
            endpoint,
            value: cell.value.to_string(),
        };
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures: Vec<u16> = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    break;
                }
                let key = &keys[n % keys.len()];
                let sent = Instant::now();
                match worker.send(key, n, deadline).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(status) => failures.push(status),
                }
            }
            (latencies, failures)
        }));
    }
    let ticker = cell.progress.map(|every| {
        let next = next.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(started + every, every);
            loop {
                tick.tick().await;
                let sent = next.load(Ordering::Relaxed).min(total);
                let secs = started.elapsed().as_secs_f64();
                super::say(&format!(
                    "  ... {sent} of {total} sent in {secs:.0} s ({:.0}/s)",
                    sent as f64 / secs.max(1e-9)
                ));
            }
        })
    });
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for worker in workers {
        if let Ok((l, f)) = worker.await {
            latencies.extend(l);
            failures.extend(f);
        }
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let seconds = started.elapsed().as_secs_f64();
    summarize(latencies, failures, seconds)
}

fn summarize(mut latencies: Vec<Duration>, failures: Vec<u16>, seconds: f64) -> CellResult {
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| ms(*d))
    };
    let mut by_status: std::collections::BTreeMap<u16, usize> = Default::default();
    for status in &failures {
        *by_status.entry(*status).or_default() += 1;
    }
    CellResult {
        ok: latencies.len(),
        failed: failures.len(),
        failures: by_status.into_iter().collect(),
        seconds,
        rate: latencies.len() as f64 / seconds.max(1e-9),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: latencies.last().map_or(0.0, |d| ms(*d)),
        cpu_us_per_op: 0.0,
        entries_per_op: None,
    }
}

/// One keep-alive connection per client, as a load generator of one
/// process per client would have.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

struct Worker {
    backend: Backend,
    op: Op,
    http: reqwest::Client,
    endpoint: String,
    value: String,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Worker {
    /// Sends operation number `n` on `key`; the status code of a failure
    /// (0: no answer before `deadline` or a transport error). Every write
    /// carries a value no earlier operation of the run wrote (`w` and a
    /// number counted over the whole run replace the value's first
    /// characters), so none is a no-op: a create of key `n` and a later
    /// write numbered `n` in its own cell used to carry the same value, and
    /// a minos session whose state does not change commits nothing.
    async fn send(&self, key: &str, n: usize, deadline: Instant) -> Result<(), u16> {
        let base = &self.endpoint;
        let number = match self.op {
            Op::Write => format!("w{}", WRITES.fetch_add(1, Ordering::Relaxed)),
            _ => n.to_string(),
        };
        let value = format!(
            "{number}{}",
            &self.value[number.len().min(self.value.len())..]
        );
        let request = match (&self.backend, self.op) {
            (Backend::Minos { token }, op) => {
                let request = match op {
                    Op::Create => self
                        .http
                        .post(format!("http://{base}/v1/sessions"))
                        .json(&serde_json::json!({"id": key, "kind": "kv", "state": {"v": value}})),
                    // With an idempotency key, as minos's clients (CLI,
                    // `Client::call`, `Sessions::call`) send every call.
                    Op::Write => self
                        .http
                        .post(format!("http://{base}/v1/sessions/{key}/call"))
                        .header(crate::api::IDEMPOTENCY_KEY, format!("bench-{number}"))
                        .json(&serde_json::json!({"op": "set", "value": {"v": value}})),
                    Op::Read => self.http.get(format!("http://{base}/v1/sessions/{key}")),
                };
                request.bearer_auth(token)
            }
            (Backend::Etcd, Op::Create | Op::Write) => self
                .http
                .post(format!("http://{base}/v3/kv/put"))
                .json(&serde_json::json!({"key": b64(key), "value": b64(&value)})),
            (Backend::Etcd, Op::Read) => self
                .http
                .post(format!("http://{base}/v3/kv/range"))
                .json(&serde_json::json!({"key": b64(key)})),
        };
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match request
            .timeout(budget + Duration::from_secs(5))
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                // Read the whole body: the connection is then reused.
                let _ = response.bytes().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status.as_u16())
                }
            }
            Err(e) => Err(e.status().map_or(0, |s| s.as_u16())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let latencies = (1..=100).map(Duration::from_millis).collect();
        let result = summarize(latencies, vec![503, 503, 0], 2.0);
        assert_eq!(result.ok, 100);
        assert_eq!(result.failed, 3);
        assert_eq!(result.failures, vec![(0, 1), (503, 2)]);
        assert!((result.rate - 50.0).abs() < 1e-9);
        assert!((result.p50_ms - 50.0).abs() < 1e-9);
        assert!((result.p99_ms - 99.0).abs() < 1e-9);
        assert!((result.max_ms - 100.0).abs() < 1e-9);
    }
}
