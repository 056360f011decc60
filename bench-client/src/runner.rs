//! Load generation: a closed loop that keeps `concurrency` requests in flight, or an open loop of
//! Poisson arrivals, through the coordinator's Predict (the path production requests take) or any
//! OpenAI-compatible endpoint, and records what happened to each request.

use std::sync::Arc;
use std::time::Instant;

use modelpool::PredictRequest;
use modelpool::auth::AuthChannel;
use modelpool::proto::{self, coordinator_client::CoordinatorClient};
use tokio::sync::Semaphore;

use crate::openai_client::OpenAiClient;
use crate::record::RequestRecord;

/// What a bench sends its requests to.
#[derive(Clone)]
pub enum Target {
    /// A coordinator's gRPC Predict: timings come from the pool's own accounting.
    Pool(CoordinatorClient<AuthChannel>),
    /// An OpenAI-compatible HTTP endpoint, streamed: timings are measured at the client.
    OpenAi(OpenAiClient),
    /// Several OpenAI endpoints behind a balancer in the client (round-robin, least-connections).
    Balanced(crate::balancer::Balancer),
}

impl From<CoordinatorClient<AuthChannel>> for Target {
    fn from(client: CoordinatorClient<AuthChannel>) -> Self {
        Target::Pool(client)
    }
}

impl Target {
    pub(crate) async fn send(
        &self,
        request: &PredictRequest,
        index: usize,
        client_wait_ms: f64,
        progress: Option<&indicatif::ProgressBar>,
    ) -> RequestRecord {
        let record = match self {
            Target::Pool(client) => send(&mut client.clone(), proto::PredictRequest::from(request), index, client_wait_ms).await,
            Target::OpenAi(client) => client.send(request, index, client_wait_ms).await,
            Target::Balanced(balancer) => balancer.send(request, index, client_wait_ms).await,
        };
        if let Some(progress) = progress {
            progress.inc(1);
        }
        record
    }
}

/// Sends every request, at most `concurrency` at a time, and returns one record per request in input
/// order together with the wall-clock time of the whole run in seconds.
pub async fn run_closed_loop(target: impl Into<Target>, requests: &[PredictRequest], concurrency: usize) -> (Vec<RequestRecord>, f64) {
    run_closed_loop_with_progress(target, requests, concurrency, None).await
}

/// A progress bar on stderr for `total` requests, labelled `label` (hidden when stderr is not a terminal).
pub fn progress_bar(label: &str, total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} prompts, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// [`run_closed_loop`], advancing `progress` as requests finish.
pub async fn run_closed_loop_with_progress(
    target: impl Into<Target>,
    requests: &[PredictRequest],
    concurrency: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> (Vec<RequestRecord>, f64) {
    let target = target.into();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    // Requests start in input order: each waits here for a free place before its task is spawned (tasks
    // spawned together would take the places in whatever order the runtime first polls them).
    for (index, request) in requests.iter().enumerate() {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("semaphore never closed");
        let request = request.clone();
        let target = target.clone();
        let progress = progress.cloned();
        let client_wait_ms = ms(start.elapsed());
        tasks.push(tokio::spawn(async move {
            let record = target.send(&request, index, client_wait_ms, progress.as_ref()).await;
            drop(permit);
            record
        }));
    }
    (collect(tasks).await, start.elapsed().as_secs_f64())
}

/// Sends one request to a coordinator and records what happened to it.
async fn send(
    client: &mut CoordinatorClient<AuthChannel>,
    wire: proto::PredictRequest,
    index: usize,
    client_wait_ms: f64,
) -> RequestRecord {
    let sent = Instant::now();
    let mut record = RequestRecord { index, request_id: wire.request_id.clone(), client_wait_ms, ..Default::default() };
    let result = client.predict(wire).await;
    record.e2e_ms = ms(sent.elapsed());
    match result {
        Ok(response) => fill(&mut record, response.into_inner()),
        Err(status) => record.error = Some(format!("{:?}: {}", status.code(), status.message())),
    }
    record
}

/// The records of the request tasks, in input order; a task that died becomes a failed record.
async fn collect(tasks: Vec<tokio::task::JoinHandle<RequestRecord>>) -> Vec<RequestRecord> {
    let mut records = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.into_iter().enumerate() {
        records.push(task.await.unwrap_or_else(|e| RequestRecord {
            index,
            error: Some(format!("client task failed: {e}")),
            ..Default::default()
        }));
    }
    records
}

fn fill(record: &mut RequestRecord, response: proto::PredictResponse) {
    let mut timings = response.timings.unwrap_or_default();
    record.ok = true;
    record.inter_token_ms = std::mem::take(&mut timings.inter_token_ms);
    record.coordinator_queue_ms = timings.coordinator_queue_ms;
    record.worker_queue_ms = timings.queue_ms;
    record.ttft_ms = timings.coordinator_queue_ms + timings.ttft_ms;
    record.tpot_ms = if response.completion_tokens > 1 { timings.decode_ms / f64::from(response.completion_tokens - 1) } else { 0.0 };
    record.prompt_tokens = response.prompt_tokens;
    record.cached_tokens = response.cached_tokens;
    record.completion_tokens = response.completion_tokens;
    record.worker_id = response.worker_id;
    record.attempts = response.attempts;
    record.text = response.text;
}

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Arrival times (seconds from the start) of `count` requests arriving as a Poisson process at `rate`
/// per second; the same seed gives the same schedule, so every configuration sees the same arrivals.
pub fn poisson_arrivals(count: usize, rate: f64, seed: u64) -> Vec<f64> {
    let mut rng = modelpool::rng::SplitMix64::new(seed);
    let mut t = 0.0;
    (0..count)
        .map(|_| {
            t += rng.next_exponential(rate);
            t
        })
        .collect()
}

/// Open loop: requests are sent at their arrival times whether or not earlier ones have finished, as
/// independent users would send them; what the pool cannot absorb queues (or is refused, and recorded
/// as failed). `client_wait_ms` is how late a request was sent relative to its arrival time.
pub async fn run_open_loop(
    target: impl Into<Target>,
    requests: &[PredictRequest],
    arrivals: &[f64],
    progress: Option<&indicatif::ProgressBar>,
) -> (Vec<RequestRecord>, f64) {
    let target = target.into();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for (index, (request, &at)) in requests.iter().zip(arrivals).enumerate() {
        let request = request.clone();
        let target = target.clone();
        let progress = progress.cloned();
        let due = start + std::time::Duration::from_secs_f64(at);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let late = ms(tokio::time::Instant::now().saturating_duration_since(due));
            target.send(&request, index, late, progress.as_ref()).await
        }));
    }
    (collect(tasks).await, start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_are_reproducible_increasing_and_at_the_rate() {
        let a = poisson_arrivals(2000, 5.0, 1);
        assert_eq!(a, poisson_arrivals(2000, 5.0, 1));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let observed = a.len() as f64 / a[a.len() - 1];
        assert!((observed - 5.0).abs() < 0.4, "observed rate {observed}");
    }
}
