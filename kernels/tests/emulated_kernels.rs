//! The tensor-core kernels' CUDA source run on the CPU through kernels/emulator (every thread a fiber;
//! warp collectives, ldmatrix and mma.sync emulated), against their CPU twins with the GPU tests'
//! tolerances (docs/numerics.md). No GPU needed: this runs in CI, so a wrong fragment index, mask or
//! tail in the attention or fused head kernels, or a wrong window in bsq.cu, fails here, not first on
//! a GPU. Needs a C++17 compiler (`c++`, or `CXX`);
//! says it skipped without one, except under CI.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::Command;

use infinity_kernels::attention::{self, AttnDims, Segment};
use infinity_kernels::cuda::attention::expand_segments;
use infinity_kernels::cuda::compile::source;
use infinity_kernels::qkv::{qkv_heads_backward, qkv_heads_forward, QkvHeads};
use infinity_kernels::rope::RopeTable;
use infinity_kernels::{act, adaln, adamw, bitwise_ce, bsq, linear};
use rand::{Rng, SeedableRng};

const EMULATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/emulator");

/// Builds the emulator driver `driver`.cpp over kernels/cuda/`file` (our headers inlined), or None
/// (skipped) without a C++ compiler outside CI.
fn build(file: &str, driver: &str) -> Option<PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must run the emulated kernels, but `{cxx}` was not found");
        println!("skipped: no C++ compiler (`{cxx}`; set CXX)");
        return None;
    }
    let src = source(file).unwrap_or_else(|e| panic!("{e}"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("emulated-{driver}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernel.cu"), src).unwrap();
    let exe = dir.join(driver);
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-w", "-ffp-contract=off", "-fno-strict-aliasing", "-I", EMULATOR, "-I"])
        .arg(&dir)
        .arg(format!("{EMULATOR}/{driver}.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "building the {driver} emulator failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

fn write<T: Copy>(dir: &Path, name: &str, v: &[T]) {
    // SAFETY: plain f32 / i32 values viewed as their bytes
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) };
    std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
}

fn read_bytes(dir: &Path, name: &str) -> Vec<[u8; 4]> {
    let bytes = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
    bytes.chunks_exact(4).map(|b| b.try_into().unwrap()).collect()
}

fn read(dir: &Path, name: &str) -> Vec<f32> {
    read_bytes(dir, name).into_iter().map(f32::from_le_bytes).collect()
}

/// Runs `exe` on the inputs in `dir` with `args`; panics with the emulator's message when it fails.
fn run(exe: &Path, dir: &Path, args: &[String], tag: &str) {
    let t0 = std::time::Instant::now();
    let out = Command::new(exe).arg(dir).args(args).output().unwrap();
    // a status by signal (SIGSEGV: past a buffer or the launch's shared memory) says so
    assert!(
        out.status.success(),
        "{tag}: the emulator failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{tag}: emulated in {:.1} s", t0.elapsed().as_secs_f64());
}

/// `x` rounded to bf16, as bits (round to nearest even; the inputs here are finite).
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Uniform values in (−scale, scale) that are exact bf16 numbers.
fn rand_bf16(rng: &mut dyn rand::RngCore, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| f32::from_bits((bf16_bits(rng.random_range(-scale..scale)) as u32) << 16)).collect()
}

fn close(name: &str, a: &[f32], b: &[f32], rtol: f32) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let worst = infinity_kernels::compare::max_rel_diff(a, b, 1e-30) as f32; // a NaN fails
    assert!(worst <= rtol, "{name}: max relative error {worst:e} > {rtol:e}");
    println!("{name}: max relative error {worst:.2e}");
}

