//! How the scheduler talks to one worker: a channel per worker and one attempt (always a stream, bounded
//! by its progress). What a failed attempt means is [`crate::retry`]'s.

use std::time::Duration;

use modelpool::auth::{AuthChannel, Credentials};
use modelpool::proto::{self, worker_client::WorkerClient};
use modelpool::response::PredictResponse;
use modelpool::{PoolError, PredictRequest};
use tonic::transport::Channel;

/// Where a streamed prompt's text goes as it is generated (whole UTF-8 characters per piece).
pub type Pieces = tokio::sync::mpsc::UnboundedSender<String>;

/// A lazily connecting channel to a worker. tonic multiplexes calls over one HTTP/2 connection per channel.
/// Refuses an address that is not a valid URI, which a worker (or anything else) could send, and an
/// https:// address when no CA was given.
pub fn channel_for(credentials: &Credentials, address: &str) -> Result<Channel, PoolError> {
    let endpoint = credentials.endpoint(address).map_err(|e| match e {
        PoolError::InvalidArgument { field, reason } if field == "address" => PoolError::invalid("info.address", reason),
        other => other,
    })?;
    // HTTP/2 keepalive: a host that vanishes (power, network) without closing its connections is noticed
    // in seconds even while a long generation sends nothing.
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// A client on `channel` whose calls carry the pool's token.
pub fn client(channel: Channel, credentials: &Credentials) -> WorkerClient<AuthChannel> {
    WorkerClient::with_interceptor(channel, credentials.attach())
}

/// How long an attempt may go without progress: to its first token (the worker's queue and the
/// prompt's prefill), then between tokens. A generation that keeps making progress is never cut short,
/// however long it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressTimeouts {
    pub first_token: Duration,
    pub between_tokens: Duration,
}

impl Default for ProgressTimeouts {
    fn default() -> Self {
        Self { first_token: Duration::from_secs(120), between_tokens: Duration::from_secs(30) }
    }
}

/// How often a worker reports progress on an attempt for a unary prompt: its text gathered per
/// interval, so that the coordinator wakes once a second rather than once a token.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The wire form of a prompt for one attempt: the coordinator's one conversion of a prompt back to
/// proto. `run_alone` asks the worker to run it with no other sequence beside it.
pub fn wire_request(request: &PredictRequest, run_alone: bool) -> proto::PredictRequest {
    proto::PredictRequest { run_alone, ..proto::PredictRequest::from(request) }
}

/// Runs `request` on one worker, always as a stream so that progress is seen: each piece of text is
/// forwarded to `pieces` when given (`streamed` turns true with the first one); for a unary prompt the
/// worker gathers the text per [`PROGRESS_INTERVAL`] and the final message carries it whole. The attempt
/// fails with DEADLINE_EXCEEDED when the worker stops making progress (see [`ProgressTimeouts`]).
pub async fn call(
    mut client: WorkerClient<AuthChannel>,
    worker_id: &str,
    request: proto::PredictRequest,
    pieces: Option<&Pieces>,
    streamed: &mut bool,
    timeouts: ProgressTimeouts,
) -> Result<PredictResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    if pieces.is_none() {
        let interval = PROGRESS_INTERVAL.as_millis().to_string();
        request.metadata_mut().insert(proto::STREAM_INTERVAL_MS_HEADER, interval.parse().expect("digits are valid metadata"));
    }
    let silent =
        |wait: Duration, what: &str| tonic::Status::deadline_exceeded(format!("worker {worker_id} {what} within {} s", wait.as_secs_f64()));
    let first = timeouts.first_token;
    let mut stream = match tokio::time::timeout(first, client.predict_stream(request)).await {
        Ok(response) => response?.into_inner(),
        Err(_) => return Err(silent(first, "did not start the prompt")),
    };
    let (mut wait, mut what) = (first, "produced no first token");
    loop {
        let chunk = match tokio::time::timeout(wait, stream.message()).await {
            Ok(chunk) => chunk?,
            Err(_) => return Err(silent(wait, what)),
        };
        let Some(chunk) = chunk else {
            return Err(tonic::Status::unavailable("the worker ended the stream without a final message"));
        };
        if let Some(done) = chunk.done {
            return Ok(done.into());
        }
        (wait, what) = (timeouts.between_tokens, "generated no token");
        if let Some(pieces) = pieces
            && !chunk.text.is_empty()
        {
            *streamed = true;
            if pieces.send(chunk.text).is_err() {
                return Err(tonic::Status::cancelled("the caller went away"));
            }
        }
    }
}
