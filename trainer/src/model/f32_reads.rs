//! ZeRO-1 with bf16 matmuls shards the f32 master weights too (Megatron's distributed optimizer): a
//! rank keeps the f32 values of its shard of the flat parameters only, beside the bf16 copy of all of
//! them that the matmuls read. What the kernels still read in f32 is the small rest: every tensor but
//! the blocks' matmul weights (norms, biases, gains, `ada_gss`, and the fp32 islands' weights: the
//! embeddings, `shared_ada_lin`, the text path and the head). [`F32Reads`] says where those values lie:
//! in one buffer of their own, in the flat order, each rank's pieces broadcast from it after each
//! update.
//!
//! Per parameter a rank then holds 2 bytes of bf16 weights and 4 of gradients, plus 16/world of f32
//! master, moments and their shard's gradients, where it held 10 + 12/world: at 8B parameters on 8
//! ranks, some 27 GiB less.

use std::collections::HashMap;
use std::ops::Range;

use super::params::ParamSpec;
use super::Layout;

/// Whether the kernels read `spec` in f32 under bf16 matmuls: all but the blocks' matmul weights (the
/// 2-D tensors of `blocks.{n}`), which only bf16 products read.
pub fn read_in_f32(spec: &ParamSpec) -> bool {
    !(spec.name.starts_with("blocks.") && spec.shape.len() == 2)
}

/// Values the kernels read in f32 (the length of [`F32Reads`]' buffer).
pub fn f32_read_numel(lay: &Layout) -> usize {
    lay.specs.iter().filter(|s| read_in_f32(s)).map(ParamSpec::numel).sum()
}

/// Where the f32-read tensors lie in their own buffer (the flat order, packed), and which pieces of
/// them each rank's shard holds: after an update each rank's span of the buffer is broadcast from it.
#[derive(Clone, Debug, PartialEq)]
pub struct F32Reads {
    /// Tensor name → its start in the buffer.
    at: HashMap<String, usize>,
    /// Values in the buffer.
    pub numel: usize,
    /// This rank's pieces: `(start in its shard, start in the buffer, length)`.
    pub mine: Vec<(usize, usize, usize)>,
    /// Each rank's pieces, as one span of the buffer (shards and buffer follow the flat order, so a
    /// shard's pieces are adjacent there).
    pub spans: Vec<Range<usize>>,
}

impl F32Reads {
    /// For rank `rank` of `world`, whose shards are `part` values each (`numel.div_ceil(world)`).
    pub fn new(lay: &Layout, rank: usize, world: usize) -> F32Reads {
        assert!(rank < world, "rank {rank} of {world}");
        let part = lay.numel.div_ceil(world);
        let (mut at, mut numel) = (HashMap::new(), 0);
        let mut spans = vec![0..0; world];
        let mut mine = Vec::new();
        for spec in lay.specs.iter().filter(|s| read_in_f32(s)) {
            let flat = spec.offset..spec.offset + spec.numel();
            at.insert(spec.name.clone(), numel);
            for (r, span) in spans.iter_mut().enumerate().take(flat.end.div_ceil(part)).skip(flat.start / part) {
                let piece = flat.start.max(r * part)..flat.end.min((r + 1) * part);
                let to = numel + piece.start - flat.start;
                *span = if span.start == span.end { to..to + piece.len() } else { span.start..to + piece.len() };
                if r == rank {
                    mine.push((piece.start - r * part, to, piece.len()));
                }
            }
            numel += flat.len();
        }
        F32Reads { at, numel, mine, spans }
    }

    /// Where `spec`'s values start in the buffer; `None` for a tensor only bf16 products read.
    pub fn start(&self, name: &str) -> Option<usize> {
        self.at.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn tiny() -> Layout {
        Layout::new(&ModelConfig::preset("tiny").unwrap())
    }

    #[test]
    fn only_the_blocks_matmul_weights_are_left_out() {
        let lay = tiny();
        let left_out: Vec<&str> = lay.specs.iter().filter(|s| !read_in_f32(s)).map(|s| s.name.as_str()).collect();
        assert!(left_out.contains(&"blocks.0.sa.mat_qkv.weight") && left_out.contains(&"blocks.1.ffn.fc2.weight"));
        assert!(left_out.iter().all(|n| n.starts_with("blocks.") && n.ends_with(".weight")), "{left_out:?}");
        for kept in ["blocks.0.ada_gss", "blocks.0.sa.scale_mul_1H11", "shared_ada_lin.1.weight", "head.weight"] {
            assert!(read_in_f32(lay.spec(kept).unwrap()), "{kept}");
        }
        // at scale the blocks' matmul weights are nearly all of the parameters
        for preset in ["layer12", "2b", "8b"] {
            let lay = Layout::new(&ModelConfig::preset(preset).unwrap());
            let (k, n) = (f32_read_numel(&lay), lay.numel);
            assert!(k * 8 < n, "{preset}: {k} of {n} read in f32"); // 9.5 %, 2.6 %, 1.9 %
        }
    }

    #[test]
    fn every_rank_pieces_fill_the_buffer_once_in_order() {
        let lay = tiny();
        for world in [1, 2, 3, 8] {
            let part = lay.numel.div_ceil(world);
            let plans: Vec<F32Reads> = (0..world).map(|r| F32Reads::new(&lay, r, world)).collect();
            let numel = f32_read_numel(&lay);
            // the buffer as the ranks' broadcasts fill it: each rank's pieces from its shard of the flat
            // values
            let flat: Vec<usize> = (0..lay.numel).collect();
            let mut buffer = vec![usize::MAX; numel];
            for (r, p) in plans.iter().enumerate() {
                assert_eq!((p.numel, &p.spans), (numel, &plans[0].spans));
                let mut next = p.spans[r].start;
                for &(from, to, len) in &p.mine {
                    assert_eq!(to, next, "world {world}, rank {r}: pieces not adjacent");
                    next += len;
                    for i in 0..len {
                        assert_eq!(buffer[to + i], usize::MAX, "written twice");
                        buffer[to + i] = flat[r * part + from + i];
                    }
                }
                assert_eq!(next, p.spans[r].end);
            }
            for spec in lay.specs.iter().filter(|s| read_in_f32(s)) {
                let at = plans[0].start(&spec.name).unwrap();
                let want: Vec<usize> = (spec.offset..spec.offset + spec.numel()).collect();
                assert_eq!(buffer[at..at + spec.numel()], want[..], "world {world}: {}", spec.name);
            }
            assert_eq!(plans[0].start("blocks.0.sa.proj.weight"), None);
        }
    }
}
