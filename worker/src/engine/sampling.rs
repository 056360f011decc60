//! Seeded sampling over a logits vector, for engines that hand back raw logits (MLX): top-k, then
//! top-p (nucleus), then temperature, then a draw from a seeded generator, so a seed reproduces its text.

use modelpool::SamplingParams;
use modelpool::rng::SplitMix64;

#[derive(Debug, Clone)]
pub struct SeededSampler {
    rng: SplitMix64,
    temperature: f32,
    top_p: f32,
    top_k: usize,
}

impl SeededSampler {
    /// None for greedy requests (the caller takes the arg-max).
    pub fn for_params(params: &SamplingParams) -> Option<Self> {
        (!params.is_greedy()).then_some(Self {
            rng: SplitMix64::new(params.seed),
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k as usize,
        })
    }

    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let mut candidates: Vec<(usize, f32)> = logits.iter().copied().enumerate().filter(|(_, l)| l.is_finite()).collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.top_k > 0 {
            candidates.truncate(self.top_k);
        }
        let max = candidates[0].1;
        let mut weights: Vec<f64> = candidates.iter().map(|(_, l)| f64::from((l - max) / self.temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        if self.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = weights.iter().position(|w| {
                mass += w / total;
                mass >= f64::from(self.top_p)
            });
            let keep = keep.map_or(weights.len(), |i| i + 1);
            weights.truncate(keep);
            candidates.truncate(keep);
        }
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.next_unit() * total;
        for (i, w) in weights.iter().enumerate() {
            draw -= w;
            if draw <= 0.0 {
                return candidates[i].0 as i32;
            }
        }
        candidates[weights.len() - 1].0 as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, seed, ..SamplingParams::default() }
    }

    #[test]
    fn greedy_has_no_sampler_and_a_seed_reproduces_its_draws() {
        assert!(SeededSampler::for_params(&params(0.0, 1.0, 0, 1)).is_none());
        let logits = [1.0, 2.0, 3.0, 2.5];
        let draws = |seed| {
            let mut s = SeededSampler::for_params(&params(1.0, 1.0, 0, seed)).unwrap();
            (0..32).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        assert!(draws(7).iter().collect::<std::collections::HashSet<_>>().len() > 1, "temperature 1 spreads the draws");
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0, 10.0, 9.0, -5.0];
        let mut top1 = SeededSampler::for_params(&params(1.0, 1.0, 1, 3)).unwrap();
        assert!((0..50).all(|_| top1.sample(&logits) == 1));
        // token 1 alone holds ~73% of the mass: top_p 0.5 keeps only it
        let mut nucleus = SeededSampler::for_params(&params(1.0, 0.5, 0, 3)).unwrap();
        assert!((0..50).all(|_| nucleus.sample(&logits) == 1));
        let mut both = SeededSampler::for_params(&params(1.0, 0.99, 0, 3)).unwrap();
        assert!((0..200).all(|_| [1, 2].contains(&both.sample(&logits))), "the two unlikely tokens are cut");
    }
}
