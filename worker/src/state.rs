//! What the gRPC service, the membership loop and shutdown share: the engine once loaded, whether the
//! worker is draining, and how many requests are in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use modelpool::PoolError;
use modelpool::membership::{WorkerDescription, WorkerReport};
use modelpool::memory::MemoryGauge;
use modelpool::proto;
use tokio::sync::{Notify, watch};

use crate::engine::Engine;

pub struct SharedState {
    engine: OnceLock<Arc<dyn Engine>>,
    /// The address clients should use, e.g. `http://127.0.0.1:50051`.
    pub address: String,
    /// Unique to this run of this process; see `WorkerInfo.instance_id`.
    pub instance_id: String,
    pub metrics: crate::metrics::WorkerMetrics,
    /// This process's memory, read off the runtime (see [`MemoryGauge`]).
    pub memory: Arc<MemoryGauge>,
    load_ms: OnceLock<f64>,
    draining: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl SharedState {
    pub fn new(address: String) -> Arc<Self> {
        Arc::new(Self {
            engine: OnceLock::new(),
            address,
            instance_id: new_instance_id(),
            metrics: Default::default(),
            memory: MemoryGauge::start(Duration::from_millis(500)),
            load_ms: OnceLock::new(),
            draining: watch::channel(false).0,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    pub fn set_engine(&self, engine: Arc<dyn Engine>, load_ms: f64) {
        let _ = self.load_ms.set(load_ms);
        let _ = self.engine.set(engine);
    }

    pub fn engine(&self) -> Option<&Arc<dyn Engine>> {
        self.engine.get()
    }

    /// The engine, if this worker takes new requests now.
    pub fn engine_for_new_request(&self) -> Result<Arc<dyn Engine>, PoolError> {
        if *self.draining.borrow() {
            return Err(PoolError::Unavailable("worker is shutting down".into()));
        }
        self.engine.get().cloned().ok_or_else(|| PoolError::Unavailable("model is still loading".into()))
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Wakes when draining starts.
    pub fn watch_draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Counts a request as in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight, or `limit` passes. Returns whether it drained.
    pub async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// The full description of this worker, as Info returns it and Register sends it.
    pub fn info(&self) -> proto::WorkerInfo {
        proto::WorkerInfo::from(&self.report())
    }

    fn report(&self) -> WorkerReport {
        let mut report = WorkerReport {
            description: WorkerDescription {
                address: self.address.clone(),
                instance_id: self.instance_id.clone(),
                pid: std::process::id(),
                load_ms: self.load_ms.get().copied().unwrap_or(0.0),
                ..Default::default()
            },
            memory: self.memory.latest(),
            load: Default::default(),
        };
        if let Some(engine) = self.engine.get() {
            let e = engine.info();
            let d = &mut report.description;
            d.engine = e.engine.as_str().into();
            d.model_path = e.model_path.clone();
            d.model_name = e.model_name.clone();
            d.model_size_bytes = e.model_size_bytes;
            d.context_size = e.context_size;
            d.context_per_slot = e.context_per_slot;
            d.slots = e.slots;
            d.queue_capacity = e.queue_capacity;
            d.threads = e.threads;
            d.threads_batch = e.threads_batch;
            d.prompt_store_capacity_bytes = e.prompt_store_capacity_bytes;
            d.prompt_store_tokens = e.prompt_store_tokens;
            d.cpu_kernels = e.cpu_kernels.clone();
            d.max_token_bytes = e.max_token_bytes;
            report.load = engine.stats();
        }
        report
    }
}

/// An in-flight request; dropping it (response sent or client gone) counts it out.
pub struct InFlight(Arc<SharedState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Process id, start time and a per-process counter: distinct across restarts and across the
/// in-process workers that tests start.
fn new_instance_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos:x}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
