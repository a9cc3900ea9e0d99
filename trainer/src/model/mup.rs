//! μP, the maximal update parametrization (Yang et al., "Tensor Programs V", 2022), for width sweeps:
//! with `model.mup_base_width = B` a model of width C is initialised and optimised so that its
//! activations and their updates keep the size they have in the base model (width B), and the
//! learning rate tuned there carries over to wider ones (`infinity model coord-check` shows it).
//!
//! Which tensor is which is read off the shapes, as microsoft/mup's `set_base_shapes` does: a
//! dimension that doubles when the width doubles grows with the width. With `m = C / B`:
//!
//! | role | what | init | Adam learning rate |
//! |---|---|---|---|
//! | hidden | both dimensions grow (every C × C-like Linear) | upstream's (std ∝ 1/√fan_in) | × fan_in(B) / fan_in(C) |
//! | output | `head.weight` (fan_in C, fan_out 2d) | × 1/√m | × 1/m |
//! | vector | one dimension grows (input Linears, embeddings, biases, gains, `ada_gss`) | std at width B where upstream's is ∝ 1/√C | × 1 |
//! | fixed | nothing grows (`cfg_uncond`, `text_norm`, `head.bias`) | upstream's | × 1 |
//!
//! The output row is microsoft/mup's `MuReadout` (weights × √m at init, logits × 1/m) moved into the
//! weights: under Adam a multiplier α on a layer's output trains as init × α and learning rate × α
//! without it, so the forward pass, checkpoints and exports stay upstream's model. Weight decay
//! shrinks every decayed tensor by `1 − lr·wd` at any width (`MuAdamW`'s default).
//!
//! Attention: self-attention L2-normalises q and k and learns its temperature (`scale_mul`), so its
//! logits do not grow with the head dimension. The cross-attention and the text pool scale q·k by
//! 1/√d; μP wants 1/d, which is the same multiplier trick on q: `ca.mat_q` (weight and bias) and the
//! pool's query take init × √(d_B/d) and learning rate × √(d_B/d), d_B being the head dimension of
//! the base model. Its head count (`model.mup_base_heads`) is therefore required with text
//! conditioning: a default would be each run's own guess, and the runs of a sweep could guess different
//! bases. In the base model every factor is 1: the run is the standard-parametrization run, bit for
//! bit.

use super::config::ModelConfig;
use super::init::std_follows_width;
use super::params::{Layout, Params};

/// A tensor's place in μP's table (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Hidden,
    Output,
    Vector,
    Fixed,
}

/// The output layer: its fan_in grows, its fan_out (the 2d bit logits) does not.
const OUTPUT: &str = "head.weight";

/// The base model: `model.mup_base_width` and `model.mup_base_heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MupBase {
    pub width: usize,
    /// Heads of the base model (required with text conditioning); `None`: this model's head
    /// dimension kept (`ModelConfig::with_width`), which only the temperatures' shapes see.
    pub heads: Option<usize>,
}

impl MupBase {
    /// The base model of `cfg`.
    pub fn config(&self, cfg: &ModelConfig) -> ModelConfig {
        match self.heads {
            Some(h) => ModelConfig { embed_dim: self.width, num_heads: h, ..cfg.clone() },
            None => cfg.with_width(self.width),
        }
    }

    /// One line for the run's log and `infinity train --check`: the base model and the learning-rate
    /// multipliers `lay` (the layout of `cfg`, multipliers set) carries.
    pub fn describe(&self, cfg: &ModelConfig, lay: &Layout) -> String {
        let b = self.config(cfg);
        let mults: Vec<String> = crate::optim::lr_mults(lay).iter().map(|k| format!("{k:.4}")).collect();
        let heads = if b.num_heads == 1 { "1 head".to_string() } else { format!("{} heads", b.num_heads) };
        format!(
            "μP: base model of width {} with {heads} (head dimension {}); learning-rate multipliers {}",
            b.embed_dim,
            b.head_dim(),
            mults.join(", ")
        )
    }

    /// Checks the base model of `cfg`; the error names the keys. Its heads matter (and are checked)
    /// only with text conditioning, where they set the cross-attention's base head dimension.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), String> {
        let base = self.config(cfg);
        let keys = format!(
            "model.mup_base_width = {}{}",
            self.width,
            self.heads.map_or(String::new(), |h| format!(", model.mup_base_heads = {h}"))
        );
        if self.width == 0 || base.ffn_hidden() == 0 {
            return Err(format!(
                "{keys}: the base model needs a positive width whose FFN width (round(width · mlp_ratio / 256) · \
                 256, mlp_ratio {}) is not 0",
                cfg.mlp_ratio
            ));
        }
        if !cfg.has_cross_attention() {
            return Ok(());
        }
        if self.heads.is_none() {
            return Err(format!(
                "{keys}: text-conditioned μP needs model.mup_base_heads, the base model's head count (it sets the \
                 cross-attention's base head dimension; {} keeps this model's head dimension {})",
                (self.width / cfg.head_dim()).max(1),
                cfg.head_dim()
            ));
        }
        base.validate().map_err(|e| format!("{keys}: the base model ({} heads) is not valid: {e}", base.num_heads))
    }
}

