//! Memory of the pool's workers sampled during a run. Workers on this host are read from /proc every
//! 100 ms, so peaks during loading and serving are caught: the ones whose pids the caller passes (workers
//! it just spawned) from the start, before they have even registered, and any other worker on a loopback
//! address once it appears in the coordinator's list. Remote workers contribute the memory they report
//! in heartbeats. Local workers are named `pid N`, remote ones by their worker id.

use std::collections::BTreeMap;
use std::time::Duration;

use modelpool::auth::AuthChannel;
use modelpool::memory::{ProcessMemory, SystemMemory};
use modelpool::proto::{ListWorkersRequest, coordinator_client::CoordinatorClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the worker list (and remote workers' reported memory) is refreshed.
const LIST_EVERY: Duration = Duration::from_millis(500);

/// Peak and last-seen memory of one worker.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WorkerMemory {
    pub peak: ProcessMemory,
    pub last: ProcessMemory,
}

/// What the sampler saw over a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PoolMemory {
    pub workers: BTreeMap<String, WorkerMemory>,
    /// Largest sum of PSS over all workers at one instant: memory-mapped weights counted once.
    pub peak_pool_pss_bytes: u64,
    /// Largest sum of RSS at one instant: shared pages counted in every process.
    pub peak_pool_rss_bytes: u64,
    pub samples: usize,
    /// PSS of each worker over time, for the stacked memory chart (thinned to at most
    /// `TIMELINE_POINTS` points).
    pub timeline: Vec<MemoryPoint>,
    /// The machine when sampling started, and its tightest moment during the run.
    pub system_before: SystemMemory,
    pub min_available_bytes: u64,
    pub max_swap_used_bytes: u64,
}

impl PoolMemory {
    /// Swap grew by more than 16 MiB during the run: the figures include paging and are not to be trusted.
    pub fn swapped(&self) -> bool {
        self.max_swap_used_bytes > self.system_before.swap_used_bytes + (16 << 20)
    }
}

/// One sample of the timeline: milliseconds since sampling started, and each worker's PSS in bytes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MemoryPoint {
    pub t_ms: u64,
    pub pss_bytes: BTreeMap<String, u64>,
}

const TIMELINE_POINTS: usize = 300;

pub struct MemorySampler {
    stop: watch::Sender<bool>,
    local_pids: watch::Sender<Vec<u32>>,
    swapping: watch::Receiver<bool>,
    task: JoinHandle<PoolMemory>,
}

/// Swap growth beyond this during a run means the machine is paging: the run is not measuring the pool.
const SWAP_ALARM: u64 = 64 << 20;

impl MemorySampler {
    pub fn start(client: CoordinatorClient<AuthChannel>, local_pids: &[u32]) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (pids, pids_rx) = watch::channel(local_pids.to_vec());
        let (swap_alarm, swapping) = watch::channel(false);
        Self { stop, local_pids: pids, swapping, task: tokio::spawn(sample(client, pids_rx, stopped, swap_alarm)) }
    }

    /// Resolves once swap use has grown by more than 64 MiB since sampling started.
    pub async fn swapping(&self) {
        let mut swapping = self.swapping.clone();
        let _ = swapping.wait_for(|on| *on).await;
    }

    /// Starts following a worker process spawned on this host.
    pub fn add_pid(&self, pid: u32) {
        self.local_pids.send_modify(|pids| pids.push(pid));
    }

    pub async fn finish(self) -> PoolMemory {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

struct Tracked {
    local_pid: Option<u32>,
    reported: ProcessMemory,
}

fn is_loopback(address: &str) -> bool {
    let host = address.split("://").nth(1).unwrap_or(address);
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

fn local(pid: u32) -> (String, Tracked) {
    (format!("pid {pid}"), Tracked { local_pid: Some(pid), reported: ProcessMemory::default() })
}

async fn sample(
    mut client: CoordinatorClient<AuthChannel>,
    local_pids: watch::Receiver<Vec<u32>>,
    mut stopped: watch::Receiver<bool>,
    swap_alarm: watch::Sender<bool>,
) -> PoolMemory {
    let system_before = SystemMemory::read();
    let mut pool = PoolMemory {
        system_before,
        min_available_bytes: system_before.available_bytes,
        max_swap_used_bytes: system_before.swap_used_bytes,
        ..PoolMemory::default()
    };
    let mut tracked: BTreeMap<String, Tracked> = BTreeMap::new();
    let mut last_list = None::<tokio::time::Instant>;
    let started = tokio::time::Instant::now();
    loop {
        if last_list.is_none_or(|t| t.elapsed() >= LIST_EVERY) {
            if let Ok(list) = client.list_workers(ListWorkersRequest {}).await {
                tracked.clear();
                for w in list.into_inner().workers {
                    let info = w.info.unwrap_or_default();
                    if is_loopback(&info.address) && info.pid != 0 {
                        tracked.entry(format!("pid {}", info.pid)).or_insert_with(|| local(info.pid).1);
                    } else {
                        tracked.insert(w.worker_id, Tracked { local_pid: None, reported: w.memory.unwrap_or_default().into() });
                    }
                }
            }
            last_list = Some(tokio::time::Instant::now());
        }
        for &pid in local_pids.borrow().iter() {
            tracked.entry(format!("pid {pid}")).or_insert_with(|| local(pid).1);
        }
        let (mut pss, mut rss) = (0, 0);
        let mut point = MemoryPoint { t_ms: started.elapsed().as_millis() as u64, pss_bytes: BTreeMap::new() };
        for (id, worker) in &tracked {
            // A local worker that has exited (or not started) contributes nothing.
            let Some(memory) = (match worker.local_pid {
                Some(pid) => ProcessMemory::of_pid(pid),
                None => Some(worker.reported),
            }) else {
                continue;
            };
            pss += memory.pss_bytes;
            rss += memory.rss_bytes;
            point.pss_bytes.insert(id.clone(), memory.pss_bytes);
            let entry = pool.workers.entry(id.clone()).or_default();
            entry.last = memory;
            entry.peak.rss_bytes = entry.peak.rss_bytes.max(memory.rss_bytes);
            entry.peak.pss_bytes = entry.peak.pss_bytes.max(memory.pss_bytes);
            entry.peak.uss_bytes = entry.peak.uss_bytes.max(memory.uss_bytes);
        }
        pool.peak_pool_pss_bytes = pool.peak_pool_pss_bytes.max(pss);
        pool.peak_pool_rss_bytes = pool.peak_pool_rss_bytes.max(rss);
        let system = SystemMemory::read();
        pool.min_available_bytes = pool.min_available_bytes.min(system.available_bytes);
        pool.max_swap_used_bytes = pool.max_swap_used_bytes.max(system.swap_used_bytes);
        if pool.max_swap_used_bytes > pool.system_before.swap_used_bytes + SWAP_ALARM {
            swap_alarm.send_if_modified(|on| !std::mem::replace(on, true));
        }
        pool.samples += 1;
        pool.timeline.push(point);
        if pool.timeline.len() > TIMELINE_POINTS {
            // Keep every other point: the chart keeps its shape over long runs, the report stays small.
            pool.timeline = pool.timeline.iter().step_by(2).cloned().collect();
        }
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stopped.changed() => return pool,
        }
    }
}
