//! Upstream initialisation (infinity-reference.md §1.8): `init_weights` then `special_init`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::ModelConfig;
use super::params::{Layout, Params};

/// The initialisation's factors (upstream args `tini`, `aln`, `alng`, `hd0`, `diva`): a config's
/// `[model.init]`, each key defaulting to train.sh's value.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    /// Std of every Linear and Embedding (`tini`); `None` = `√(1/(3C))` (train.sh `--tini=-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tini: Option<f64>,
    /// Scale of `head_nm.ada_lin` weights and of the AdaLN scale/shift part of `ada_gss`.
    pub aln: f64,
    /// Scale of the gamma part of `ada_gss` (train.sh `--alng=5e-06`).
    pub alng: f64,
    /// Scale of `head.weight`.
    pub hd0: f64,
    /// Divide `sa.proj`, `ca.proj`, `ffn.fc2` weights by `√(2·depth)`.
    pub diva: bool,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig { tini: None, aln: 1e-3, alng: 5e-6, hd0: 0.02, diva: true }
    }
}

impl InitConfig {
    /// Whether every factor is train.sh's (a config leaves `[model.init]` out).
    pub fn is_default(&self) -> bool {
        *self == InitConfig::default()
    }

    /// Why `[model.init]` cannot be used, if it cannot: a scale must be a finite number ≥ 0 (0 zeroes
    /// its tensors, as upstream's `hd0 = 0`), `tini` a positive std.
    pub fn check(&self) -> Result<(), String> {
        if let Some(t) = self.tini.filter(|t| !(*t > 0.0 && t.is_finite())) {
            return Err(format!("model.init.tini must be a positive std (leave it out for √(1/(3C))), found {t}"));
        }
        for (key, v) in [("aln", self.aln), ("alng", self.alng), ("hd0", self.hd0)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("model.init.{key} must be a finite number ≥ 0, found {v}"));
            }
        }
        Ok(())
    }
}

/// A normal of `std` truncated to [-2, 2] in absolute terms, as `nn.init.trunc_normal_(std=…)` (whose
/// bounds do not scale with std). Drawn by rejection: from the normal while the bounds span ±1 std or
/// more (at least 68 % of draws kept), else uniformly in the bounds, kept with the normal's density
/// relative to its peak (at least 61 %: a std of 1e30 would keep none of the normal's draws).
fn trunc_normal(rng: &mut ChaCha8Rng, std: f64) -> f32 {
    const BOUND: f64 = 2.0;
    loop {
        let z = match std <= BOUND {
            true => standard_normal(rng) * std,
            false => {
                let x = rng.random_range(-BOUND..=BOUND);
                if rng.random::<f64>() >= (-0.5 * (x / std).powi(2)).exp() {
                    continue;
                }
                x
            }
        };
        if (-BOUND..=BOUND).contains(&z) {
            return z as f32;
        }
    }
}

/// A standard normal draw (Box–Muller), as `torch.randn`'s values: not truncated.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random_range(f64::MIN_POSITIVE..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// How upstream's `init_weights` fills a tensor, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// Linear biases and the qkv/kv extra biases.
    Zero,
    /// `text_norm` and `ca_norm` weights.
    One,
    /// Truncated normal, std 1.2 / √Ct5.
    CfgUncond,
    /// Normal (`torch.randn`, not truncated), std 1 / √C (then `special_init`'s factors).
    AdaGss,
    /// ln 4, the attention temperatures.
    ScaleMul,
    /// Truncated normal, std √(1/(3C)) (the attention pool's query).
    PoolQuery,
    /// Truncated normal, std `tini`: every Linear weight, Embedding, pos_start and lvl_embed.
    Tini,
}

fn fill_of(name: &str) -> Fill {
    if name.ends_with(".bias") || name.ends_with("q_bias") || name.ends_with("v_bias") {
        Fill::Zero
    } else if name == "text_norm.weight" || name.ends_with("ca_norm.weight") {
        Fill::One
    } else if name == "cfg_uncond" {
        Fill::CfgUncond
    } else if name.ends_with("ada_gss") {
        Fill::AdaGss
    } else if name.ends_with("scale_mul_1H11") {
        Fill::ScaleMul
    } else if name == "text_proj_for_sos.ca.mat_q" {
        Fill::PoolQuery
    } else {
        Fill::Tini
    }
}

