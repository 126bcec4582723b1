//! Text transformer, with learnable context vectors spliced into the token embeddings
//! (CoOp) for Phase I of the method.

use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::TextConfig;
use super::tokenizer::eot_position;
use super::transformer::Block;

#[derive(Module, Debug)]
pub struct TextTower {
    /// `[vocab, width]`.
    pub token_embedding: Param<Tensor<2>>,
    /// `[context_length, width]`.
    pub position_embedding: Param<Tensor<2>>,
    pub layers: Vec<Block>,
    pub ln_final: LayerNorm,
    /// `[width, projection_dim]`.
    pub projection: Param<Tensor<2>>,
    #[module(skip)]
    pub config: TextConfig,
}

/// Token ids prepared for the tower: cut to the longest prompt's end token. Attention is
/// causal and features are pooled at the end token, so positions after it cannot change
/// the result; dropping them makes short prompts several times cheaper than 77 tokens.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub ids: Vec<Vec<u32>>,
    pub eot: Vec<usize>,
    pub len: usize,
}

impl TokenBatch {
    pub fn new(ids: &[Vec<u32>]) -> Self {
        let eot: Vec<usize> = ids.iter().map(|t| eot_position(t)).collect();
        let len = eot.iter().map(|p| p + 1).max().unwrap_or(1);
        let ids = ids
            .iter()
            .map(|t| {
                let mut t: Vec<u32> = t.iter().copied().take(len).collect();
                t.resize(len, 0);
                t
            })
            .collect();
        Self { ids, eot, len }
    }
}

impl TextTower {
    /// Token embeddings `[B, len, width]` (no positions yet).
    pub fn token_embeddings(&self, batch: &TokenBatch) -> Tensor<3> {
        let device = self.token_embedding.val().device();
        let b = batch.ids.len();
        let flat: Vec<i64> = batch.ids.iter().flatten().map(|&t| t as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * batch.len]), &device);
        let d = self.config.hidden_size;
        self.token_embedding
            .val()
            .select(0, idx)
            .reshape([b, batch.len, d])
    }

    /// Run the transformer on token embeddings `[B, len, width]` and pool at each
    /// prompt's end token: projected (not normalised) features `[B, projection_dim]`.
    pub fn forward_embeddings(&self, embeddings: Tensor<3>, eot: &[usize]) -> Tensor<2> {
        let [b, len, d] = embeddings.dims();
        assert!(
            len <= self.config.context_length,
            "prompt of {len} tokens exceeds the context length {}",
            self.config.context_length
        );
        let pos = self.position_embedding.val().narrow(0, 0, len);
        let mut x = embeddings + pos.unsqueeze::<3>();
        for layer in &self.layers {
            x = layer.forward(x, true);
        }
        let device = x.device();
        let rows: Vec<i64> = eot
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * len + p) as i64)
            .collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &device);
        let pooled = x.reshape([b * len, d]).select(0, rows);
        self.ln_final.forward(pooled).matmul(self.projection.val())
    }

    pub fn forward(&self, batch: &TokenBatch) -> Tensor<2> {
        self.forward_embeddings(self.token_embeddings(batch), &batch.eot)
    }

    /// CoOp: replace the embeddings of positions `start..start + M` (the placeholder
    /// tokens of "X X .. X {class}.") by learnable context `ctx`, `[1, M, width]` shared
    /// by all prompts or `[B, M, width]` one per prompt. Gradients reach `ctx` through the
    /// frozen tower.
    pub fn forward_with_context(
        &self,
        batch: &TokenBatch,
        ctx: Tensor<3>,
        start: usize,
    ) -> Tensor<2> {
        let emb = self.token_embeddings(batch);
        let [b, len, d] = emb.dims();
        let [cb, m, _] = ctx.dims();
        assert!(
            start + m < len,
            "context of {m} tokens at {start} does not fit prompts of {len}"
        );
        let ctx = if cb == 1 { ctx.expand([b, m, d]) } else { ctx };
        let emb = Tensor::cat(
            vec![
                emb.clone().narrow(1, 0, start),
                ctx,
                emb.narrow(1, start + m, len - start - m),
            ],
            1,
        );
        self.forward_embeddings(emb, &batch.eot)
    }
}
