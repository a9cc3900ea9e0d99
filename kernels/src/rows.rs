//! Parallel tasks for the row-wise ops (norms, modulation, gates, head normalisation, RoPE) over
//! `[N, width]` rows: each task a run of whole rows, about [`CHUNK`] elements. Each row is computed as
//! the serial loop computes it, and a sum over rows (a norm's weight gradient, a gate's) keeps row
//! order for every element, so the split changes no bit: the same result on 2 cores or 64.

use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise the task, small enough to balance 2–64 cores.
/// An input of one task's size runs on the calling thread (rayon splits nothing and wakes no one).
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows of `width` elements per task (at least one).
pub(crate) fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// `f(first_row, rows)` on runs of whole rows of `out` (`[N, width]`), in parallel.
pub(crate) fn for_row_runs<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = rows_per_task(width);
    out.par_chunks_mut(rows * width).enumerate().for_each(|(j, run)| f(j * rows, run));
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::noise;
    use crate::rope::RopeTable;
    use crate::{adaln, attention, norm, rope};

    fn f32s(n: usize, seed: u64) -> Vec<f32> {
        noise(n, seed).iter().map(|&v| v as f32).collect()
    }

    /// Each row-wise op over many rows (several tasks, the last one short) gives the bits of the same
    /// op called a row at a time (one task on the calling thread; sums over rows in row order).
    #[test]
    fn splitting_rows_into_tasks_changes_no_bit() {
        let rope = RopeTable::new(16, &[(1, 1), (3, 3), (8, 8), (25, 25)], (64, 64));
        let (b, l, heads, hd) = (3, rope.num_tokens(), 3, 16);
        let (c, n) = (heads * hd, b * rope.num_tokens()); // 48 channels: 341 rows a task, 7 tasks
        assert!(n > 6 * super::rows_per_task(c) && n % super::rows_per_task(c) != 0);
        let (x, dy, w, bias) = (f32s(n * c, 1), f32s(n * c, 2), f32s(c, 3), f32s(c, 4));
        let (scale, shift) = (f32s(b * c, 5), f32s(b * c, 6));
        let row = |r: usize| r * c..(r + 1) * c;
        let sample = |r: usize| (r / l) * c..(r / l + 1) * c;

        // LayerNorm with affine, forward and backward
        let (mut y, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        norm::layernorm_forward(&x, Some(&w), Some(&bias), &mut y, &mut mean, &mut rstd, c, 1e-6);
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        norm::layernorm_backward(&dy, &x, Some(&w), &mean, &rstd, &mut dx, Some(&mut dw), Some(&mut db), c);
        let (mut y1, mut dx1, mut dw1, mut db1) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        for r in 0..n {
            let (mut m, mut s) = ([0.0], [0.0]);
            norm::layernorm_forward(&x[row(r)], Some(&w), Some(&bias), &mut y1[row(r)], &mut m, &mut s, c, 1e-6);
            assert_eq!((m[0], s[0]), (mean[r], rstd[r]), "layernorm statistics, row {r}");
            let (dwr, dbr) = (Some(&mut dw1[..]), Some(&mut db1[..]));
            norm::layernorm_backward(&dy[row(r)], &x[row(r)], Some(&w), &m, &s, &mut dx1[row(r)], dwr, dbr, c);
        }
        assert!(y == y1 && dx == dx1 && dw == dw1 && db == db1, "layernorm");

        // RMSNorm
        let (mut y, mut rstd, mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n * c], vec![0.0; c]);
        norm::rmsnorm_forward(&x, &w, &mut y, &mut rstd, c, 1e-6);
        norm::rmsnorm_backward(&dy, &x, &w, &rstd, &mut dx, &mut dw, c);
        let (mut y1, mut dx1, mut dw1) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; c]);
        for r in 0..n {
            let mut s = [0.0];
            norm::rmsnorm_forward(&x[row(r)], &w, &mut y1[row(r)], &mut s, c, 1e-6);
            norm::rmsnorm_backward(&dy[row(r)], &x[row(r)], &w, &s, &mut dx1[row(r)], &mut dw1, c);
        }
        assert!(y == y1 && dx == dx1 && dw == dw1, "rmsnorm");

        // modulation and the gated residual, with their sums over each sample's rows
        let (mut y, mut dx, mut ds, mut dsh) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; b * c], vec![0.0; b * c]);
        adaln::modulate_forward(&x, &scale, &shift, &mut y, l, c);
        adaln::modulate_backward(&dy, &x, &scale, &mut dx, &mut ds, &mut dsh, l, c);
        let (mut res, mut dg, mut dgamma) = (dy.clone(), vec![0.0; n * c], vec![0.0; b * c]);
        adaln::gated_residual_forward(&mut res, &x, &scale, l, c);
        adaln::gated_residual_backward(&dy, &x, &scale, &mut dg, &mut dgamma, l, c);
        let (mut y1, mut dx1, mut ds1, mut dsh1) =
            (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; b * c], vec![0.0; b * c]);
        let (mut res1, mut dg1, mut dgamma1) = (dy.clone(), vec![0.0; n * c], vec![0.0; b * c]);
        for r in 0..n {
            let (sc, sh, xr, dyr) = (&scale[sample(r)], &shift[sample(r)], &x[row(r)], &dy[row(r)]);
            adaln::modulate_forward(xr, sc, sh, &mut y1[row(r)], 1, c);
            let (dsr, dshr) = (&mut ds1[sample(r)], &mut dsh1[sample(r)]);
            adaln::modulate_backward(dyr, xr, sc, &mut dx1[row(r)], dsr, dshr, 1, c);
            adaln::gated_residual_forward(&mut res1[row(r)], xr, sc, 1, c);
            adaln::gated_residual_backward(dyr, xr, sc, &mut dg1[row(r)], &mut dgamma1[sample(r)], 1, c);
        }
        assert!(y == y1 && dx == dx1 && ds == ds1 && dsh == dsh1, "modulation");
        assert!(res == res1 && dg == dg1 && dgamma == dgamma1, "gated residual");

        // cosine normalisation of the heads (and its gain's gradient), then RoPE and its inverse
        let gain = f32s(heads, 7);
        let (mut y, mut dx, mut dgain) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; heads]);
        let norms = attention::normalize_heads_forward(&x, &mut y, heads, hd, &gain);
        attention::normalize_heads_backward(&dy, &x, &norms, &gain, &mut dx, Some(&mut dgain), heads, hd);
        let (mut y1, mut dx1, mut dgain1) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; heads]);
        for r in 0..n {
            let nr = attention::normalize_heads_forward(&x[row(r)], &mut y1[row(r)], heads, hd, &gain);
            assert_eq!(nr, norms[r * heads..(r + 1) * heads], "head norms, row {r}");
            let dxr = &mut dx1[row(r)];
            attention::normalize_heads_backward(&dy[row(r)], &x[row(r)], &nr, &gain, dxr, Some(&mut dgain1), heads, hd);
        }
        assert!(y == y1 && dx == dx1 && dgain == dgain1, "normalize_heads");
        for inverse in [false, true] {
            let (mut y, mut y1) = (x.clone(), x.clone());
            rope::rope_apply(&mut y, &rope, l, heads, 0, inverse);
            for r in 0..n {
                rope::rope_apply(&mut y1[row(r)], &rope, 1, heads, r % l, inverse);
            }
            assert!(y == y1, "rope, inverse {inverse}");
        }
    }
}