/// Whether upstream draws `name` with a std that shrinks as `1/√C` with the width (`tini`'s default
/// and the other `1/√C` draws): μP keeps those of vector-like tensors at the base width's.
pub fn std_follows_width(name: &str) -> bool {
    matches!(fill_of(name), Fill::AdaGss | Fill::PoolQuery | Fill::Tini)
}

pub fn init_params(cfg: &ModelConfig, lay: &Layout, init: &InitConfig, seed: u64) -> Params<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = cfg.embed_dim as f64;
    let tini = init.tini.unwrap_or((1.0 / (3.0 * c)).sqrt());
    let mut p = Params::zeros(lay);
    for spec in &lay.specs {
        let v = &mut p.data[spec.offset..spec.offset + spec.numel()];
        let mut fill = |f: &mut dyn FnMut() -> f32| v.iter_mut().for_each(|x| *x = f());
        match fill_of(&spec.name) {
            Fill::Zero => {}
            Fill::One => fill(&mut || 1.0),
            Fill::CfgUncond => {
                let s = (cfg.text_channels as f64).sqrt();
                fill(&mut || (trunc_normal(&mut rng, 1.2) as f64 / s) as f32);
            }
            Fill::AdaGss => fill(&mut || (standard_normal(&mut rng) / c.sqrt()) as f32),
            Fill::ScaleMul => fill(&mut || 4f32.ln()),
            Fill::PoolQuery => fill(&mut || trunc_normal(&mut rng, (1.0 / c / 3.0).sqrt())),
            Fill::Tini => fill(&mut || trunc_normal(&mut rng, tini)),
        }
    }
    // special_init
    let scale = |p: &mut Params<f32>, name: &str, f: f64| {
        p.get_mut(lay, name).iter_mut().for_each(|x| *x = (*x as f64 * f) as f32)
    };
    scale(&mut p, "head_nm.ada_lin.1.weight", init.aln);
    scale(&mut p, "head.weight", init.hd0);
    let cc = cfg.embed_dim;
    for n in 0..cfg.depth {
        if init.diva {
            let f = 1.0 / (2.0 * cfg.depth as f64).sqrt();
            scale(&mut p, &format!("blocks.{n}.sa.proj.weight"), f);
            scale(&mut p, &format!("blocks.{n}.ffn.fc2.weight"), f);
            if cfg.has_cross_attention() {
                scale(&mut p, &format!("blocks.{n}.ca.proj.weight"), f);
            }
        }
        let g = p.get_mut(lay, &format!("blocks.{n}.ada_gss"));
        for (i, x) in g.iter_mut().enumerate() {
            *x = (*x as f64 * if i < 2 * cc { init.alng } else { init.aln }) as f32;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws of a wide truncated normal come at once, inside the bounds, with the truncated density's
    /// variance (Simpson's rule over [-2, 2]); a narrow one's stay the normal's.
    #[test]
    fn truncated_normals_of_any_std_are_drawn_quickly_and_rightly() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for std in [0.02, 1.0, 3.0, 10.0, 1e30] {
            let draws: Vec<f64> = (0..40_000).map(|_| trunc_normal(&mut rng, std) as f64).collect();
            assert!(draws.iter().all(|x| (-2.0..=2.0).contains(x)), "std {std}");
            let var = draws.iter().map(|x| x * x).sum::<f64>() / draws.len() as f64;
            let density = |x: f64| (-0.5 * (x / std).powi(2)).exp();
            let n = 2000;
            let h = 4.0 / n as f64;
            let simpson = |f: &dyn Fn(f64) -> f64| {
                (0..=n)
                    .map(|i| f(-2.0 + i as f64 * h) * [1.0, 4.0, 2.0][if i == 0 || i == n { 0 } else { 2 - i % 2 }])
                    .sum::<f64>()
                    * h
                    / 3.0
            };
            let want = simpson(&|x| x * x * density(x)) / simpson(&density);
            assert!((var / want - 1.0).abs() < 0.03, "std {std}: variance {var}, want {want}");
        }
    }

    #[test]
    fn special_init_values() {
        let cfg = ModelConfig::preset("small").unwrap();
        let lay = Layout::new(&cfg);
        let p = init_params(&cfg, &lay, &InitConfig::default(), 3);
        let std = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let tini = (1.0 / (3.0 * 128.0f64)).sqrt();
        let fc1 = std(p.get(&lay, "blocks.0.ffn.fc1.weight"));
        assert!((fc1 / tini - 1.0).abs() < 0.05, "fc1 std {fc1}, want {tini}");
        let fc2 = std(p.get(&lay, "blocks.0.ffn.fc2.weight"));
        assert!((fc2 / (tini / 8f64.sqrt()) - 1.0).abs() < 0.05, "fc2 std {fc2}: divided by √(2·depth)");
        let head = std(p.get(&lay, "head.weight"));
        assert!((head / (tini * 0.02) - 1.0).abs() < 0.1, "head std {head}");
        assert!(p.get(&lay, "head.bias").iter().all(|&x| x == 0.0));
        assert!(p.get(&lay, "blocks.1.sa.scale_mul_1H11").iter().all(|&x| (x - 4f32.ln()).abs() < 1e-7));
        let gss = p.get(&lay, "blocks.0.ada_gss");
        let (gamma, rest) = gss.split_at(2 * 128);
        assert!(
            std(gamma) < 1e-5 * 2.0 / 128f64.sqrt() && std(rest) < 2e-3 / 128f64.sqrt(),
            "ada_gss gammas ×alng, the rest ×aln"
        );
        // randn, not truncated at 2σ: about 4.6 % of the 4 × 6 × 128 values lie beyond
        let aln = InitConfig::default().aln / 128f64.sqrt();
        let all: Vec<f32> =
            (0..4).flat_map(|b| p.get(&lay, &format!("blocks.{b}.ada_gss"))[2 * 128..].to_vec()).collect();
        let beyond = all.iter().filter(|&&x| (x as f64).abs() > 2.0 * aln).count() as f64 / all.len() as f64;
        assert!((0.02..0.08).contains(&beyond), "ada_gss beyond 2σ: {beyond}");
        assert!(p.get(&lay, "text_norm.weight").iter().all(|&x| x == 1.0));
        let a = init_params(&cfg, &lay, &InitConfig::default(), 3);
        assert_eq!(a.data, p.data, "same seed, same weights");
    }

    #[test]
    fn other_factors_scale_what_upstream_scales() {
        let cfg = ModelConfig::preset("small").unwrap();
        let lay = Layout::new(&cfg);
        let std = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        // VAR's recipe: alng 1e-3; a tini of its own; no division by √(2·depth); a zero head
        let var = InitConfig { tini: Some(0.01), aln: 0.5, alng: 1e-3, hd0: 0.0, diva: false };
        let p = init_params(&cfg, &lay, &var, 3);
        let fc1 = std(p.get(&lay, "blocks.0.ffn.fc1.weight"));
        let fc2 = std(p.get(&lay, "blocks.0.ffn.fc2.weight"));
        assert!((fc1 / 0.01 - 1.0).abs() < 0.05 && (fc2 / 0.01 - 1.0).abs() < 0.05, "fc1 {fc1}, fc2 {fc2}");
        assert!(p.get(&lay, "head.weight").iter().all(|&x| x == 0.0));
        let (gamma, rest) = p.get(&lay, "blocks.0.ada_gss").split_at(2 * 128);
        let (g, r) = (std(gamma) * 128f64.sqrt(), std(rest) * 128f64.sqrt());
        assert!((g / 1e-3 - 1.0).abs() < 0.15 && (r / 0.5 - 1.0).abs() < 0.15, "gammas {g}, the rest {r}");
        // the config's `[model.init]`: keys left out keep train.sh's values; bad values are named
        let read: InitConfig = toml::from_str("alng = 1e-3\ndiva = false").unwrap();
        assert_eq!(read, InitConfig { alng: 1e-3, diva: false, ..InitConfig::default() });
        assert!(toml::from_str::<InitConfig>("alg = 1").unwrap_err().to_string().contains("unknown field `alg`"));
        let bad = InitConfig { tini: Some(0.0), ..InitConfig::default() }.check().unwrap_err();
        assert!(bad.contains("model.init.tini must be a positive std"), "{bad}");
        let bad = InitConfig { hd0: -1.0, ..InitConfig::default() }.check().unwrap_err();
        assert!(bad.contains("model.init.hd0 must be a finite number ≥ 0, found -1"), "{bad}");
    }
}
