//! Membership in a coordinator's pool: register, heartbeat with load and memory, register again when the
//! coordinator no longer knows us (it restarted), announce draining at once, and deregister on the way out.

use std::sync::Arc;
use std::time::Duration;

use modelpool::PoolError;
use modelpool::auth::{AuthChannel, Credentials};
use modelpool::membership::{Heartbeat, WorkerPhase};
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::proto::{self, ProtocolVersion};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::state::SharedState;

/// Each call to the coordinator gets this long; a coordinator that does not answer is treated as down.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Until the coordinator says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

pub struct Membership {
    leave: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Membership {
    pub fn start(coordinator: &str, credentials: &Credentials, state: Arc<SharedState>) -> Result<Self, PoolError> {
        let channel = credentials.endpoint(coordinator)?.connect_timeout(CALL_TIMEOUT).timeout(CALL_TIMEOUT).connect_lazy();
        let (leave, left) = oneshot::channel();
        let task = tokio::spawn(run(CoordinatorClient::with_interceptor(channel, credentials.attach()), state, left));
        Ok(Self { leave, task })
    }

    /// Deregisters and stops heartbeating. Call after draining.
    pub async fn leave(self) {
        let _ = self.leave.send(());
        let _ = self.task.await;
    }
}

async fn run(mut client: CoordinatorClient<AuthChannel>, state: Arc<SharedState>, mut leave: oneshot::Receiver<()>) {
    // The id the coordinator gave this worker and the lease its heartbeats and deregistration carry.
    let mut registration: Option<(String, String)> = None;
    let mut interval = DEFAULT_INTERVAL;
    let mut draining = state.watch_draining();
    let mut warned_down = false;
    loop {
        match &registration {
            None if !state.is_draining() => {
                let request =
                    proto::RegisterRequest { info: Some(state.info()), protocol_version: ProtocolVersion::ProtocolVersion1 as i32 };
                match client.register(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        info!(worker_id = %response.worker_id, address = %state.address, "registered with the coordinator");
                        interval = Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(50)));
                        registration = Some((response.worker_id, response.lease));
                        warned_down = false;
                        continue; // heartbeat at once, so that load and memory are current
                    }
                    Err(status) => {
                        if !warned_down {
                            warn!(code = ?status.code(), message = status.message(), "cannot register with the coordinator; retrying");
                            warned_down = true;
                        }
                    }
                }
            }
            None => {}
            Some((id, lease)) => {
                let request = heartbeat(id, lease, &state);
                match client.heartbeat(request).await {
                    Ok(_) => warned_down = false,
                    // Unknown (it restarted, or evicted us) or registered anew under another lease.
                    Err(status) if matches!(status.code(), Code::NotFound | Code::PermissionDenied) => {
                        info!(code = ?status.code(), "the coordinator no longer holds this registration; registering again");
                        registration = None;
                        continue;
                    }
                    Err(status) => {
                        if !warned_down {
                            warn!(code = ?status.code(), message = status.message(), "heartbeat failed; coordinator down?");
                            warned_down = true;
                        }
                        debug!(?status, "heartbeat failed");
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            // Tell the coordinator about draining now, not at the next tick.
            _ = draining.changed() => {}
            _ = &mut leave => break,
        }
    }
    if let Some((id, lease)) = registration {
        match client.deregister(proto::DeregisterRequest { worker_id: id.clone(), lease }).await {
            Ok(_) => info!(worker_id = %id, "deregistered"),
            Err(status) => warn!(worker_id = %id, message = status.message(), "deregister failed"),
        }
    }
}

fn heartbeat(worker_id: &str, lease: &str, state: &SharedState) -> proto::HeartbeatRequest {
    let beat = Heartbeat {
        worker_id: worker_id.to_string(),
        lease: lease.to_string(),
        phase: if state.is_draining() { WorkerPhase::Draining } else { WorkerPhase::Serving },
        load: state.engine().map(|e| e.stats()),
        memory: Some(state.memory.latest()),
    };
    proto::HeartbeatRequest::from(&beat)
}
