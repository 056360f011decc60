//! `fault-drill`: every fault and abuse the hardening review named, against a real pool (a coordinator
//! served here, worker processes with the real model), one fresh pool per scenario. Each prompt is
//! counted once: answered, failed with a clear error (a gRPC code other than UNKNOWN and a message that
//! says why), or lost (no answer within the drill's bound, or an unclear error). Retried counts answers
//! that took more than one attempt. Lost must be zero everywhere; the command exits non-zero otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modelpool::auth::AuthChannel;
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::proto::{self, ListWorkersRequest, WorkerState};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::local_pool::{LocalCoordinator, LocalPool, WorkerProcess, WorkerSpec};
use crate::{STARTUP_TIMEOUT, STOP_GRACE};
use coordinator::Config;
use coordinator::http_server::HttpLimits;
use coordinator::scheduler::SchedulerConfig;
use coordinator::worker_client::ProgressTimeouts;

#[derive(Debug, clap::Args)]
pub struct FaultDrillArgs {
    /// Run only these scenarios (comma-separated names, as printed); default: all.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub files: crate::WorkerFiles,
}

/// How long one prompt may take before the drill calls it lost.
const ANSWER_BOUND: Duration = Duration::from_secs(120);

/// One scenario's outcome.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DrillRow {
    pub scenario: String,
    pub requests: usize,
    pub ok: usize,
    pub failed_clearly: usize,
    pub retried: usize,
    pub lost: usize,
    pub max_latency_s: f64,
    /// The clear errors seen, one of each kind.
    pub errors: Vec<String>,
}

impl DrillRow {
    fn new(scenario: &str) -> Self {
        Self { scenario: scenario.into(), ..Self::default() }
    }

    fn record(&mut self, outcome: Option<Result<proto::PredictResponse, tonic::Status>>, latency: Duration) {
        self.requests += 1;
        self.max_latency_s = self.max_latency_s.max(latency.as_secs_f64());
        match outcome {
            Some(Ok(response)) => {
                self.ok += 1;
                self.retried += usize::from(response.attempts > 1);
            }
            Some(Err(status)) if status.code() != tonic::Code::Unknown && !status.message().is_empty() => {
                self.failed_clearly += 1;
                let kind = format!("{:?}: {}", status.code(), status.message().chars().take(100).collect::<String>());
                if !self.errors.iter().any(|e| e.split(':').next() == kind.split(':').next()) {
                    self.errors.push(kind);
                }
            }
            Some(Err(status)) => {
                self.lost += 1;
                self.errors.push(format!("unclear: {status:?}"));
            }
            None => self.lost += 1,
        }
    }
}

/// A coordinator served here and worker processes, with the drill's quick fault detection.
struct Pool {
    coordinator: LocalCoordinator,
    workers: LocalPool,
    spec: WorkerSpec,
}

fn drill_config() -> Config {
    let scheduler = SchedulerConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        progress: ProgressTimeouts { first_token: Duration::from_secs(20), between_tokens: Duration::from_secs(3) },
        ..SchedulerConfig::default()
    };
    Config::from(scheduler)
}

impl Pool {
    async fn start(config: Config, workers: usize, slots: u32, binary: &Path, model: &Path) -> anyhow::Result<Self> {
        let coordinator = LocalCoordinator::start(config).await?;
        let spec = WorkerSpec {
            binary: binary.to_path_buf(),
            model: model.to_path_buf(),
            coordinator: coordinator.url.clone(),
            threads: 1,
            slots,
            extra_args: Vec::new(),
        };
        let workers = LocalPool::start(&spec, workers, &coordinator.client, STARTUP_TIMEOUT).await.map_err(anyhow::Error::msg)?;
        Ok(Self { coordinator, workers, spec })
    }

    fn client(&self) -> CoordinatorClient<AuthChannel> {
        self.coordinator.client.clone()
    }

    async fn list(&self) -> Vec<proto::WorkerStatus> {
        self.client().list_workers(ListWorkersRequest {}).await.map(|r| r.into_inner().workers).unwrap_or_default()
    }

    /// Starts one more worker with `env` (a fault to inject) and waits until it serves.
    async fn add_worker(&mut self, env: &[&str]) -> anyhow::Result<()> {
        let before = self.list().await.len();
        let launcher: Vec<String> = std::iter::once("env".to_string()).chain(env.iter().map(|s| s.to_string())).collect();
        self.workers.workers.push(WorkerProcess::spawn_with(&launcher, &self.spec)?);
        self.wait_for(
            |workers| workers.iter().filter(|w| w.state == WorkerState::Serving as i32).count() > before,
            "the added worker serves",
        )
        .await
    }