/// One attention case through an emulated attention driver (`exe`) against the CPU twin: the forward's
/// out and lse, and the backward (from the twin's out and lse) within `tol` = (out, lse, grads).
/// Returns the case's folder (the driver's outputs).
#[allow(clippy::too_many_arguments)]
fn attention_case(
    exe: &Path,
    rng: &mut impl Rng,
    tag: &str,
    segs: &[Segment],
    (nq, nk): (usize, usize),
    dims: AttnDims,
    inputs: impl Fn(&mut dyn rand::RngCore, usize, f32) -> Vec<f32>,
    (t_out, t_lse, t_grad): (f32, f32, f32),
) -> PathBuf {
    let w = dims.heads * dims.head_dim;
    let q = inputs(rng, nq * w, 2.0);
    let k = inputs(rng, nk * w, 2.0);
    let v = inputs(rng, nk * w, 1.0);
    let d_o = inputs(rng, nq * w, 1.0);
    let (mut o, mut lse) = (vec![0.0f32; nq * w], vec![0.0f32; nq * dims.heads]);
    attention::attention_forward(&q, &k, &v, &mut o, &mut lse, segs, dims);
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()], vec![0.0f32; v.len()]);
    attention::attention_backward(&d_o, &q, &k, &v, &o, &lse, &mut dq, &mut dk, &mut dv, segs, dims);

    let dir = exe.with_file_name(format!("case-{}", tag.replace(' ', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    for (n, x) in [("q", &q), ("k", &k), ("v", &v), ("do", &d_o), ("o", &o), ("lse", &lse)] {
        write(&dir, n, x);
    }
    let [k0, nkr, q0, nqk] = expand_segments(segs, nq, nk).unwrap();
    for (n, x) in [("k0", &k0), ("nk", &nkr), ("q0", &q0), ("nqk", &nqk)] {
        write(&dir, n, x);
    }
    let mut args = [nq, nk, dims.heads, dims.head_dim].map(|x| x.to_string()).to_vec();
    args.push(format!("{:e}", dims.scale as f32));
    run(exe, &dir, &args, tag);
    close(&format!("{tag} out"), &read(&dir, "o_out"), &o, t_out);
    close(&format!("{tag} lse"), &read(&dir, "lse_out"), &lse, t_lse);
    close(&format!("{tag} dq"), &read(&dir, "dq"), &dq, t_grad);
    close(&format!("{tag} dk"), &read(&dir, "dk"), &dk, t_grad);
    close(&format!("{tag} dv"), &read(&dir, "dv"), &dv, t_grad);
    dir
}

/// Block-causal self-attention over two samples of `per_scale`, and cross-attention of the same queries
/// to `text` tokens per sample.
fn self_and_cross(per_scale: &[usize], text: [usize; 2]) -> [(&'static str, Vec<Segment>, usize); 2] {
    let l: usize = per_scale.iter().sum();
    let cross = vec![Segment { q0: 0, nq: l, k0: 0, nk: text[0] }, Segment { q0: l, nq: l, k0: text[0], nk: text[1] }];
    [("self", attention::block_causal_segments(2, per_scale), 2 * l), ("cross", cross, text[0] + text[1])]
}

/// attention_bf16.cu (forward, dq, dk/dv) on block-causal self-attention over two samples and on
/// cross-attention to ragged text, head dims 32, 64 and 128; rows not multiples of the 64-row tiles.
/// The GPU test's tolerances (bf16 products, f32 accumulation and statistics).
#[test]
fn bf16_attention_kernels_match_their_cpu_twin_on_the_emulator() {
    let Some(exe) = build("attention_bf16.cu", "attention_bf16") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let per_scale = [1usize, 4, 16, 36, 64];
    let l: usize = per_scale.iter().sum();
    for (heads, c) in [(3, 32), (2, 64), (1, 128)] {
        let dims = AttnDims { heads, head_dim: c, scale: 1.0 / (c as f64).sqrt() };
        for (name, segs, nk) in self_and_cross(&per_scale, [5, 70]) {
            let tag = format!("emulated bf16 {name} attention L={l} H={heads} c={c}");
            let dir = attention_case(&exe, &mut rng, &tag, &segs, (2 * l, nk), dims, rand_bf16, (1e-2, 1e-4, 2e-2));
            // the bf16-O forward (what the model keeps): exactly the f32 output rounded
            let rounded: Vec<u16> = read(&dir, "o_out").iter().map(|&v| bf16_bits(v)).collect();
            assert!(read_u16(&dir, "o16_out") == rounded, "{tag}: the bf16 output is not the f32 one rounded");
        }
    }
}

/// The f32 attention driver `exe` on block-causal self-attention over two samples of `per_scale`,
/// cross-attention to ragged text, the attention pool (one query per sample) and cross-attention with
/// an empty caption and queries in no segment, head dims `dims`, with the GPU test's 1e-5 / 1e-4 bounds.
fn f32_attention_cases(exe: &Path, seed: u64, kernels: &str, per_scale: &[usize], dims: &[(usize, usize)]) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let l: usize = per_scale.iter().sum();
    let uniform = |rng: &mut dyn rand::RngCore, n: usize, scale: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    };
    for &(heads, c) in dims {
        let cross = 1.0 / (c as f64).sqrt();
        let pool = vec![Segment { q0: 0, nq: 1, k0: 0, nk: 5 }, Segment { q0: 1, nq: 1, k0: 5, nk: 9 }];
        let [(_, self_segs, _), (_, cross_segs, nt)] = self_and_cross(per_scale, [5, 9]);
        // an empty caption (a segment with no keys) and queries in no segment: lse = −∞, out and grads 0
        let gaps = vec![Segment { q0: 0, nq: l - 3, k0: 0, nk: 5 }, Segment { q0: l, nq: l, k0: 5, nk: 0 }];
        for (name, segs, nq, nk, scale) in [
            ("self", self_segs, 2 * l, 2 * l, 1.0),
            ("cross", cross_segs, 2 * l, nt, cross),
            ("pool", pool, 2, nt, cross),
            ("gaps", gaps, 2 * l, nt, cross),
        ] {
            let dims = AttnDims { heads, head_dim: c, scale };
            let tag = format!("emulated {kernels} {name} attention L={l} H={heads} c={c}");
            attention_case(exe, &mut rng, &tag, &segs, (nq, nk), dims, uniform, (1e-5, 1e-5, 1e-4));
        }
    }
}

/// attention.cu (the f32 kernels of any head dim up to 128, and the wide ones up to 256).
#[test]
fn f32_attention_kernels_match_their_cpu_twin_on_the_emulator() {
    let Some(exe) = build("attention.cu", "attention_f32") else { return };
    f32_attention_cases(&exe, 32, "f32", &[1, 4, 16, 36], &[(3, 32), (1, 128), (1, 224)]);
}

/// attention_tiled.cu (the register-tiled f32 kernels, head dims 32, 64 and 128): 242 rows, so four
/// 64-row blocks (the last one partial) and eight 32-row tiles, with rows that see some of a tile.
#[test]
fn tiled_f32_attention_kernels_match_their_cpu_twin_on_the_emulator() {
    let Some(exe) = build("attention_tiled.cu", "attention_tiled") else { return };
    f32_attention_cases(&exe, 33, "tiled f32", &[1, 4, 16, 36, 64], &[(3, 32), (2, 64), (1, 128)]);
}

/// One shape of a fused head + bitwise CE driver (`exe`) against the CPU twin (linear, bitwise CE,
/// linear backward); `bf16`: h and W rounded to bf16 first and dh within 2e-2 (bf16 dlogits in its
/// product), else 1e-5 throughout.
fn head_case(exe: &Path, rng: &mut impl Rng, (n, c, d): (usize, usize, usize), bf16: bool) {
    let kind = if bf16 { "bf16" } else { "f32" };
    let tag = format!("emulated {kind} head+CE n={n} c={c} d={d}");
    let values = |rng: &mut dyn rand::RngCore, len: usize, scale: f32| -> Vec<f32> {
        if bf16 {
            rand_bf16(rng, len, scale)
        } else {
            (0..len).map(|_| rng.random_range(-scale..scale)).collect()
        }
    };
    let h = values(rng, n * c, 1.0);
    let w = values(rng, 2 * d * c, 0.2);
    let b: Vec<f32> = (0..2 * d).map(|_| rng.random_range(-0.5..0.5)).collect();
    let labels: Vec<u8> = (0..n * d).map(|_| rng.random_range(0..2)).collect();
    let weights: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
    let mut logits = vec![0.0f32; n * 2 * d];
    linear::linear_forward(&h, &w, Some(&b), &mut logits, n, c, 2 * d);
    let mut dz = vec![0.0f32; n * 2 * d];
    let w64: Vec<f64> = weights.iter().map(|&v| v as f64).collect();
    let cpu = bitwise_ce::bitwise_ce(&logits, &labels, &w64, 0.05, d, Some(&mut dz));
    let (mut dh, mut dw) = (vec![0.0f32; n * c], vec![0.0f32; 2 * d * c]);
    linear::linear_backward(&dz, &h, &w, Some(&mut dh), &mut dw, None, n, c, 2 * d);

    let dir = exe.with_file_name(format!("case-n{n}-c{c}-d{d}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, x) in [("h", &h), ("w", &w), ("b", &b), ("weights", &weights)] {
        write(&dir, name, x);
    }
    write(&dir, "labels", &labels);
    let mut args: Vec<String> = [n, c, d].map(|x| x.to_string()).into_iter().chain(["0.05".into()]).collect();
    // the bf16 kernel's shared memory as the host sizes it, for h in f32 and in bf16
    let smem = |h16| infinity_kernels::cuda::head_ce::head_bf16_smem_bytes(2 * d, h16).to_string();
    let args16 = [&args[..], &[smem(true), "h16".to_string()]].concat();
    if bf16 {
        args.push(smem(false));
    }
    run(exe, &dir, &args, &tag);
    let cpu_loss: Vec<f32> = cpu.token_loss.iter().map(|&v| v as f32).collect();
    let outputs = ["loss", "dlogits", "dh"].map(|name| read(&dir, name));
    close(&format!("{tag} loss"), &outputs[0], &cpu_loss, 1e-5);
    close(&format!("{tag} dlogits"), &outputs[1], &dz, 1e-5);
    close(&format!("{tag} dh"), &outputs[2], &dh, if bf16 { 2e-2 } else { 1e-5 });
    let correct: Vec<u32> = read_bytes(&dir, "correct").into_iter().map(u32::from_le_bytes).collect();
    let off = correct.iter().zip(&cpu.correct_bits).filter(|(a, b)| a != b).count();
    assert!(off <= n / 100 + 1, "{tag}: {off} tokens count different correct bits");
    if bf16 {
        // h in bf16 (the values the f32 entry point rounds, here not exactly bf16): the same bits out
        let h: Vec<f32> = (0..n * c).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        write(&dir, "h", &h);
        run(exe, &dir, &args, &format!("{tag}, h f32"));
        let f32_in = (["loss", "dlogits", "dh"].map(|name| read(&dir, name)), read_bytes(&dir, "correct"));
        run(exe, &dir, &args16, &format!("{tag}, h bf16"));
        let bf16_in = (["loss", "dlogits", "dh"].map(|name| read(&dir, name)), read_bytes(&dir, "correct"));
        assert!(f32_in == bf16_in, "{tag}: h in bf16 gives other results than h in f32");
    }
}

/// head_ce_bf16.cu (W's fragment packings, the fused head + bitwise CE) on the GPU test's shapes:
/// every 2d the kernels take, tokens not multiples of the 32-token blocks, and widths that go round
/// the logits' stages and dh's rings several times.
#[test]
fn bf16_fused_head_and_loss_match_their_cpu_twins_on_the_emulator() {
    let Some(exe) = build("head_ce_bf16.cu", "head_ce_bf16") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for shape in [(1, 64, 8), (45, 128, 16), (517, 256, 32), (100, 768, 64), (33, 1024, 16), (70, 2048, 32)] {
        head_case(&exe, &mut rng, shape, true);
    }
}

/// head_ce.cu (the f32 fused head + bitwise CE): every padded logit count (d of 1, 16, 24, 32, 64),
/// widths not multiples of its 32-column tiles or 64-column dh chunks (odd ones: scalar stores), tokens
/// not multiples of its 64-token blocks.
#[test]
fn f32_fused_head_and_loss_match_their_cpu_twins_on_the_emulator() {
    let Some(exe) = build("head_ce.cu", "head_ce_f32") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    for shape in [(1, 8, 1), (37, 100, 16), (131, 256, 32), (20, 200, 64), (70, 97, 24), (130, 2048, 32)] {
        head_case(&exe, &mut rng, shape, false);
    }
}

/// bsq.cu (residual area pooling by thread, warp and block, keyed flips, bilinear accumulation, the
/// next scale's inputs), by both paths (one launch for all scales, two per scale) on the GPU test's
/// schedules: the two give the same labels and inputs bit for bit, and against `bsq::self_correct`
/// with `bsq::keyed_flips` per sample labels are equal except where a residual is within rounding of
/// zero (the warp and block sums add in another order), inputs within 1e-5 when all labels agree.
#[test]
fn batch_self_correction_matches_its_cpu_twin_on_the_emulator() {
    let Some(exe) = build("bsq.cu", "bsq") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let square: Vec<(usize, usize)> = vec![(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)];
    let wide: Vec<(usize, usize)> = vec![(1, 1), (1, 2), (2, 3), (3, 5), (6, 10), (9, 15)];
    let big: Vec<(usize, usize)> = vec![(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32), (48, 48)];
    // the full-size scale second, or alone (no inputs at all)
    let two: Vec<(usize, usize)> = vec![(1, 1), (3, 4)];
    let one: Vec<(usize, usize)> = vec![(2, 3)];
    for (scales, b, d, p_max, layers) in [
        (&square, 5, 32, 0.3, 5),
        (&wide, 5, 16, 0.0, 13),
        (&wide, 5, 32, 0.1, 13),
        (&big, 1, 4, 0.2, 13),
        (&two, 3, 8, 0.5, 13),
        (&one, 2, 8, 0.0, 13),
    ] {
        let (hh, ww) = *scales.last().unwrap();
        let tag = format!("emulated self-correction {hh}x{ww} d={d} p_max={p_max}");
        let latent: Vec<f32> = (0..b * d * hh * ww).map(|_| rng.random_range(-1.0..1.0)).collect();
        let keys: Vec<u64> = (0..b).map(|_| rng.random()).collect();
        let (l, n0) = (bsq::num_tokens(scales), scales[0].0 * scales[0].1);
        let cpu = bsq::self_correct_keyed(&latent, &keys, d, scales, p_max, layers);
        let near_zero: usize = cpu.iter().map(|c| c.residual.iter().filter(|r| r.abs() < 1e-6).count()).sum();
        let cpu_bits: Vec<u8> = cpu.iter().flat_map(|c| c.bits.iter().copied()).collect();
        let cpu_x: Vec<f32> = cpu.iter().flat_map(|c| c.x_wo_prefix.iter().copied()).collect();

        let outputs: Vec<(Vec<u8>, Vec<f32>)> = ["planes", "scales"]
            .iter()
            .map(|path| {
                let dir = exe.with_file_name(format!("case-{hh}x{ww}-d{d}-p{p_max}-{path}"));
                std::fs::create_dir_all(&dir).unwrap();
                write(&dir, "latent", &latent);
                write(&dir, "keys", &keys);
                let sched = scales.iter().map(|&(h, w)| format!("{h}x{w}")).collect::<Vec<_>>().join(",");
                let mut args =
                    vec![b.to_string(), d.to_string(), p_max.to_string(), layers.to_string(), sched, path.to_string()];
                if *path == "planes" {
                    args.push(infinity_kernels::cuda::bsq::planes_smem_bytes(scales).to_string());
                }
                run(&exe, &dir, &args, &format!("{tag} ({path})"));
                (std::fs::read(dir.join("gt_bits.bin")).unwrap(), read(&dir, "x_wo_prefix"))
            })
            .collect();
        let (bits, x) = &outputs[0];
        assert!(outputs[0] == outputs[1], "{tag}: the one-launch and per-scale paths differ");
        assert_eq!((bits.len(), x.len()), (b * l * d, b * (l - n0) * d), "{tag}: output sizes");
        let wrong = bits.iter().zip(&cpu_bits).filter(|(a, c)| a != c).count();
        assert!(wrong <= 4 * near_zero, "{tag}: {wrong} labels differ ({near_zero} residuals within 1e-6 of 0)");
        if wrong == 0 {
            close(&format!("{tag} inputs"), x, &cpu_x, 1e-5);
        }
        println!("{tag}: {wrong} of {} labels differ", bits.len());
    }
}

fn read_u16(dir: &Path, name: &str) -> Vec<u16> {
    let bytes = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
}

/// adaln.cu's out-of-place gated residual (its backward f32 and bf16 out), and act.cu's
/// bias + GELU and the GELU's backward (f32 and bf16 out): the f32 results against the CPU twins, and
/// every bf16 value exactly the f32 kernel's result rounded (what a bf16 GEMM read before).
#[test]
fn gated_residual_and_bias_gelu_match_their_cpu_twins_on_the_emulator() {
    let (Some(adaln_exe), Some(act_exe)) = (build("adaln.cu", "adaln"), build("act.cu", "act")) else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let mut uniform = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };

    let (b, l, c) = (3, 57, 96);
    let (x, y) = (uniform(b * l * c, 2.0), uniform(b * l * c, 1.0));
    let gamma = uniform(b * c, 1.0);
    let mut res = x.clone();
    adaln::gated_residual_forward(&mut res, &y, &gamma, l, c);
    let dir = adaln_exe.with_file_name("case");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, v) in [("x", &x), ("y", &y), ("gamma", &gamma)] {
        write(&dir, name, v);
    }
    run(&adaln_exe, &dir, &[b, l, c].map(|v| v.to_string()), "emulated gated residual");
    close("emulated gated residual", &read(&dir, "res"), &res, 1e-6);
    let (mut dy, mut dgamma) = (vec![0.0f32; x.len()], vec![0.0f32; gamma.len()]);
    adaln::gated_residual_backward(&x, &y, &gamma, &mut dy, &mut dgamma, l, c);
    let emulated = read(&dir, "dy");
    close("emulated gated residual dy", &emulated, &dy, 1e-6);
    let rounded: Vec<u16> = emulated.iter().map(|&v| bf16_bits(v)).collect();
    assert!(
        read_u16(&dir, "dy16") == rounded,
        "gated_residual_backward_bf16 is not gated_residual_backward_f32 rounded"
    );

    let (rows, cols) = (37, 96);
    let (f, bias) = (uniform(rows * cols, 4.0), uniform(cols, 1.0));
    let fb: Vec<f32> = f.iter().enumerate().map(|(i, v)| v + bias[i % cols]).collect();
    let mut g = vec![0.0f32; fb.len()];
    act::gelu_forward(&fb, &mut g);
    let dy = uniform(rows * cols, 1.0);
    let mut dx = vec![0.0f32; fb.len()];
    act::gelu_backward(&dy, &fb, &mut dx);
    let dir = act_exe.with_file_name("case");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "f", &f);
    write(&dir, "b", &bias);
    write(&dir, "dy", &dy);
    run(&act_exe, &dir, &[(rows * cols).to_string(), cols.to_string()], "emulated bias + GELU");
    let f_out = read(&dir, "f_out");
    close("emulated bias + gelu: f + b", &f_out, &fb, 1e-6);
    close("emulated bias + gelu: gelu", &read(&dir, "g"), &g, 1e-5);
    close("emulated gelu backward", &read(&dir, "dx"), &dx, 1e-5);
    // bf16 alone: x = f + b rounded, g and dx the f32 kernels' results on that x, rounded
    let rounded = |v: &[f32]| -> Vec<u16> { v.iter().map(|&v| bf16_bits(v)).collect() };
    assert!(read_u16(&dir, "x16") == rounded(&f_out), "bias_gelu_forward_bf16's x is not f + b rounded");
    assert!(read_u16(&dir, "g16") == rounded(&read(&dir, "gw")), "bias_gelu_forward_bf16's g is not gelu(x) rounded");
    assert!(read_u16(&dir, "dx16") == rounded(&read(&dir, "dxw")), "gelu_backward_bf16 is not the f32 one rounded");
}

