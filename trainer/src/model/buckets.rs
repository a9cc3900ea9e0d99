//! Gradient buckets: which parts of the flat gradients are complete after which block's backward, for
//! data-parallel averaging overlapped with the backward (DDP's buckets, llm.c's per-layer reduce;
//! the GPU path sums each bucket over the ranks on the step's last micro-batch while the backward
//! goes on with the earlier blocks, `gpu::GpuModel::step`).
//!
//! The blocks' parameters are contiguous in the layout (`blocks.{n}.…` follow each other), so a bucket
//! is one range: consecutive blocks, last to first, until it holds at least `bucket_bytes` of f32
//! gradients. The parameters outside the blocks (embeddings, condition, head: before the first block
//! and after the last) are complete only when the backward ends and go last. Every rank has the same
//! layout and threshold, so every rank enqueues the same collectives in the same order.

use std::ops::Range;

use super::Layout;

#[derive(Clone, Debug, PartialEq)]
pub struct GradBuckets {
    /// `(block, range)` in the order the backward completes them: `range` is complete once `block`'s
    /// backward (the lowest block in it) has run.
    buckets: Vec<(usize, Range<usize>)>,
    /// The parameters before the first block and after the last one, complete when the backward ends.
    rest: [Range<usize>; 2],
}

impl GradBuckets {
    /// Buckets of at least `bucket_bytes` (0: one per block) over the `depth` blocks of `lay`.
    pub fn new(lay: &Layout, depth: usize, bucket_bytes: usize) -> GradBuckets {
        assert!(depth > 0, "a model without blocks");
        let block = |n: usize| {
            let (first, last) =
                (lay.range(&format!("blocks.{n}.ada_gss")), lay.range(&format!("blocks.{n}.ffn.fc2.bias")));
            first.start..last.end
        };
        let mut buckets = Vec::new();
        let mut open: Option<Range<usize>> = None;
        for n in (0..depth).rev() {
            let r = match open.take() {
                Some(above) => {
                    assert_eq!(block(n).end, above.start, "blocks {n} and {} are not adjacent in the layout", n + 1);
                    block(n).start..above.end
                }
                None => block(n),
            };
            if r.len() * size_of::<f32>() >= bucket_bytes || n == 0 {
                buckets.push((n, r));
            } else {
                open = Some(r);
            }
        }
        GradBuckets { buckets, rest: [0..block(0).start, block(depth - 1).end..lay.numel] }
    }

    /// The bucket that block `blk`'s backward completes, if it completes one.
    pub fn after_block(&self, blk: usize) -> Option<Range<usize>> {
        self.buckets.iter().find(|(b, _)| *b == blk).map(|(_, r)| r.clone())
    }

    /// The parameters outside the blocks (non-empty ranges), complete when the backward ends.
    pub fn rest(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.rest.iter().filter(|r| !r.is_empty()).cloned()
    }

    /// Every range in the order it is reduced: the blocks' buckets, then the rest.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.buckets.iter().map(|(_, r)| r.clone()).chain(self.rest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conditioning, ModelConfig};

    fn layout(cond: Conditioning) -> (Layout, usize) {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.depth = 5;
        cfg.conditioning = cond;
        (Layout::new(&cfg), cfg.depth)
    }

    /// Every gradient is in exactly one range, the blocks' ranges come last block first.
    fn check_partition(b: &GradBuckets, lay: &Layout) {
        let mut seen = vec![0u8; lay.numel];
        b.ranges().flatten().for_each(|i| seen[i] += 1);
        assert!(seen.iter().all(|&n| n == 1), "a gradient reduced {:?} times", seen.iter().max());
        let starts: Vec<usize> = b.buckets.iter().map(|(_, r)| r.start).collect();
        assert!(starts.windows(2).all(|w| w[0] > w[1]), "buckets not last block first: {starts:?}");
    }

    #[test]
    fn buckets_cover_every_gradient_once_in_backward_order() {
        for cond in [Conditioning::Class { num_classes: 10 }, Conditioning::Text] {
            let (lay, depth) = layout(cond);
            let block_bytes = lay.range("blocks.0.ffn.fc2.bias").end * 4 - lay.range("blocks.0.ada_gss").start * 4;
            // one per block, two blocks a bucket (the lowest block alone), all in one
            for (bytes, expect) in [(0, 5), (block_bytes + 1, 3), (usize::MAX, 1)] {
                let b = GradBuckets::new(&lay, depth, bytes);
                check_partition(&b, &lay);
                assert_eq!(b.buckets.len(), expect, "bucket bytes {bytes}");
                assert_eq!(b.buckets.last().unwrap().0, 0, "the first block closes the last bucket");
            }
            let b = GradBuckets::new(&lay, depth, 0);
            assert_eq!(
                b.after_block(3),
                Some(lay.range("blocks.3.ada_gss").start..lay.range("blocks.4.ada_gss").start)
            );
            assert_eq!(b.rest().count(), 2, "embeddings before the blocks, head after them");
        }
    }

    #[test]
    fn a_bucket_is_enqueued_after_its_lowest_block() {
        let (lay, depth) = layout(Conditioning::Class { num_classes: 10 });
        let block_bytes = lay.range("blocks.1.ada_gss").start * 4 - lay.range("blocks.0.ada_gss").start * 4;
        let b = GradBuckets::new(&lay, depth, block_bytes + 1);
        // blocks 4+3, 2+1, then 0 alone
        assert_eq!((b.after_block(4), b.after_block(2)), (None, None));
        assert_eq!(b.after_block(3).unwrap().end, lay.range("blocks.4.ffn.fc2.bias").end);
        assert_eq!(b.after_block(1).unwrap().start, lay.range("blocks.1.ada_gss").start);
        assert_eq!(b.after_block(0).unwrap(), lay.range("blocks.0.ada_gss").start..lay.range("blocks.1.ada_gss").start);
    }
}
