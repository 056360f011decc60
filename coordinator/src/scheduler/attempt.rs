//! One try of one prompt on one worker, and the link to a worker its tries share (its channel, and the
//! signal that it was evicted).

use modelpool::auth::AuthChannel;
use modelpool::proto::worker_client::WorkerClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{Command, Job};
use crate::worker_client::{self, ProgressTimeouts};

/// The channel to a worker, and a signal its attempts watch: when the worker is evicted (it missed its
/// heartbeats: frozen, or a host that lost power), its in-flight attempts end at once and are retried
/// elsewhere instead of waiting out the attempt timeout. A worker that deregisters has drained first, so
/// its attempts are left to finish.
pub(super) struct WorkerLink {
    pub(super) channel: Channel,
    evicted: watch::Sender<bool>,
}

impl WorkerLink {
    pub(super) fn new(channel: Channel) -> Self {
        Self { channel, evicted: watch::channel(false).0 }
    }

    pub(super) fn evict(&self) {
        self.evicted.send_replace(true);
    }

    /// Resolves when the worker is evicted; never, once the link is dropped without eviction.
    pub(super) fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut evicted = self.evicted.subscribe();
        async move {
            loop {
                if *evicted.borrow_and_update() {
                    return;
                }
                if evicted.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// One try of one prompt on one worker, reported back to the scheduler. Ends early if the caller goes
/// away, which cancels the call on the worker and frees its slot, or if the worker is evicted.
pub(super) async fn attempt(
    client: WorkerClient<AuthChannel>,
    worker_id: String,
    mut job: Job,
    timeouts: ProgressTimeouts,
    gone: impl std::future::Future<Output = ()>,
    commands: mpsc::Sender<Command>,
) {
    let dispatched = Instant::now();
    let result = {
        let wire = worker_client::wire_request(&job.request, job.run_alone);
        let call = worker_client::call(client, &worker_id, wire, job.pieces.as_ref(), &mut job.streamed, timeouts);
        tokio::select! {
            result = call => result,
            () = job.reply.closed() => Err(tonic::Status::cancelled("the caller went away")),
            () = gone => Err(tonic::Status::unavailable(format!("worker {worker_id} was evicted (missed its heartbeats) during the attempt"))),
        }
    };
    let _ = commands.send(Command::AttemptDone { worker_id, job, dispatched, result }).await;
}