/// Each tensor's role, in `Layout::new(cfg)`'s order: the dimensions that differ from the layout at
/// twice the width grow with it.
pub fn roles(cfg: &ModelConfig) -> Vec<Role> {
    let wide = ModelConfig { embed_dim: 2 * cfg.embed_dim, ..cfg.clone() };
    let (lay, wide) = (Layout::new(cfg), Layout::new(&wide));
    lay.specs
        .iter()
        .zip(&wide.specs)
        .map(|(s, w)| {
            debug_assert_eq!(s.name, w.name);
            let grows = s.shape.iter().zip(&w.shape).filter(|(a, b)| a != b).count();
            match grows {
                0 => Role::Fixed,
                1 if s.name == OUTPUT => Role::Output,
                1 => Role::Vector,
                _ => Role::Hidden,
            }
        })
        .collect()
}

/// `√(d_B / d)` for the tensors that form the queries of an attention scaled by 1/√d (module doc),
/// 1 for the others.
fn query_factor(name: &str, cfg: &ModelConfig, base: &ModelConfig) -> f64 {
    let ratio = |hd_base: f64, hd: f64| (hd_base / hd).sqrt();
    let ca = name.starts_with("blocks.") && (name.ends_with(".ca.mat_q.weight") || name.ends_with(".ca.mat_q.bias"));
    if ca {
        ratio(base.embed_dim as f64 / base.num_heads as f64, cfg.embed_dim as f64 / cfg.num_heads as f64)
    } else if name == "text_proj_for_sos.ca.mat_q" {
        ratio(base.embed_dim as f64 / base.pool_heads() as f64, cfg.embed_dim as f64 / cfg.pool_heads() as f64)
    } else {
        1.0
    }
}

/// Set every tensor's learning-rate multiplier in `lay` (the layout of `cfg`) for the base model
/// `base` (validated).
pub fn set_lr_mults(lay: &mut Layout, cfg: &ModelConfig, base: &MupBase) {
    let bc = base.config(cfg);
    let base_lay = Layout::new(&bc);
    let m = cfg.embed_dim as f64 / base.width as f64;
    for ((s, b), role) in lay.specs.iter_mut().zip(&base_lay.specs).zip(roles(cfg)) {
        let k = match role {
            // a Linear weight [out, in]: the ratio of the fans in
            Role::Hidden => b.shape[1] as f64 / s.shape[1] as f64,
            Role::Output => 1.0 / m,
            Role::Vector | Role::Fixed => 1.0,
        };
        s.lr_mult = k * query_factor(&s.name, cfg, &bc);
    }
}