    async fn wait_for(&self, done: impl Fn(&[proto::WorkerStatus]) -> bool, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !done(&self.list().await) {
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The worker process with a prompt in flight, once one has.
    async fn busy_worker(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let busy: Vec<u32> =
                self.list().await.iter().filter(|w| w.in_flight > 0).filter_map(|w| w.info.as_ref().map(|i| i.pid)).collect();
            if let Some(index) = self.workers.workers.iter().position(|w| busy.contains(&w.pid)) {
                return Ok(index);
            }
            anyhow::ensure!(Instant::now() < deadline, "no worker got a prompt");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.workers.stop(STOP_GRACE).await;
        self.coordinator.stop().await;
    }
}

fn prompt(i: usize, max_tokens: u32) -> proto::PredictRequest {
    let mut request = modelpool::PredictRequest::user(format!("Write a short note to visitor number {i}."), max_tokens);
    request.sampling.ignore_eos = true;
    proto::PredictRequest::from(&request)
}

/// Sends `requests` at once, each on its own task; each result with its latency (None: no answer in
/// the bound).
/// One fired prompt: its answer (none past the bound) and how long it took.
type Answer = (Option<Result<proto::PredictResponse, tonic::Status>>, Duration);

fn fire(client: &CoordinatorClient<AuthChannel>, requests: Vec<proto::PredictRequest>) -> tokio::task::JoinHandle<Vec<Answer>> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let answer =
                    tokio::time::timeout(ANSWER_BOUND, client.predict(request)).await.ok().map(|r| r.map(tonic::Response::into_inner));
                (answer, started.elapsed())
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap_or((None, ANSWER_BOUND)));
        }
        results
    })
}

async fn collect(row: &mut DrillRow, fired: tokio::task::JoinHandle<Vec<Answer>>) {
    for (outcome, latency) in fired.await.unwrap_or_default() {
        row.record(outcome, latency);
    }
}

type Files<'a> = (&'a Path, &'a Path);

/// One of two single-slot workers gets `signal` (and, when `resume_after` is given, SIGCONT that
/// long after) while 8 prompts run.
async fn one_of_two_workers(
    name: &str,
    (binary, model): Files<'_>,
    signal: i32,
    resume_after: Option<Duration>,
) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new(name);
    let pool = Pool::start(drill_config(), 2, 1, binary, model).await?;
    let fired = fire(&pool.client(), (0..8).map(|i| prompt(i, 24)).collect());
    let victim = &pool.workers.workers[pool.busy_worker().await?];
    victim.signal(signal);
    if let Some(pause) = resume_after {
        tokio::time::sleep(pause).await;
        victim.signal(libc::SIGCONT);
    }
    collect(&mut row, fired).await;
    pool.stop().await;
    Ok(row)
}

