//! `overload-bench`: what the pool does at many times its capacity. A coordinator daemon (its own
//! process, so that its memory is its own) and local workers; first a closed-loop calibration measures
//! the requests per second the pool serves, then an open loop offers `--overload` times that rate.
//! Printed: admitted and refused counts, how fast refusals come, the latency of admitted requests
//! against the bound the queue sets, and the coordinator's memory before, at its peak and after.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bench_client::record::RequestRecord;
use bench_client::runner::{poisson_arrivals, run_closed_loop, run_open_loop};
use bench_client::stats::quantile;
use modelpool::PredictRequest;
use modelpool::memory::{ProcessMemory, mib};
use tokio::process::{Child, Command};

use crate::local_pool::{LocalPool, WorkerSpec};
use crate::{STARTUP_TIMEOUT, STOP_GRACE};

#[derive(Debug, clap::Args)]
pub struct OverloadBenchArgs {
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Threads per worker. Default: cores divided among the workers.
    #[arg(long)]
    pub threads: Option<u32>,
    /// The coordinator's queue limit (`serve --max-queue`).
    #[arg(long, default_value_t = 16)]
    pub max_queue: usize,
    /// Offered load as a multiple of the calibrated rate.
    #[arg(long, default_value_t = 10.0)]
    pub overload: f64,
    /// How long the overload lasts.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Tokens generated per request (end-of-sequence ignored, so every request costs the same).
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    #[command(flatten)]
    pub files: crate::WorkerFiles,
}

fn request(i: usize, max_tokens: u32) -> PredictRequest {
    let mut request = PredictRequest::user(format!("Say hello to visitor number {i}."), max_tokens);
    request.request_id = format!("o{i}");
    request.sampling.ignore_eos = true;
    request
}

