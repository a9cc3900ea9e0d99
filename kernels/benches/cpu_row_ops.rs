//! The CPU row-wise ops (LayerNorm, RMSNorm, modulation, gated residual, head normalisation, RoPE),
//! forward + backward, on one thread and on every thread of rayon's pool: time per call, GB/s and
//! the speed-up. Their results are the same bits either way (`rows::tests`).
//!
//! `cargo bench -p infinity-kernels --bench cpu_row_ops` (shapes: 4 samples × 521 tokens, the 256 px
//! schedule, at widths 256 and 1024 with head dim 64).

use std::time::Instant;

use infinity_kernels::gradcheck::noise;
use infinity_kernels::rope::RopeTable;
use infinity_kernels::{adaln, attention, norm, rope};

/// Median of `reps` timed calls of `f`, in ms.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm the caches and the pool
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn f32s(n: usize, seed: u64) -> Vec<f32> {
    noise(n, seed).iter().map(|&v| v as f32).collect()
}

fn main() {
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let threads = rayon::current_num_threads();
    // the 256 px schedule: 1 + 4 + 16 + 36 + 64 + 144 + 256 tokens = 521 (1.000 template, 0.06M)
    let scales = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)];
    let rope_table = RopeTable::new(64, &scales, (16, 16));
    let (b, l) = (4, rope_table.num_tokens());
    println!("{b} samples × {l} tokens; ms per call (median of 20), 1 thread vs {threads}");
    println!("{:<34} {:>9} {:>9} {:>9} {:>7}", "op (forward + backward)", "1 thread", "all", "GB/s all", "×");
    for c in [256, 1024] {
        let (n, heads) = (b * l, c / 64);
        let (x, dy, w, bias) = (f32s(n * c, 1), f32s(n * c, 2), f32s(c, 3), f32s(c, 4));
        let (scale, shift, gain) = (f32s(b * c, 5), f32s(b * c, 6), f32s(heads, 7));
        let (mut y, mut dx, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        let (mut dw, mut db, mut ds, mut dsh) = (vec![0.0; c], vec![0.0; c], vec![0.0; b * c], vec![0.0; b * c]);
        let mut dgain = vec![0.0; heads];
        println!("width {c} ({n} rows)");
        // `arrays`: the [N, C] f32 arrays read and written per call
        let report = |name: &str, arrays: f64, f: &mut (dyn FnMut() + Send)| {
            let serial = one.install(|| median_ms(20, &mut *f));
            let all = median_ms(20, f);
            let gbs = arrays * (n * c * 4) as f64 / all / 1e6;
            println!("  {name:<32} {serial:9.3} {all:9.3} {gbs:9.1} {:6.2}×", serial / all);
        };
        report("layernorm (affine)", 6.0, &mut || {
            norm::layernorm_forward(&x, Some(&w), Some(&bias), &mut y, &mut mean, &mut rstd, c, 1e-6);
            norm::layernorm_backward(&dy, &x, Some(&w), &mean, &rstd, &mut dx, Some(&mut dw), Some(&mut db), c);
        });
        report("rmsnorm", 5.0, &mut || {
            norm::rmsnorm_forward(&x, &w, &mut y, &mut rstd, c, 1e-6);
            norm::rmsnorm_backward(&dy, &x, &w, &rstd, &mut dx, &mut dw, c);
        });
        report("modulate", 5.0, &mut || {
            adaln::modulate_forward(&x, &scale, &shift, &mut y, l, c);
            adaln::modulate_backward(&dy, &x, &scale, &mut dx, &mut ds, &mut dsh, l, c);
        });
        report("gated residual", 6.0, &mut || {
            adaln::gated_residual_forward(&mut y, &x, &scale, l, c);
            adaln::gated_residual_backward(&dy, &x, &scale, &mut dx, &mut ds, l, c);
        });
        report("normalize heads", 5.0, &mut || {
            let norms = attention::normalize_heads_forward(&x, &mut y, heads, 64, &gain);
            attention::normalize_heads_backward(&dy, &x, &norms, &gain, &mut dx, Some(&mut dgain), heads, 64);
        });
        report("rope (and its inverse)", 4.0, &mut || {
            rope::rope_apply(&mut y, &rope_table, l, heads, 0, false);
            rope::rope_apply(&mut y, &rope_table, l, heads, 0, true);
        });
    }
}
