//! A page to watch the running pool at `/` on the HTTP port, for a local user without Prometheus: the
//! workers (address, engine, model, slots busy, queues, prompt tokens reused, tokens/s, memory), the
//! coordinator's queue, the last errors and throughput over the last minutes as a small chart. One
//! self-contained HTML file (no external assets) that polls `/status.json`. The page holds no data, so
//! it is served to anyone; the JSON is behind the API keys like `/metrics`, and the page asks for a key
//! when the JSON answers 401 (a browser sends no `Authorization` header on its own).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use modelpool::membership::WorkerStatus;
use serde_json::{Value, json};

use crate::activity;
use crate::metrics::CoordinatorMetrics;
use crate::model_names::ModelNames;
use crate::scheduler::SchedulerGauges;

const PAGE: &str = include_str!("status_page.html");

pub async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], PAGE).into_response()
}

/// What `/status.json` answers: the pool as the scheduler last saw it and the coordinator's counts.
pub fn status(workers: &[WorkerStatus], gauges: SchedulerGauges, metrics: &CoordinatorMetrics, names: &ModelNames) -> Response {
    let outcomes: serde_json::Map<String, Value> = metrics.outcomes().into_iter().map(|(name, n)| (name.into(), n.into())).collect();
    let body = json!({
        "models": names.listed(workers.iter().map(|w| &w.report.description)),
        "queue": {"depth": gauges.queue_depth, "serving_workers": gauges.serving_workers, "workers": workers.len()},
        "requests": outcomes,
        "workers": workers.iter().map(worker).collect::<Vec<_>>(),
        "recent_errors": metrics.activity.recent_errors(),
        "throughput": {"interval_s": activity::SAMPLE_EVERY.as_secs(), "samples": metrics.activity.series()},
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

fn worker(w: &WorkerStatus) -> Value {
    let (description, load, memory) = (&w.report.description, &w.report.load, &w.report.memory);
    json!({
        "id": w.worker_id,
        "address": description.address,
        "engine": description.engine,
        "model": description.model_name,
        "cpu_kernels": description.cpu_kernels,
        "phase": format!("{:?}", w.phase).to_lowercase(),
        "slots": description.slots,
        "slots_in_use": load.slots_in_use,
        "in_flight": w.in_flight,
        "queued": load.queued,
        "completed": w.completed,
        "tokens_generated": w.tokens_generated,
        "prompt_tokens_computed": load.prompt_tokens_computed,
        "prompt_tokens_reused": load.prompt_tokens_reused,
        "rss_bytes": memory.rss_bytes,
        "pss_bytes": memory.pss_bytes,
        "last_heartbeat_ms": w.last_heartbeat_age.as_millis() as u64,
    })
}
