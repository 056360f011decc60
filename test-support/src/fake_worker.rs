//! A fake worker for scheduling tests. It serves the real gRPC `Worker` service on 127.0.0.1:0 and
//! answers every prompt as its script says (text after a delay, a gRPC error, silence, or a stream
//! that ends without its final message), with no model behind it, so that the coordinator's retries,
//! evictions, waits and routing can be tested in milliseconds. Only tests start one; nothing in the
//! daemons knows of it.
//!
//! It runs on a thread and runtime of its own, so [`FakeWorker::kill`] ends it as a killed process
//! would: every connection closes at once, whatever calls were open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelpool::membership::{WorkerDescription, WorkerReport};
use modelpool::proto::{self, worker_server::Worker, worker_server::WorkerServer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status};

/// The model every fake worker says it serves (a pool holds one model).
pub const FAKE_MODEL: &str = "fake-model";

/// What a fake worker does with one prompt.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers with `text` after `delay`: one piece of text, then the final message.
    Text { text: String, delay: Duration },
    /// Fails the call at once with this code and message.
    Fail(Code, String),
    /// Opens the stream and never sends anything (a frozen engine, or a very long prompt).
    Silent,
    /// Sends a piece of text, then ends the stream without its final message (a worker that died
    /// mid-answer, as the coordinator sees it).
    HangUp,
}

impl Reply {
    pub fn text(text: &str) -> Self {
        Reply::Text { text: text.into(), delay: Duration::ZERO }
    }
}

type Script = dyn Fn(&proto::PredictRequest) -> Reply + Send + Sync;

/// What the fake worker saw: every prompt in arrival order, and how many of its streams the caller
/// closed before the end (cancellations).
#[derive(Default)]
struct Seen {
    prompts: Mutex<Vec<proto::PredictRequest>>,
    cancelled: AtomicUsize,
}

struct FakeWorkerService {
    script: Arc<Script>,
    seen: Arc<Seen>,
}

type ChunkStream = ReceiverStream<Result<proto::PredictChunk, Status>>;

#[tonic::async_trait]
impl Worker for FakeWorkerService {
    async fn predict(&self, request: Request<proto::PredictRequest>) -> Result<Response<proto::PredictResponse>, Status> {
        let request = request.into_inner();
        self.seen.prompts.lock().unwrap().push(request.clone());
        match (self.script)(&request) {
            Reply::Text { text, delay } => {
                tokio::time::sleep(delay).await;
                Ok(Response::new(answer(&request, &text)))
            }
            Reply::Fail(code, message) => Err(Status::new(code, message)),
            Reply::Silent => std::future::pending().await,
            Reply::HangUp => Err(Status::unavailable("connection reset")),
        }
    }

    type PredictStreamStream = ChunkStream;

    async fn predict_stream(&self, request: Request<proto::PredictRequest>) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        self.seen.prompts.lock().unwrap().push(request.clone());
        let reply = (self.script)(&request);
        if let Reply::Fail(code, message) = reply {
            return Err(Status::new(code, message));
        }
        let (chunks, stream) = mpsc::channel(4);
        let seen = Arc::clone(&self.seen);
        tokio::spawn(async move {
            let piece = |text: &str| proto::PredictChunk { text: text.into(), done: None };
            let sent = async {
                match reply {
                    Reply::Text { text, delay } => {
                        tokio::time::sleep(delay).await;
                        chunks.send(Ok(piece(&text))).await.ok()?;
                        let done = proto::PredictChunk { text: text.clone(), done: Some(answer(&request, &text)) };
                        chunks.send(Ok(done)).await.ok()
                    }
                    Reply::HangUp => chunks.send(Ok(piece("partial"))).await.ok(),
                    Reply::Silent => {
                        chunks.closed().await;
                        None
                    }
                    Reply::Fail(..) => unreachable!("answered before the stream"),
                }
            };
            if sent.await.is_none() {
                seen.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn info(&self, _request: Request<proto::InfoRequest>) -> Result<Response<proto::WorkerInfo>, Status> {
        Ok(Response::new(proto::WorkerInfo::default()))
    }
}

fn answer(request: &proto::PredictRequest, text: &str) -> proto::PredictResponse {
    proto::PredictResponse {
        request_id: request.request_id.clone(),
        text: text.into(),
        prompt_tokens: 1,
        completion_tokens: 1,
        finish_reason: proto::FinishReason::Eos as i32,
        ..Default::default()
    }
}

/// A fake worker serving on 127.0.0.1; see the module's comment.
pub struct FakeWorker {
    /// `http://127.0.0.1:PORT`, what it registers with.
    pub address: String,
    pub instance_id: String,
    seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeWorker {
    /// Starts one that answers every prompt as `script` says.
    pub fn start(script: impl Fn(&proto::PredictRequest) -> Reply + Send + Sync + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let service = FakeWorkerService { script: Arc::new(script), seen: Arc::clone(&seen) };
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let incoming = TcpListenerStream::new(tokio::net::TcpListener::from_std(listener).unwrap());
                let server = tonic::transport::Server::builder().add_service(WorkerServer::new(service)).serve_with_incoming(incoming);
                tokio::select! {
                    _ = server => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every task it ran, the connections' too: their sockets close.
            drop(runtime);
        });
        let instance_id = format!("fake-{}", address.rsplit(':').next().unwrap());
        Self { address, instance_id, seen, stop: Some(stop), thread: Some(thread) }
    }

    /// What it registers with: `slots` slots of 2048 tokens, the fake model.
    pub fn report(&self, slots: u32) -> WorkerReport {
        WorkerReport {
            description: WorkerDescription {
                address: self.address.clone(),
                instance_id: self.instance_id.clone(),
                engine: "fake".into(),
                model_name: FAKE_MODEL.into(),
                context_size: 2048 * slots,
                context_per_slot: 2048,
                slots,
                queue_capacity: 64,
                threads: 1,
                threads_batch: 1,
                ..WorkerDescription::default()
            },
            ..WorkerReport::default()
        }
    }

    /// Every prompt it was sent, in order.
    pub fn prompts(&self) -> Vec<proto::PredictRequest> {
        self.seen.prompts.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        self.seen.prompts.lock().unwrap().len()
    }

    /// Streams the caller closed before their end.
    pub fn cancelled(&self) -> usize {
        self.seen.cancelled.load(Ordering::SeqCst)
    }

    /// Ends it as a killed process ends: its port and every open connection close.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the fake worker's thread");
        }
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.kill();
    }
}
