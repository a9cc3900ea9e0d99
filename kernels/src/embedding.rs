//! Embedding lookups: rows of a table `[V, C]` by index (upstream `lvl_embed`, VAR's `class_emb`).

use crate::Real;

/// `out[i] (=|+=) table[idx[i]]`, `out: [len(idx), C]`.
pub fn embedding_forward<T: Real>(table: &[T], idx: &[usize], out: &mut [T], c: usize, accumulate: bool) {
    assert_eq!(out.len(), idx.len() * c, "embedding_forward: out is not [{}, {c}]", idx.len());
    for (row, &i) in out.chunks_exact_mut(c).zip(idx) {
        let src = &table[i * c..(i + 1) * c];
        if accumulate {
            row.iter_mut().zip(src).for_each(|(o, s)| *o += *s);
        } else {
            row.copy_from_slice(src);
        }
    }
}

/// `dtable[idx[i]] += dout[i]`.
pub fn embedding_backward<T: Real>(dout: &[T], idx: &[usize], dtable: &mut [T], c: usize) {
    for (row, &i) in dout.chunks_exact(c).zip(idx) {
        dtable[i * c..(i + 1) * c].iter_mut().zip(row).for_each(|(g, d)| *g += *d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    #[test]
    fn lookup_and_scatter_add_gradient() {
        let (v, c) = (5, 3);
        let idx = [4usize, 0, 4, 2];
        let (table, r) = (noise(v * c, 1), noise(idx.len() * c, 2));
        let mut dt = vec![0.0; v * c];
        embedding_backward(&r, &idx, &mut dt, c);
        let loss = |t: &[f64]| {
            let mut out = vec![0.0; idx.len() * c];
            embedding_forward(t, &idx, &mut out, c, false);
            dot(&out, &r)
        };
        check("embedding", &table, &dt, loss, 1e-6, 1e-9);
        assert_eq!(dt[3..6], [0.0; 3], "row 1 is never looked up");
    }
}
