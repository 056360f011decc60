//! How the scheduler talks to one worker: a channel per worker, one attempt (unary or streamed, bounded
//! in time), and the rules that say what a failed attempt means: whether the worker may be dead, and
//! whether the prompt is worth trying on another worker.

use std::time::Duration;

use modelpool::PoolError;
use modelpool::auth::{AuthChannel, Credentials};
use modelpool::proto::{self, worker_client::WorkerClient};
use tonic::Code;
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

/// A transport-level failure: the worker may be dead, so it gets nothing until its next heartbeat. (A
/// cancelled call is the caller's doing, not the worker's.)
pub fn means_worker_may_be_dead(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown)
}

/// What a failed attempt leaves to do for its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another worker might not share the failure: the worker died, was overloaded or timed out.
    RetryElsewhere,
    /// Run it again with no other sequence beside it (`run_alone`): its batch failed, so the cause may
    /// be a neighbour's (ABORTED); or it failed with an internal error, which gets one more attempt,
    /// alone, so that it cannot take neighbours down with it.
    RetryAlone,
    /// Retrying cannot help: the request itself was refused (invalid, too long for the context), or it
    /// failed with an internal error a second time. The prompt fails with this error.
    Final,
}

/// The retry rule for a failed attempt with `code`, given how many internal errors the prompt met
/// before this one.
pub fn after_failure(code: Code, internal_errors_before: u32) -> AfterFailure {
    match code {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted => {
            AfterFailure::RetryElsewhere
        }
        Code::Aborted => AfterFailure::RetryAlone,
        Code::Internal if internal_errors_before == 0 => AfterFailure::RetryAlone,
        _ => AfterFailure::Final,
    }
}

/// Runs `request` on one worker within `timeout`: unary, or streamed when `pieces` is given, each piece
/// forwarded as it arrives (`streamed` turns true with the first one).
pub async fn call(
    mut client: WorkerClient<AuthChannel>,
    worker_id: &str,
    request: proto::PredictRequest,
    pieces: Option<&Pieces>,
    streamed: &mut bool,
    timeout: Duration,
) -> Result<proto::PredictResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    let call = async {
        match pieces {
            None => client.predict(request).await.map(tonic::Response::into_inner),
            Some(pieces) => stream(&mut client, request, pieces, streamed).await,
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("worker {worker_id} did not answer within {timeout:?}"))),
    }
}

/// A streamed attempt: forwards each piece of text to the caller as it arrives and returns the final
/// response.
async fn stream(
    client: &mut WorkerClient<AuthChannel>,
    request: tonic::Request<proto::PredictRequest>,
    pieces: &Pieces,
    streamed: &mut bool,
) -> Result<proto::PredictResponse, tonic::Status> {
    let mut stream = client.predict_stream(request).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        if let Some(done) = chunk.done {
            return Ok(done);
        }
        if !chunk.text.is_empty() {
            *streamed = true;
            if pieces.send(chunk.text).is_err() {
                return Err(tonic::Status::cancelled("the caller went away"));
            }
        }
    }
    Err(tonic::Status::unavailable("the worker ended the stream without a final message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_is_retried_alone_and_an_internal_error_once() {
        assert_eq!(after_failure(Code::Aborted, 0), AfterFailure::RetryAlone);
        assert_eq!(after_failure(Code::Internal, 0), AfterFailure::RetryAlone);
        assert_eq!(after_failure(Code::Internal, 1), AfterFailure::Final, "a second internal error is the prompt's own");
        assert_eq!(after_failure(Code::Unavailable, 5), AfterFailure::RetryElsewhere);
        assert_eq!(after_failure(Code::InvalidArgument, 0), AfterFailure::Final);
    }
}