/// util.cu's column reductions (32 × 8 thread blocks: the emulator's 2-D blocks), as util.rs launches
/// them: bias sums over f32 and over bf16-only values, a strided column sum, and the AdaLN parameter
/// gradients Σ dy, Σ dy·x and Σ dy·x̂ with x̂ recomputed from the LayerNorm's input and statistics
/// (`Factor::Normalized`, what the blocks and the head use), against f64 sums within 1e-5. Rows not
/// multiples of the 64-row chunks, columns not multiples of the 32-column tiles.
#[test]
fn column_reductions_match_f64_sums_on_the_emulator() {
    let Some(exe) = build("util.cu", "util") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(44);
    let mut uniform = |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
    for (g, l, c) in [(1, 1, 32), (3, 57, 100), (2, 130, 40)] {
        let (rows, cs) = (g * l, c - 7);
        let tag = format!("emulated column reductions {g}×{l} rows, {c} columns");
        let (a, b) = (uniform(rows * c, -1.0, 1.0), uniform(rows * c, -2.0, 2.0));
        let (mean, rstd) = (uniform(rows, -0.5, 0.5), uniform(rows, 0.5, 2.0));
        let dir = exe.with_file_name(format!("case-{g}x{l}x{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, v) in [("a", &a), ("b", &b), ("mean", &mean), ("rstd", &rstd)] {
            write(&dir, name, v);
        }
        run(&exe, &dir, &[rows, c, l, cs].map(|v| v.to_string()), &tag);
        let a16: Vec<f32> = a.iter().map(|&v| f32::from_bits((bf16_bits(v) as u32) << 16)).collect();
        let col = |x: &[f32], width: usize| -> Vec<f32> {
            (0..width).map(|j| (0..rows).map(|r| x[r * c + j] as f64).sum::<f64>() as f32).collect()
        };
        let dot = |f: &dyn Fn(usize) -> f64| -> Vec<f32> {
            (0..g * c)
                .map(|i| {
                    (0..l).map(|t| ((i / c) * l + t) * c + i % c).map(|at| a[at] as f64 * f(at)).sum::<f64>() as f32
                })
                .collect()
        };
        close(&format!("{tag}: col_sum"), &read(&dir, "colsum"), &col(&a, c), 1e-5);
        close(&format!("{tag}: col_sum of bf16 values"), &read(&dir, "colsum16"), &col(&a16, c), 1e-5);
        close(&format!("{tag}: strided col_sum"), &read(&dir, "colsum_strided"), &col(&a, cs), 1e-5);
        close(&format!("{tag}: group_dot"), &read(&dir, "dot_one"), &dot(&|_| 1.0), 1e-5);
        close(&format!("{tag}: group_dot, values"), &read(&dir, "dot_values"), &dot(&|at| b[at] as f64), 1e-5);
        let xhat = |at: usize| (b[at] - mean[at / c]) as f64 * rstd[at / c] as f64;
        close(&format!("{tag}: group_dot, recomputed x̂"), &read(&dir, "dot_norm"), &dot(&xhat), 1e-5);
    }
}

/// adamw.cu (the fused AdamW step on gradients still to be scaled, the squared global norm) as ops.rs
/// launches it: parameters and moments bit for bit the CPU twin's (the same operations in the same
/// order, no contraction) and the bf16 weights written by the same step its parameters rounded, Σ g²
/// within 1e-12 (f64 partials summed in a tree). The groups come as runs of one element (tens of
/// thousands of runs, many per chunk) and of up to 12,000 elements (runs across chunks, a chunk inside
/// one run); each case also runs on a grid of 5 blocks, which stride over the 18 chunks as a GPU's
/// 65,535 blocks do past 268 M parameters.
#[test]
fn adamw_and_the_global_norm_match_their_cpu_twins_on_the_emulator() {
    let Some(exe) = build("adamw.cu", "adamw") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(45);
    let n = 70_001;
    // weight decay on two elements of three; three learning-rate groups (μP's: 1, hidden, output)
    let short: Vec<u8> = (0..n).map(|i| adamw::group_byte(i % 3 != 0, (i / 7) % 3)).collect();
    let mut long = adamw::GroupRuns::default();
    while long.len() < n {
        let count = rng.random_range(1..12_000).min(n - long.len());
        long.push(count, adamw::group_byte(rng.random_bool(0.5), rng.random_range(0..3)));
    }
    for (case, groups) in [("runs of 1", adamw::GroupRuns::from_bytes(&short)), ("long runs", long)] {
        let mut uniform =
            |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
        let (mut p, g) = (uniform(n, -1.0, 1.0), uniform(n, -0.1, 0.1));
        let (mut m, mut v) = (uniform(n, -0.01, 0.01), uniform(n, 0.0, 0.001));
        let lr_mult = [1.0, 0.25, 1.0 / 48.0];
        // the gradients still to be averaged over 3 ranks and clipped: read times that factor
        let s = adamw::AdamWScalars::new(3e-4, 0.9, 0.97, 1e-8, 0.05, 7).with_grad_scale(0.81 / 3.0);
        let dir = exe.with_file_name("case");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, x) in [("p", &p), ("g", &g), ("m", &m), ("v", &v)] {
            write(&dir, name, x);
        }
        write(&dir, "run_start", groups.starts());
        write(&dir, "run_group", groups.bytes());
        write(&dir, "lr_mult", &lr_mult);
        write(&dir, "scalars", &[s.beta1, s.beta2, s.eps, s.bc2_sqrt, s.shrink]);
        write(&dir, "lr", &[s.step_size]);
        let sumsq = adamw::sum_squares(&g);
        adamw::adamw_update(&mut p, &g, &mut m, &mut v, &groups, &lr_mult, &s);
        for blocks in ["65535", "5"] {
            let case = format!("{case}, at most {blocks} blocks");
            run(&exe, &dir, &[n.to_string(), format!("{:e}", s.grad_scale), blocks.into()], "emulated adamw");
            for (name, cpu) in [("p", &p), ("m", &m), ("v", &v)] {
                let emulated = read(&dir, &format!("{name}_out"));
                let off = emulated.iter().zip(cpu).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(off, 0, "emulated adamw, {case}: {off} of {n} values of {name} differ from the CPU twin's");
            }
            let p16 = read_u16(&dir, "p16_out");
            let off = p16.iter().zip(&p).filter(|&(&b, &x)| b != bf16_bits(x)).count();
            assert_eq!(off, 0, "emulated adamw, {case}: {off} of {n} bf16 weights are not the CPU twin's rounded");
            let bytes = std::fs::read(dir.join("sumsq.bin")).unwrap();
            let emulated = f64::from_le_bytes(bytes[..8].try_into().unwrap());
            assert!((emulated - sumsq).abs() <= 1e-12 * sumsq, "emulated sum of squares {emulated} vs {sumsq}");
        }
    }
}

