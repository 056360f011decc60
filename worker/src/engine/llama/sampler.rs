//! llama.cpp sampler chains for non-greedy requests.

use llama_cpp_2::sampling::LlamaSampler;
use modelpool::SamplingParams;

/// The sampler chain for one request. Greedy takes the most likely token; otherwise top-k, top-p and
/// temperature shape the distribution and a seeded draw picks from it, so a seed reproduces its text.
pub(super) fn sampler_for(params: &SamplingParams) -> Option<LlamaSampler> {
    if params.is_greedy() {
        return None;
    }
    let mut chain = Vec::new();
    if params.top_k > 0 {
        chain.push(LlamaSampler::top_k(params.top_k as i32));
    }
    if params.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(params.top_p, 1));
    }
    chain.push(LlamaSampler::temp(params.temperature));
    // llama.cpp takes a 32-bit seed; fold the high half in so that distinct 64-bit seeds stay distinct.
    chain.push(LlamaSampler::dist((params.seed ^ (params.seed >> 32)) as u32));
    Some(LlamaSampler::chain_simple(chain))
}