/// A free port on 127.0.0.1 for the coordinator process (released just before it binds it).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The coordinator daemon as a child process of this one.
async fn spawn_coordinator(port: u16, max_queue: usize) -> anyhow::Result<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        // gRPC only: the bench does not use the HTTP API, and its default port may be taken.
        .args(["serve", "--port", &port.to_string(), "--no-http", "--max-queue", &max_queue.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

/// Samples one process's RSS every 100 ms until stopped; keeps the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(memory) = ProcessMemory::of_pid(pid) {
                        peak.fetch_max(memory.rss_bytes, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { peak, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OverloadResult {
    pub capacity_rps: f64,
    pub offered_rps: f64,
    pub offered: usize,
    pub admitted: usize,
    pub rejected: usize,
    pub other_failures: usize,
    pub rejection_p50_ms: f64,
    pub rejection_p99_ms: f64,
    pub admitted_p50_ms: f64,
    pub admitted_p99_ms: f64,
    pub admitted_max_ms: f64,
    /// Longest an admitted request should take: a full queue and every slot ahead of it, at the
    /// calibrated rate, plus its own service time.
    pub latency_bound_ms: f64,
    pub coordinator_rss_before: u64,
    pub coordinator_rss_peak: u64,
    pub coordinator_rss_after: u64,
}

pub async fn run_overload_bench(args: OverloadBenchArgs) -> anyhow::Result<OverloadResult> {
    anyhow::ensure!(args.workers >= 1 && args.slots >= 1 && args.max_queue >= 1, "--workers, --slots and --max-queue must be at least 1");
    anyhow::ensure!(args.overload > 0.0 && args.seconds >= 1, "--overload must be positive and --seconds at least 1");
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let threads = args.threads.unwrap_or((cores / args.workers as u32).max(1));
    let (worker_bin, model) = args.files.resolve().await?;

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut coordinator = spawn_coordinator(port, args.max_queue).await?;
    let coordinator_pid = coordinator.id().unwrap_or(0);
    let client = bench_client::connect(&url, &modelpool::auth::Credentials::default())?;
    let spec = WorkerSpec { binary: worker_bin, model, coordinator: url.clone(), threads, slots: args.slots, extra_args: Vec::new() };
    let pool = LocalPool::start(&spec, args.workers, &client, STARTUP_TIMEOUT).await.map_err(anyhow::Error::msg)?;

    let in_flight = args.workers * args.slots as usize;
    eprintln!("== calibrating: {} worker(s) x {} slot(s), {in_flight} in flight", args.workers, args.slots);
    let calibration: Vec<PredictRequest> = (0..in_flight * 6).map(|i| request(i, args.max_tokens)).collect();
    let (records, wall_s) = run_closed_loop(client.clone(), &calibration, in_flight).await;
    anyhow::ensure!(records.iter().all(|r| r.ok), "calibration failed: {:?}", records.iter().find_map(|r| r.error.clone()));
    let capacity_rps = records.len() as f64 / wall_s;
    let service_ms = median(&records.iter().map(|r| r.e2e_ms).collect::<Vec<_>>());

    let offered_rps = capacity_rps * args.overload;
    let count = (offered_rps * args.seconds as f64).ceil() as usize;
    eprintln!("== overload: {count} requests at {offered_rps:.1}/s ({:.0}x the {capacity_rps:.1}/s the pool serves)", args.overload);
    let rss_before = ProcessMemory::of_pid(coordinator_pid).map(|m| m.rss_bytes).unwrap_or(0);
    let watch = RssWatch::start(coordinator_pid);
    let offered: Vec<PredictRequest> = (0..count).map(|i| request(i, args.max_tokens)).collect();
    let (records, _) = run_open_loop(client.clone(), &offered, &poisson_arrivals(count, offered_rps, 7), None).await;
    let rss_peak = watch.finish().await;
    let rss_after = ProcessMemory::of_pid(coordinator_pid).map(|m| m.rss_bytes).unwrap_or(0);

    pool.stop(STOP_GRACE).await;
    let _ = coordinator.start_kill();
    let _ = coordinator.wait().await;

    let result = summarise(
        &records,
        capacity_rps,
        offered_rps,
        in_flight + args.max_queue,
        service_ms,
        [rss_before, rss_peak.max(rss_before), rss_after],
    );
    print_result(&result, &args);
    Ok(result)
}

fn median(samples: &[f64]) -> f64 {
    quantile(samples, 0.5).unwrap_or(0.0)
}

fn summarise(
    records: &[RequestRecord],
    capacity_rps: f64,
    offered_rps: f64,
    held: usize,
    service_ms: f64,
    rss: [u64; 3],
) -> OverloadResult {
    let is_rejection = |r: &RequestRecord| r.error.as_deref().is_some_and(|e| e.starts_with("ResourceExhausted"));
    let admitted: Vec<f64> = records.iter().filter(|r| r.ok).map(|r| r.e2e_ms).collect();
    let rejections: Vec<f64> = records.iter().filter(|r| is_rejection(r)).map(|r| r.e2e_ms).collect();
    let q = |samples: &[f64], p: f64| quantile(samples, p).unwrap_or(0.0);
    OverloadResult {
        capacity_rps,
        offered_rps,
        offered: records.len(),
        admitted: admitted.len(),
        rejected: rejections.len(),
        other_failures: records.len() - admitted.len() - rejections.len(),
        rejection_p50_ms: q(&rejections, 0.5),
        rejection_p99_ms: q(&rejections, 0.99),
        admitted_p50_ms: q(&admitted, 0.5),
        admitted_p99_ms: q(&admitted, 0.99),
        admitted_max_ms: admitted.iter().copied().fold(0.0, f64::max),
        latency_bound_ms: held as f64 / capacity_rps * 1000.0 + service_ms,
        coordinator_rss_before: rss[0],
        coordinator_rss_peak: rss[1],
        coordinator_rss_after: rss[2],
    }
}

fn print_result(r: &OverloadResult, args: &OverloadBenchArgs) {
    println!(
        "overload-bench: {} worker(s) x {} slot(s), coordinator --max-queue {}, {} tokens per request",
        args.workers, args.slots, args.max_queue, args.max_tokens
    );
    println!("  pool capacity (calibrated):  {:.1} requests/s", r.capacity_rps);
    println!(
        "  offered:                     {} requests at {:.1}/s ({:.0}x) for {} s",
        r.offered, r.offered_rps, args.overload, args.seconds
    );
    println!("  admitted:                    {}", r.admitted);
    println!(
        "  rejected RESOURCE_EXHAUSTED: {} (answered in p50 {:.1} ms, p99 {:.1} ms)",
        r.rejected, r.rejection_p50_ms, r.rejection_p99_ms
    );
    println!("  other failures:              {}", r.other_failures);
    println!(
        "  admitted latency:            p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (expected about {:.0} ms: a full queue and every slot ahead, then its own run)",
        r.admitted_p50_ms, r.admitted_p99_ms, r.admitted_max_ms, r.latency_bound_ms
    );
    println!(
        "  coordinator RSS:             {} MiB before, {} MiB peak, {} MiB after",
        mib(r.coordinator_rss_before),
        mib(r.coordinator_rss_peak),
        mib(r.coordinator_rss_after)
    );
}