/// qkv.cu (the self-attention heads from the qkv projection and their backward, f32 and bf16 out)
/// against the CPU twins: q_raw, k_raw and v are sums (exact), q, k, the norms and the gradients
/// within 1e-5 (summation order), and every bf16 value exactly the f32 kernel's rounded. Head dims 20
/// (lanes idle), 64, 128 and 256 (four pairs per lane), rows from two samples (RoPE token = row mod L).
#[test]
fn qkv_heads_match_their_cpu_twin_on_the_emulator() {
    let Some(exe) = build("qkv.cu", "qkv") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let mut uniform = |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
    let scales = [(1, 1), (2, 2), (3, 3), (4, 4)];
    let l: usize = scales.iter().map(|(h, w)| h * w).sum();
    for (heads, c) in [(3, 20), (2, 64), (1, 128), (2, 256)] {
        let (n, w) = (2 * l, heads * c);
        let rope = RopeTable::new(c, &scales, (4, 4));
        let (qkv, qb, vb, gain) =
            (uniform(n * 3 * w, -2.0, 2.0), uniform(w, -0.5, 0.5), uniform(w, -0.5, 0.5), uniform(heads, 0.5, 2.0));
        let p = QkvHeads { q_bias: &qb, v_bias: &vb, gain: &gain, rope: &rope, l, heads };
        let cpu = qkv_heads_forward(&qkv, &p);
        let tag = format!("emulated qkv heads H={heads} c={c}");
        let dir = exe.with_file_name(format!("case-{heads}-{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (dq, dk, dv) = (uniform(n * w, -1.0, 1.0), uniform(n * w, -1.0, 1.0), uniform(n * w, -1.0, 1.0));
        let inputs = [("qkv", &qkv), ("qb", &qb), ("vb", &vb), ("gain", &gain), ("cos", &rope.cos), ("sin", &rope.sin)];
        for (name, v) in inputs.into_iter().chain([("dq", &dq), ("dk", &dk), ("dv", &dv)]) {
            write(&dir, name, v);
        }
        run(&exe, &dir, &[n, l, heads, c].map(|v| v.to_string()), &tag);
        for (name, want, tol) in [
            ("q_raw", &cpu.q_raw, 0.0),
            ("k_raw", &cpu.k_raw, 0.0),
            ("v", &cpu.v, 0.0),
            ("q", &cpu.q, 1e-5),
            ("k", &cpu.k, 1e-5),
            ("qn", &cpu.q_norm, 1e-6),
            ("kn", &cpu.k_norm, 1e-6),
        ] {
            close(&format!("{tag} {name}"), &read(&dir, name), want, tol);
        }
        for name in ["q", "k", "v"] {
            let rounded: Vec<u16> = read(&dir, name).iter().map(|&v| bf16_bits(v)).collect();
            assert!(
                read_u16(&dir, &format!("{name}16")) == rounded,
                "{tag}: bf16 {name} is not the f32 {name} rounded"
            );
        }
        // the backward, from the emulated forward's outputs (so only the backward's arithmetic differs)
        let fwd = infinity_kernels::qkv::QkvHeadsOut {
            q_raw: read(&dir, "q_raw"),
            k_raw: read(&dir, "k_raw"),
            q_norm: read(&dir, "qn"),
            k_norm: read(&dir, "kn"),
            ..cpu
        };
        let (mut cdq, mut cdk, mut dqkv, mut dgain) =
            (dq.clone(), dk.clone(), vec![0.0f32; 3 * n * w], vec![0.0f32; heads]);
        qkv_heads_backward(&mut cdq, &mut cdk, &dv, &fwd, &p, &mut dqkv, &mut dgain);
        let emulated = read(&dir, "dqkv");
        close(&format!("{tag} dqkv"), &emulated, &dqkv, 1e-5);
        let dq_raw: Vec<f32> = emulated.chunks_exact(3 * w).flat_map(|r| r[..w].to_vec()).collect();
        assert!(read(&dir, "dq_raw") == dq_raw, "{tag}: dq_raw is not part 0 of dqkv");
        let udy = read(&dir, "udy");
        let gain_grad: Vec<f32> = (0..heads).map(|h| udy.iter().skip(h).step_by(heads).sum()).collect();
        close(&format!("{tag} dgain"), &gain_grad, &dgain, 1e-5);
        let rounded: Vec<u16> = emulated.iter().map(|&v| bf16_bits(v)).collect();
        assert!(read_u16(&dir, "dqkv16") == rounded, "{tag}: bf16 dqkv is not the f32 dqkv rounded");
    }
}

/// norm.cu's LayerNorm + modulation (the blocks' pre-norm branches): the forward (f32, and bf16 alone:
/// exactly the f32 values rounded) and the backward into x with and without the residual's gradient,
/// against the CPU twins: 1e-5 (block sums in another order). Widths 96 (a partial warp) and 1040
/// (more columns than threads), through the per_row kernels and the row-in-registers ones as
/// layers.rs's rows4 launches them (and 4616: two float4 per thread).
#[test]
fn modulated_layernorm_matches_its_cpu_twin_on_the_emulator() {
    let Some(exe) = build("norm.cu", "norm") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(47);
    let mut uniform = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
    for (b, l, c) in [(2, 5, 96), (2, 3, 1040), (1, 2, 4616)] {
        let n = b * l;
        let (x, dy, dres, scale) = (uniform(n * c, 2.0), uniform(n * c, 1.0), uniform(n * c, 1.0), uniform(b * c, 0.5));
        let shift = uniform(b * c, 0.5);
        let mut y = vec![0.0f32; n * c];
        let (mut mean_y, mut rstd_y) = (vec![0.0f32; n], vec![0.0f32; n]);
        adaln::modulated_layernorm_forward(&x, &scale, &shift, &mut y, &mut mean_y, &mut rstd_y, l, c, 1e-6);
        let (mut xh, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        infinity_kernels::norm::layernorm_forward(&x, None, None, &mut xh, &mut mean, &mut rstd, c, 1e-6);
        let (mut dx, mut dx0) = (vec![0.0f32; n * c], vec![0.0f32; n * c]);
        adaln::modulated_layernorm_backward(&dy, &x, &scale, &mean, &rstd, Some(&dres), &mut dx, l, c);
        adaln::modulated_layernorm_backward(&dy, &x, &scale, &mean, &rstd, None, &mut dx0, l, c);
        let (lw, lb) = (uniform(c, 1.0), uniform(c, 1.0));
        let (mut ln, mut ln_mean, mut ln_rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        infinity_kernels::norm::layernorm_forward(
            &x,
            Some(&lw),
            Some(&lb),
            &mut ln,
            &mut ln_mean,
            &mut ln_rstd,
            c,
            1e-6,
        );
        let (k, cfg) = infinity_kernels::cuda::layers::rows4(b * l, c, &[]).expect("widths the rows4 kernels take");
        let shapes = [vec!["rows".to_string()], vec!["rows4".into(), k[1..].to_string(), cfg.block_dim.0.to_string()]];
        for shape in shapes {
            let dir = exe.with_file_name(format!("case-{c}-{}", shape[0]));
            std::fs::create_dir_all(&dir).unwrap();
            let inputs = [("dy", &dy), ("x", &x), ("scale", &scale), ("shift", &shift), ("mean", &mean)];
            for (name, v) in inputs.into_iter().chain([("rstd", &rstd), ("dres", &dres), ("lw", &lw), ("lb", &lb)]) {
                write(&dir, name, v);
            }
            let tag = format!("emulated modulated layernorm B={b} L={l} C={c} ({})", shape.join(" "));
            let args: Vec<String> = [b, l, c].map(|v| v.to_string()).into_iter().chain(shape.iter().cloned()).collect();
            run(&exe, &dir, &args, &tag);
            close(&format!("{tag} dx"), &read(&dir, "dx"), &dx, 1e-5);
            close(&format!("{tag} dx, no residual"), &read(&dir, "dx0"), &dx0, 1e-5);
            let emulated = read(&dir, "y");
            close(&format!("{tag}: forward"), &emulated, &y, 1e-5);
            close(&format!("{tag}: forward mean"), &read(&dir, "mean_out"), &mean_y, 1e-5);
            close(&format!("{tag}: forward rstd"), &read(&dir, "rstd_out"), &rstd_y, 1e-5);
            let rounded: Vec<u16> = emulated.iter().map(|&v| bf16_bits(v)).collect();
            assert!(read_u16(&dir, "y16") == rounded, "{tag}: the bf16 forward is not the f32 one rounded");
            let emulated = read(&dir, "ln");
            close(&format!("{tag}: affine layernorm"), &emulated, &ln, 1e-5);
            let rounded: Vec<u16> = emulated.iter().map(|&v| bf16_bits(v)).collect();
            assert!(read_u16(&dir, "ln16") == rounded, "{tag}: the bf16 layernorm is not the f32 one rounded");
        }
    }
}