/// Rescale upstream's initialisation `p` of `cfg` (layout `lay`) to μP with base model `base`.
pub fn rescale_init(p: &mut Params<f32>, lay: &Layout, cfg: &ModelConfig, base: &MupBase) {
    let bc = base.config(cfg);
    let m = cfg.embed_dim as f64 / base.width as f64;
    for (s, role) in lay.specs.iter().zip(roles(cfg)) {
        let k = match role {
            Role::Output => 1.0 / m.sqrt(),
            Role::Vector if std_follows_width(&s.name) => m.sqrt(),
            _ => 1.0,
        };
        let f = k * query_factor(&s.name, cfg, &bc);
        if f != 1.0 {
            let v = &mut p.data[s.offset..s.offset + s.numel()];
            v.iter_mut().for_each(|x| *x = (*x as f64 * f) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{init_params, InitConfig};
    use crate::model::Conditioning;

    fn tiny(conditioning: Conditioning) -> ModelConfig {
        ModelConfig { conditioning, ..ModelConfig::preset("tiny").unwrap() }
    }

    #[test]
    fn roles_follow_the_shapes() {
        let cfg = tiny(Conditioning::Text);
        let lay = Layout::new(&cfg);
        let role = |name: &str| roles(&cfg)[lay.specs.iter().position(|s| s.name == name).unwrap()];
        for (name, want) in [
            ("blocks.0.sa.mat_qkv.weight", Role::Hidden),
            ("blocks.1.ffn.fc2.weight", Role::Hidden),
            ("shared_ada_lin.1.weight", Role::Hidden),
            ("head.weight", Role::Output),
            ("word_embed.weight", Role::Vector),
            ("text_proj_for_ca.0.weight", Role::Vector),
            ("blocks.0.ada_gss", Role::Vector),
            ("blocks.0.ffn.fc1.bias", Role::Vector),
            ("lvl_embed.weight", Role::Vector),
            ("cfg_uncond", Role::Fixed),
            ("head.bias", Role::Fixed),
            ("blocks.0.sa.scale_mul_1H11", Role::Fixed),
        ] {
            assert_eq!(role(name), want, "{name}");
        }
    }

    fn std(p: &Params<f32>, lay: &Layout, name: &str) -> f64 {
        let v = p.get(lay, name);
        (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn learning_rates_and_init_scale_with_the_width() {
        let small = tiny(Conditioning::Class { num_classes: 4 });
        let cfg = small.with_width(4 * small.embed_dim);
        let base = MupBase { width: small.embed_dim, heads: None };
        let mut lay = Layout::new(&cfg);
        set_lr_mults(&mut lay, &cfg, &base);
        let mult = |name: &str| lay.spec(name).unwrap().lr_mult;
        assert_eq!(mult("blocks.0.sa.proj.weight"), 0.25);
        assert_eq!(mult("blocks.0.ffn.fc2.weight"), 0.25, "fan_in 4·C");
        assert_eq!(mult("head.weight"), 0.25);
        assert_eq!(mult("word_embed.weight"), 1.0);
        assert_eq!(mult("class_emb.weight"), 1.0);

        let sp = init_params(&cfg, &lay, &InitConfig::default(), 1);
        let mut mu = sp.clone();
        rescale_init(&mut mu, &lay, &cfg, &base);
        let ratio = |name: &str| std(&mu, &lay, name) / std(&sp, &lay, name);
        assert!((ratio("word_embed.weight") - 2.0).abs() < 1e-6, "input weights at the base width's std");
        assert!((ratio("class_emb.weight") - 2.0).abs() < 1e-6);
        assert!((ratio("head.weight") - 0.5).abs() < 1e-6, "readout × 1/√m");
        assert_eq!(ratio("blocks.1.sa.mat_qkv.weight"), 1.0);
        assert!(mu.get(&lay, "blocks.0.sa.proj.bias").iter().all(|&x| x == 0.0));
    }

    /// The text paths' 1/√d attentions: with the head count fixed, the head dimension grows with the
    /// width and the queries take √(d_B/d); with the head dimension fixed they take nothing.
    #[test]
    fn queries_of_the_unnormalised_attentions_follow_the_head_dimension() {
        let small = tiny(Conditioning::Text);
        let wide = ModelConfig { embed_dim: 4 * small.embed_dim, ..small.clone() }; // 2 heads of 128
        let mut lay = Layout::new(&wide);
        let fixed_heads = MupBase { width: small.embed_dim, heads: Some(small.num_heads) };
        set_lr_mults(&mut lay, &wide, &fixed_heads);
        let mult = |lay: &Layout, name: &str| lay.spec(name).unwrap().lr_mult;
        assert_eq!(mult(&lay, "blocks.0.ca.mat_q.weight"), 0.25 * 0.5, "hidden × √(32/128)");
        assert_eq!(mult(&lay, "blocks.0.ca.mat_q.bias"), 0.5);
        assert_eq!(mult(&lay, "blocks.0.ca.mat_kv.weight"), 0.25);
        assert_eq!(mult(&lay, "text_proj_for_sos.ca.mat_q"), 0.5, "the pool's head dim C / 1 grows 4×");
        let sp = init_params(&wide, &lay, &InitConfig::default(), 1);
        let mut mu = sp.clone();
        rescale_init(&mut mu, &lay, &wide, &fixed_heads);
        let ratio = |name: &str| std(&mu, &lay, name) / std(&sp, &lay, name);
        assert!((ratio("blocks.1.ca.mat_q.weight") - 0.5).abs() < 1e-6);
        assert!((ratio("text_proj_for_sos.ca.mat_q") - 1.0).abs() < 1e-6, "vector √m × query 1/√m");

        let same_head_dim = small.with_width(4 * small.embed_dim); // 8 heads of 32
        let mut lay = Layout::new(&same_head_dim);
        set_lr_mults(&mut lay, &same_head_dim, &MupBase { width: small.embed_dim, heads: Some(small.num_heads) });
        assert_eq!(mult(&lay, "blocks.0.ca.mat_q.weight"), 0.25);
        assert_eq!(mult(&lay, "blocks.0.ca.mat_q.bias"), 1.0);
    }

    #[test]
    fn in_the_base_model_nothing_changes() {
        let cfg = tiny(Conditioning::Text);
        let base = MupBase { width: cfg.embed_dim, heads: Some(cfg.num_heads) };
        let mut lay = Layout::new(&cfg);
        set_lr_mults(&mut lay, &cfg, &base);
        assert!(lay.specs.iter().all(|s| s.lr_mult == 1.0));
        let sp = init_params(&cfg, &lay, &InitConfig::default(), 2);
        let mut mu = sp.clone();
        rescale_init(&mut mu, &lay, &cfg, &base);
        assert_eq!(mu.data, sp.data);
        let check = |width, heads| MupBase { width, heads }.validate(&cfg);
        assert!(check(0, Some(2)).is_err());
        assert!(check(32, Some(1)).unwrap_err().contains("FFN"), "the FFN rounds to 0 at width 32");
        assert!(check(48, Some(1)).is_ok());
        assert!(check(64, Some(3)).unwrap_err().contains("model.mup_base_heads = 3"));
        assert!(check(64, None).unwrap_err().contains("needs model.mup_base_heads"), "text: the heads are required");
        let class = tiny(Conditioning::Class { num_classes: 4 });
        assert!(MupBase { width: 50, heads: None }.validate(&class).is_ok(), "class: the heads are not used");
    }
}
