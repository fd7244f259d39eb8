//! The model's FLOP count: what one forward pass must compute, for achieved-TFLOP/s figures.

use super::{LayerKind, ModelConfig};

impl ModelConfig {
    /// Matmul FLOPs (2 per multiply-add) of embedding one sequence of `seq_len` tokens: the
    /// q/k/v/o projections and the gated MLP of every layer, attention scores and the weighted
    /// sum of values over the pairs each layer's window allows, and the Dense head. Norms,
    /// RoPE, softmax and pooling are elementwise and left out.
    pub fn forward_flops(&self, seq_len: usize) -> u64 {
        let n = seq_len as u64;
        let hidden = self.hidden_size as u64;
        let q_dim = (self.num_heads * self.head_dim) as u64;
        let kv_dim = (self.num_kv_heads * self.head_dim) as u64;
        let inter = self.intermediate_size as u64;
        let per_token = 2 * (hidden * (q_dim + 2 * kv_dim) + q_dim * hidden + 3 * hidden * inter);
        // QK^T and PV: 2 * head_dim multiply-adds per (query head, query, key) pair.
        let per_pair = 4 * q_dim;
        let layers: u64 = self
            .layer_kinds
            .iter()
            .map(|&kind| per_token * n + per_pair * self.attention_pairs(kind, seq_len))
            .sum();
        let mut dense_in = hidden;
        let mut dense = 0;
        for &out in &self.dense_out_features {
            dense += 2 * dense_in * out as u64;
            dense_in = out as u64;
        }
        layers + dense
    }

    /// Number of (query, key) pairs a layer of this kind attends over in one sequence.
    pub fn attention_pairs(&self, kind: LayerKind, seq_len: usize) -> u64 {
        let n = seq_len as u64;
        let r = self.window_radius as u64;
        match kind {
            LayerKind::Sliding if n > r + 1 => n * n - (n - r - 1) * (n - r),
            _ => n * n,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(layer_kinds: Vec<LayerKind>, window_radius: usize) -> ModelConfig {
        ModelConfig {
            hidden_size: 8,
            intermediate_size: 12,
            num_layers: layer_kinds.len(),
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            vocab_size: 32,
            rms_norm_eps: 1e-6,
            query_pre_attn_scalar: 4.0,
            window_radius,
            rope_theta_sliding: 1e4,
            rope_theta_full: 1e6,
            layer_kinds,
            max_position_embeddings: 64,
            max_seq_len: 64,
            dense_out_features: vec![16, 8],
            embedding_dim: 8,
            prompts: BTreeMap::new(),
            default_prompt_name: None,
            weight_dtype: "F32".into(),
        }
    }

    /// Pairs counted by brute force over every (i, j).
    fn pairs_by_enumeration(n: usize, radius: Option<usize>) -> u64 {
        let mut count = 0;
        for i in 0..n {
            for j in 0..n {
                if radius.is_none_or(|r| i.abs_diff(j) <= r) {
                    count += 1;
                }
            }
        }
        count
    }

    #[test]
    fn attention_pairs_match_enumeration() {
        let cfg = config(vec![LayerKind::Sliding, LayerKind::Full], 3);
        for n in [1, 2, 3, 4, 5, 7, 8, 20] {
            assert_eq!(
                cfg.attention_pairs(LayerKind::Sliding, n),
                pairs_by_enumeration(n, Some(3)),
                "sliding, n = {n}"
            );
            assert_eq!(
                cfg.attention_pairs(LayerKind::Full, n),
                pairs_by_enumeration(n, None),
                "full, n = {n}"
            );
        }
    }

    #[test]
    fn forward_flops_adds_up_the_matmuls() {
        let cfg = config(vec![LayerKind::Sliding, LayerKind::Full], 3);
        let n = 10u64;
        // Written out per matmul: q, k, v, o, gate, up, down; then attention; then Dense.
        let projections = n * (8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 8 * 12 + 8 * 12 + 12 * 8);
        let attention = |pairs: u64| 2 * (2 * 4) * pairs;
        let expected = 2 * (2 * projections)
            + 2 * attention(pairs_by_enumeration(10, Some(3)))
            + 2 * attention(100)
            + 2 * (8 * 16 + 16 * 8);
        assert_eq!(cfg.forward_flops(10), expected);
    }
}
