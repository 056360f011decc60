//! A load balancer in the client, over several OpenAI endpoints: what people put in front of several
//! llama-servers (nginx's upstream, a Kubernetes Service), done here so that it costs the servers
//! nothing. Round-robin sends each request to the next endpoint in turn; least-connections to the one
//! with the fewest requests in flight (ties to the next in turn). Neither knows what a server has cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use modelpool::PredictRequest;

use crate::openai_client::OpenAiClient;
use crate::record::RequestRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    RoundRobin,
    LeastConnections,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastConnections => "least-connections",
        }
    }
}

/// Several endpoints behind one policy; cloning shares the counters.
#[derive(Clone)]
pub struct Balancer {
    endpoints: Arc<Vec<OpenAiClient>>,
    policy: Policy,
    next: Arc<AtomicUsize>,
    in_flight: Arc<Vec<AtomicUsize>>,
}

impl Balancer {
    pub fn new(endpoints: Vec<OpenAiClient>, policy: Policy) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("a balancer needs at least one endpoint".into());
        }
        let in_flight = Arc::new((0..endpoints.len()).map(|_| AtomicUsize::new(0)).collect());
        Ok(Self { endpoints: Arc::new(endpoints), policy, next: Arc::new(AtomicUsize::new(0)), in_flight })
    }

    /// The endpoint the next request goes to.
    fn pick(&self) -> usize {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        match self.policy {
            Policy::RoundRobin => turn,
            Policy::LeastConnections => (0..self.endpoints.len())
                .map(|offset| (turn + offset) % self.endpoints.len())
                .min_by_key(|&i| self.in_flight[i].load(Ordering::Relaxed))
                .unwrap_or(turn),
        }
    }

    pub async fn send(&self, request: &PredictRequest, index: usize, client_wait_ms: f64) -> RequestRecord {
        let endpoint = self.pick();
        self.in_flight[endpoint].fetch_add(1, Ordering::Relaxed);
        let record = self.endpoints[endpoint].send(request, index, client_wait_ms).await;
        self.in_flight[endpoint].fetch_sub(1, Ordering::Relaxed);
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(policy: Policy) -> Balancer {
        let endpoints = (1..=3).map(|i| OpenAiClient::new(&format!("http://127.0.0.1:{i}"), None, None).unwrap()).collect();
        Balancer::new(endpoints, policy).unwrap()
    }

    #[test]
    fn round_robin_takes_turns() {
        let b = balancer(Policy::RoundRobin);
        assert_eq!((0..6).map(|_| b.pick()).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_avoids_the_busy_ones() {
        let b = balancer(Policy::LeastConnections);
        b.in_flight[0].store(2, Ordering::Relaxed);
        b.in_flight[1].store(1, Ordering::Relaxed);
        assert_eq!(b.pick(), 2);
        b.in_flight[2].store(5, Ordering::Relaxed);
        assert_eq!(b.pick(), 1);
    }
}