async fn no_live_worker((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("no-live-worker");
    let mut pool = Pool::start(drill_config(), 1, 1, binary, model).await?;
    let fired = fire(&pool.client(), (0..4).map(|i| prompt(i, 24)).collect());
    pool.busy_worker().await?;
    pool.workers.workers[0].signal(libc::SIGKILL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pool.add_worker(&[]).await?;
    collect(&mut row, fired).await;
    pool.stop().await;
    Ok(row)
}

async fn engine_panics((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("engine-panic");
    let mut pool = Pool::start(drill_config(), 1, 1, binary, model).await?;
    pool.add_worker(&["MODELPOOL_FAULT_ENGINE_PANIC_AFTER=1"]).await?;
    collect(&mut row, fire(&pool.client(), (0..8).map(|i| prompt(i, 16)).collect())).await;
    pool.stop().await;
    Ok(row)
}

async fn engine_stalls((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("engine-stall");
    let mut pool = Pool::start(drill_config(), 1, 1, binary, model).await?;
    pool.add_worker(&["MODELPOOL_FAULT_STALL_SECS=60"]).await?;
    collect(&mut row, fire(&pool.client(), (0..4).map(|i| prompt(i, 16)).collect())).await;
    if let Some(stuck) = pool.workers.workers.last() {
        stuck.signal(libc::SIGKILL);
    }
    pool.stop().await;
    Ok(row)
}

async fn poison_prompt((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("poison");
    let mut pool = Pool::start(drill_config(), 0, 4, binary, model).await?;
    pool.add_worker(&["MODELPOOL_FAULT_POISON=POISON-DRILL"]).await?;
    let mut requests: Vec<_> = (0..6).map(|i| prompt(i, 16)).collect();
    requests[2] = {
        let mut poison = modelpool::PredictRequest::user("Say POISON-DRILL.", 16);
        poison.sampling.ignore_eos = true;
        proto::PredictRequest::from(&poison)
    };
    let started = Instant::now();
    let results = tokio::time::timeout(ANSWER_BOUND, pool.client().predict_batch(proto::PredictBatchRequest { requests })).await;
    let latency = started.elapsed();
    match results {
        Ok(Ok(response)) => {
            for result in response.into_inner().results {
                let outcome = match result.outcome {
                    Some(proto::predict_result::Outcome::Response(response)) => Ok(response),
                    Some(proto::predict_result::Outcome::Error(error)) => {
                        Err(tonic::Status::new(tonic::Code::from(error.code), error.message))
                    }
                    None => Err(tonic::Status::unknown("")),
                };
                row.record(Some(outcome), latency);
            }
        }
        Ok(Err(status)) => (0..6).for_each(|_| row.record(Some(Err(status.clone())), latency)),
        Err(_) => (0..6).for_each(|_| row.record(None, latency)),
    }
    pool.stop().await;
    Ok(row)
}

async fn coordinator_restarts((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("coordinator-restart");
    let pool = Pool::start(drill_config(), 1, 1, binary, model).await?;
    let Pool { coordinator, workers, spec } = pool;
    let address = coordinator.url.trim_start_matches("http://").to_string();
    let client = coordinator.client.clone();
    collect(&mut row, fire(&client, (0..4).map(|i| prompt(i, 8)).collect())).await;
    coordinator.stop().await;
    // While it is down: refused at once, with a reason.
    collect(&mut row, fire(&client, (4..8).map(|i| prompt(i, 8)).collect())).await;
    let coordinator = LocalCoordinator::start_on(drill_config(), &address).await?;
    let pool = Pool { coordinator, workers, spec };
    pool.wait_for(|workers| !workers.is_empty(), "the worker registers with the new coordinator").await?;
    collect(&mut row, fire(&pool.client(), (8..12).map(|i| prompt(i, 8)).collect())).await;
    pool.stop().await;
    Ok(row)
}

async fn overload((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("overload-10x");
    let mut config = drill_config();
    config.scheduler.max_queue = 4;
    let pool = Pool::start(config, 2, 1, binary, model).await?;
    // Room for 2 running + 4 queued; ten times that at once.
    collect(&mut row, fire(&pool.client(), (0..60).map(|i| prompt(i, 16)).collect())).await;
    pool.stop().await;
    Ok(row)
}

async fn oversized_prompt((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("huge-prompt");
    let pool = Pool::start(drill_config(), 1, 1, binary, model).await?;
    let huge = proto::PredictRequest::from(&modelpool::PredictRequest::user("word ".repeat(40_000), 16));
    collect(&mut row, fire(&pool.client(), vec![huge, prompt(1, 8)])).await;
    pool.stop().await;
    Ok(row)
}

/// An SSE client that stops reading: the prompt must end (the worker counts it cancelled), not run on
/// for a reader that is gone. Counted as failed clearly when cancelled, lost otherwise.
async fn client_never_reads((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("never-reads");
    let mut config = drill_config();
    config.http_limits = HttpLimits { write_timeout: Duration::from_secs(2), ..HttpLimits::default() };
    let pool = Pool::start(config, 1, 1, binary, model).await?;
    let host: std::net::SocketAddr = pool.coordinator.http_url.trim_start_matches("http://").parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(host).await?;
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Count from one to one thousand in words."}],
        "max_tokens": 2000, "ignore_eos": true, "stream": true,
    })
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let started = Instant::now();
    let outcome = cancelled_within_bound(&pool, started)
        .await
        .then(|| Err(tonic::Status::cancelled("the client stopped reading: dropped after the write timeout, prompt cancelled")));
    row.record(outcome, started.elapsed());
    drop(stream);
    pool.stop().await;
    Ok(row)
}

/// The same over HTTP/2, where the socket stays healthy: a client that keeps its stream's window at 0
/// can take no byte of the answer. The stream must be dropped at the write timeout and the prompt
/// cancelled, not run on to max_tokens.
async fn http2_zero_window((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("h2-zero-window");
    let mut config = drill_config();
    config.http_limits = HttpLimits { write_timeout: Duration::from_secs(2), ..HttpLimits::default() };
    let pool = Pool::start(config, 1, 1, binary, model).await?;
    let host = pool.coordinator.http_url.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&host).await?;
    let (mut client, connection) = h2::client::Builder::new().initial_window_size(0).handshake::<_, axum::body::Bytes>(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::post(format!("http://{host}/v1/chat/completions")).header("content-type", "application/json").body(())?;
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Count from one to one thousand in words."}],
        "max_tokens": 2000, "ignore_eos": true, "stream": true,
    });
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(body.to_string().into(), true)?;
    let started = Instant::now();
    let response = response.await?;
    let outcome = cancelled_within_bound(&pool, started).await.then(|| {
        Err(tonic::Status::cancelled("an HTTP/2 stream held at a zero window: dropped after the write timeout, prompt cancelled"))
    });
    row.record(outcome, started.elapsed());
    drop(response);
    pool.stop().await;
    Ok(row)
}

/// Whether the one worker counted a prompt cancelled (rather than served) within [`ANSWER_BOUND`].
async fn cancelled_within_bound(pool: &Pool, started: Instant) -> bool {
    loop {
        let load = pool.list().await.first().and_then(|w| w.load).unwrap_or_default();
        if load.cancelled > 0 || load.served > 0 || started.elapsed() > ANSWER_BOUND {
            return load.cancelled > 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 300 sockets that send nothing, on the gRPC port (capped at 64 here) and the HTTP port (capped at
/// 64), while 8 prompts run: the applications' connections keep being served and the HTTP API keeps
/// answering `/health`, since the silent ones are refused, closed at their deadline or evicted.
async fn idle_sockets((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("idle-sockets");
    let mut config = drill_config();
    config.grpc_max_connections = 64;
    config.grpc_first_bytes_timeout = Duration::from_secs(2);
    config.http_limits = HttpLimits { max_connections: 64, header_read_timeout: Duration::from_secs(2), ..HttpLimits::default() };
    let pool = Pool::start(config, 2, 1, binary, model).await?;
    let client = pool.client();
    client.clone().list_workers(ListWorkersRequest {}).await?;
    let grpc = pool.coordinator.url.trim_start_matches("http://").to_string();
    let http = pool.coordinator.http_url.trim_start_matches("http://").to_string();
    let mut silent = Vec::new();
    for i in 0..300 {
        let address = if i % 2 == 0 { &grpc } else { &http };
        if let Ok(stream) = tokio::net::TcpStream::connect(address).await {
            silent.push(stream);
        }
    }
    let fired = fire(&client, (0..8).map(|i| prompt(i, 16)).collect());
    // `/health` beside 150 silent HTTP sockets counts as one more request: answered, or lost.
    let started = Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(10), health_status(&http)).await.ok().flatten();
    row.record((health == Some(200)).then(|| Ok(proto::PredictResponse::default())), started.elapsed());
    collect(&mut row, fired).await;
    drop(silent);
    pool.stop().await;
    Ok(row)
}

/// 24 prompts of 100 kB each at a coordinator whose queue holds 1 MiB of prompts, beside 4 ordinary
/// ones: what fits waits (and the worker refuses it, naming its token count), the rest is refused at
/// once with RESOURCE_EXHAUSTED naming the byte limit, the ordinary prompts are answered.
async fn queue_bytes((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("queue-bytes");
    let mut config = drill_config();
    config.scheduler.max_queue_bytes = 1 << 20;
    let pool = Pool::start(config, 1, 1, binary, model).await?;
    let big = |i: usize| proto::PredictRequest::from(&modelpool::PredictRequest::user(format!("{i} {}", "word ".repeat(20_000)), 8));
    let ordinary = fire(&pool.client(), (0..4).map(|i| prompt(i, 8)).collect());
    let big = fire(&pool.client(), (0..24).map(big).collect());
    collect(&mut row, ordinary).await;
    collect(&mut row, big).await;
    pool.stop().await;
    Ok(row)
}

/// The status code of a plain `GET /health` on its own connection.
async fn health_status(host: &str) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    String::from_utf8_lossy(&answer).split(' ').nth(1)?.parse().ok()
}

/// While 8 prompts run on two workers, a token holder re-registers one worker's own address and
/// instance (as ListWorkers shows them) to take it over: refused, and every prompt is answered by the
/// workers the pool had.
async fn takeover_under_load((binary, model): Files<'_>) -> anyhow::Result<DrillRow> {
    let mut row = DrillRow::new("takeover");
    let pool = Pool::start(drill_config(), 2, 1, binary, model).await?;
    let fired = fire(&pool.client(), (0..8).map(|i| prompt(i, 24)).collect());
    pool.busy_worker().await?;
    let victim = pool.list().await.into_iter().find(|w| w.in_flight > 0).and_then(|w| w.info);
    let takeover = proto::RegisterRequest { info: victim, protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32 };
    let refused = pool.client().register(takeover).await;
    anyhow::ensure!(
        matches!(&refused, Err(status) if status.code() == tonic::Code::AlreadyExists),
        "a takeover of a live worker was not refused: {refused:?}"
    );
    collect(&mut row, fired).await;
    anyhow::ensure!(pool.list().await.len() == 2, "the pool still has its two workers");
    pool.stop().await;
    Ok(row)
}

pub async fn run_fault_drill(args: FaultDrillArgs) -> anyhow::Result<()> {
    let (binary, model) = args.files.resolve().await?;
    let files = (binary.as_path(), model.as_path());
    let wanted = |name: &str| args.scenario.is_empty() || args.scenario.iter().any(|s| name.starts_with(s.as_str()));
    let mut rows = Vec::new();
    macro_rules! drill {
        ($name:literal, $scenario:expr) => {
            if wanted($name) {
                eprintln!("fault-drill: {} ...", $name);
                rows.push($scenario.await?);
            }
        };
    }
    drill!("sigkill", one_of_two_workers("sigkill", files, libc::SIGKILL, None));
    drill!("sigstop", one_of_two_workers("sigstop", files, libc::SIGSTOP, Some(Duration::from_secs(4))));
    drill!("drain", one_of_two_workers("drain", files, libc::SIGTERM, None));
    drill!("no-live-worker", no_live_worker(files));
    drill!("engine-panic", engine_panics(files));
    drill!("engine-stall", engine_stalls(files));
    drill!("poison", poison_prompt(files));
    drill!("coordinator-restart", coordinator_restarts(files));
    drill!("overload-10x", overload(files));
    drill!("huge-prompt", oversized_prompt(files));
    drill!("never-reads", client_never_reads(files));
    drill!("h2-zero-window", http2_zero_window(files));
    drill!("queue-bytes", queue_bytes(files));
    drill!("idle-sockets", idle_sockets(files));
    drill!("takeover", takeover_under_load(files));
    print_rows(&rows);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    let lost: usize = rows.iter().map(|r| r.lost).sum();
    anyhow::ensure!(lost == 0, "{lost} prompts were lost");
    Ok(())
}

fn print_rows(rows: &[DrillRow]) {
    println!(
        "{:<20} {:>8} {:>5} {:>15} {:>8} {:>5} {:>14}",
        "scenario", "requests", "ok", "failed clearly", "retried", "lost", "max latency s"
    );
    for r in rows {
        println!(
            "{:<20} {:>8} {:>5} {:>15} {:>8} {:>5} {:>14.1}",
            r.scenario, r.requests, r.ok, r.failed_clearly, r.retried, r.lost, r.max_latency_s
        );
    }
    println!();
    for r in rows.iter().filter(|r| !r.errors.is_empty()) {
        for error in &r.errors {
            println!("{}: {error}", r.scenario);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_is_counted_once_and_unclear_errors_are_lost() {
        let mut row = DrillRow::new("t");
        let answered = |attempts| Some(Ok(proto::PredictResponse { attempts, ..Default::default() }));
        row.record(answered(1), Duration::from_secs(1));
        row.record(answered(2), Duration::from_secs(3));
        row.record(Some(Err(tonic::Status::resource_exhausted("queue full"))), Duration::ZERO);
        row.record(Some(Err(tonic::Status::unknown("transport error"))), Duration::ZERO);
        row.record(Some(Err(tonic::Status::internal(""))), Duration::ZERO);
        row.record(None, Duration::ZERO);
        assert_eq!((row.requests, row.ok, row.retried, row.failed_clearly, row.lost), (6, 2, 1, 1, 3));
        assert_eq!(row.max_latency_s, 3.0);
    }
}
