//! Model shape: upstream's constructor arguments (names kept) and the size presets.

use serde::{Deserialize, Serialize};

/// What the start token and AdaLN are conditioned on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Conditioning {
    /// Upstream Infinity: text features → `text_norm` → attention pool (start token, AdaLN condition)
    /// and `text_proj_for_ca` → cross-attention in every block.
    Text,
    /// VAR-style: `class_emb` with a null class (index `num_classes`) for CFG; blocks have no
    /// cross-attention.
    Class { num_classes: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub depth: usize,
    /// `C` (= the condition width `D`).
    pub embed_dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Bits per token: the tokenizer's latent channels `d_vae`, or `4·d_vae` with spatial patchify.
    pub d: usize,
    /// Text feature width `Ct5` (text conditioning only).
    pub text_channels: usize,
    /// Rows of `cfg_uncond` (upstream `text_maxlen`).
    pub text_maxlen: usize,
    pub norm_eps: f64,
    /// Probability of replacing a sample's condition by the unconditional one in training.
    pub cond_drop_rate: f64,
    /// Stochastic depth of the gated branches at the last block (upstream `drop_path_rate`; the rate
    /// grows linearly from 0 at the first block). Training only.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// Upstream `apply_spatial_patchify` (its 8B model): a token is the 2×2 `pixel_unshuffle` of the
    /// tokenizer's latent, whose schedule has twice the transformer's sides (kernels/src/patchify.rs).
    #[serde(default)]
    pub apply_spatial_patchify: bool,
    pub conditioning: Conditioning,
    /// Key layout of checkpoints: 1 → `blocks.{n}`, k > 1 → `block_chunks.{c}.module.{j}`.
    pub block_chunks: usize,
}

/// Number of `lvl_embed` rows (upstream `Embedding(15, C)`).
pub const LVL_EMBED_ROWS: usize = infinity_data::schedule::MAX_MODEL_SCALES;

/// Names [`ModelConfig::preset`] knows.
pub const PRESETS: [&str; 11] =
    ["tiny", "small", "layer12", "layer16", "layer24", "layer32", "layer40", "layer48", "2b", "8b", "20b"];

/// Bounds far beyond any model of the family (the largest upstream preset: depth 48, width 4096, FFN
/// ratio 4, 1000 classes, text 2048 wide and 512 tokens), which keep the sizes' arithmetic in range.
pub const MAX_DEPTH: usize = 4096;
pub const MAX_WIDTH: usize = 1 << 17;
pub const MAX_MLP_RATIO: f64 = 64.0;
pub const MAX_CLASSES: usize = 1 << 24;
pub const MAX_TOKENS: usize = 1 << 16;
/// Bits per token, as a dataset's manifest bounds them (`d`).
pub const MAX_D: usize = 1024;

impl ModelConfig {
    /// Upstream presets (infinity-reference.md §1.9) plus tiny ones for CPU runs and tests ([`PRESETS`]).
    pub fn preset(name: &str) -> Option<ModelConfig> {
        let (depth, c, h) = match name {
            "tiny" => (2, 64, 2),
            "small" => (4, 128, 4),
            "layer12" => (12, 768, 8),
            "layer16" => (16, 1152, 12),
            "layer24" => (24, 1536, 16),
            "layer32" => (32, 2080, 20),
            "layer40" => (40, 2688, 24),
            "layer48" => (48, 3360, 28),
            "2b" => (32, 2048, 16),
            "8b" => (40, 3584, 28),
            "20b" => (58, 4608, 36),
            _ => return None,
        };
        let (d, chunks) = match name {
            "8b" => (56, 8),
            "2b" => (32, 8),
            // (unreleased, so no loader fixes its chunks: 58 blocks split into 2 or 29)
            "20b" => (32, 2),
            "tiny" | "small" => (16, 1),
            _ => (32, 4),
        };
        Some(ModelConfig {
            depth,
            embed_dim: c,
            num_heads: h,
            mlp_ratio: 4.0,
            d,
            text_channels: if matches!(name, "tiny" | "small") { 128 } else { 2048 },
            text_maxlen: if matches!(name, "tiny" | "small") { 16 } else { 512 },
            norm_eps: 1e-6,
            cond_drop_rate: 0.1,
            // upstream's presets (infinity.py); none for the tiny CPU ones
            drop_path_rate: match name {
                "tiny" | "small" => 0.0,
                "20b" => 0.25,
                _ => 0.1,
            },
            // upstream's 8B: d_vae = 14 tokens unshuffled into 56 bits
            apply_spatial_patchify: name == "8b",
            conditioning: Conditioning::Text,
            block_chunks: chunks,
        })
    }

    /// [`ModelConfig::preset`], or an error that lists the names it knows.
    pub fn named_preset(name: &str) -> anyhow::Result<ModelConfig> {
        Self::preset(name).ok_or_else(|| anyhow::anyhow!("unknown preset `{name}` (one of {})", PRESETS.join(", ")))
    }

    /// This model at another width, the head dimension kept where the width allows (heads = width /
    /// head dim, at least 1): the width-reduced variants of `infinity model`, and width sweeps.
    pub fn with_width(&self, width: usize) -> ModelConfig {
        let hd = self.head_dim();
        ModelConfig { embed_dim: width, num_heads: (width / hd).max(1), ..self.clone() }
    }

    /// This model at another depth, its blocks' key layout (`block_chunks`) the preset's where that
    /// divides the depth, else the nearest below that does.
    pub fn with_depth(&self, depth: usize) -> ModelConfig {
        let block_chunks = (1..=self.block_chunks).rev().find(|&k| depth.is_multiple_of(k)).unwrap_or(1);
        ModelConfig { depth, block_chunks, ..self.clone() }
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// FFN hidden width: `round(C·mlp_ratio/256)·256` (upstream basic.py:472; Python rounds half to even).
    pub fn ffn_hidden(&self) -> usize {
        ((self.embed_dim as f64 * self.mlp_ratio / 256.0).round_ties_even() as usize) * 256
    }

    /// Heads of the text attention pool: `Ct5 // 128` (head dim 128 for `C ≤ 4096`, else 64). Upstream
    /// fails for `Ct5 < 128`; we use one head there so tiny text widths work.
    pub fn pool_heads(&self) -> usize {
        (self.text_channels / self.pool_head_channels()).max(1)
    }

    /// The text channels per head of upstream's text attention pool: 128, or 64 past `C = 4096`.
    pub fn pool_head_channels(&self) -> usize {
        if self.embed_dim > 4096 {
            64
        } else {
            128
        }
    }

    /// Channels of the tokenizer's latent (the dataset's `d`): `d`, or `d/4` with spatial patchify.
    pub fn d_vae(&self) -> usize {
        if self.apply_spatial_patchify {
            self.d / 4
        } else {
            self.d
        }
    }

    /// The token bits of a tokenizer of `d_vae` channels (the inverse of [`ModelConfig::d_vae`]).
    pub fn token_bits(&self, d_vae: usize) -> usize {
        if self.apply_spatial_patchify {
            4 * d_vae
        } else {
            d_vae
        }
    }

    /// The transformer's scales of a tokenizer schedule (a dataset's): halved with spatial patchify.
    /// Panics on an odd side there (a dataset's schedule for spatial patchify has none: its
    /// `validate`, and `train::check_schedules_fit` that the model and the dataset agree).
    pub fn token_scales(&self, tokenizer: &[(usize, usize)]) -> Vec<(usize, usize)> {
        match self.apply_spatial_patchify {
            false => tokenizer.to_vec(),
            true => infinity_kernels::patchify::transformer_scales(tokenizer)
                .unwrap_or_else(|odd| panic!("spatial patchify: the tokenizer's scale {odd:?} has an odd side")),
        }
    }

    pub fn has_cross_attention(&self) -> bool {
        self.conditioning == Conditioning::Text
    }

    /// Checks that make every later shape computation valid; errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.embed_dim;
        if self.depth == 0 || c == 0 || self.num_heads == 0 || self.d == 0 {
            return Err("depth, embed_dim, num_heads and d must be positive".into());
        }
        // (far beyond any model of the family, and within what the sizes' arithmetic holds)
        let classes = match self.conditioning {
            Conditioning::Class { num_classes } => num_classes,
            Conditioning::Text => 0,
        };
        for (what, v, most) in [
            ("depth", self.depth, MAX_DEPTH),
            ("d", self.d, MAX_D),
            ("embed_dim", c, MAX_WIDTH),
            ("num_classes", classes, MAX_CLASSES),
            ("text_channels", self.text_channels, MAX_WIDTH),
            ("text_maxlen", self.text_maxlen, MAX_TOKENS),
        ] {
            if v > most {
                return Err(format!("{what} {v}: at most {most}"));
            }
        }
        if !c.is_multiple_of(self.num_heads) {
            return Err(format!(
                "embed_dim {c} does not split into num_heads {} heads: the width must be a multiple of the heads \
                 (and each head's width, embed_dim / num_heads, a multiple of 4 for 2-D RoPE)",
                self.num_heads
            ));
        }
        if !self.head_dim().is_multiple_of(4) {
            return Err(format!(
                "embed_dim {c} / num_heads {} = a head dim of {}, which must be divisible by 4 (2-D RoPE)",
                self.num_heads,
                self.head_dim()
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= MAX_MLP_RATIO) {
            return Err(format!(
                "mlp_ratio {}: expected a positive number up to {MAX_MLP_RATIO} (upstream's is 4)",
                self.mlp_ratio
            ));
        }
        if self.ffn_hidden() == 0 {
            // round(x/256) with halves to even is 0 up to x = 128; the least width above 128 / mlp_ratio that
            // also gives a head dim divisible by 4
            let step = 4 * self.num_heads;
            let least = ((128.0 / self.mlp_ratio / step as f64).floor() + 1.0) * step as f64;
            return Err(format!(
                "embed_dim {c} × mlp_ratio {} = {} leaves the FFN no width: upstream rounds it to a multiple of \
                 256 (halves to even), so embed_dim·mlp_ratio must exceed 128: embed_dim ≥ {} at this mlp_ratio \
                 and {}",
                self.mlp_ratio,
                c as f64 * self.mlp_ratio,
                least,
                infinity_launcher::plural(self.num_heads, "head")
            ));
        }
        if self.has_cross_attention() {
            if self.text_channels == 0 || self.text_maxlen == 0 {
                return Err("text conditioning needs text_channels > 0 and text_maxlen > 0".into());
            }
            if !c.is_multiple_of(self.pool_heads()) {
                return Err(format!("embed_dim {c} must divide into {} attention-pool heads", self.pool_heads()));
            }
        }
        if self.apply_spatial_patchify && !self.d.is_multiple_of(4) {
            return Err(format!("apply_spatial_patchify: d = {} must be 4·d_vae (a multiple of 4)", self.d));
        }
        if self.block_chunks == 0 || !self.depth.is_multiple_of(self.block_chunks) {
            return Err(format!("block_chunks {} must divide depth {}", self.block_chunks, self.depth));
        }
        if !(0.0..1.0).contains(&self.cond_drop_rate) {
            return Err(format!("cond_drop_rate {} must be in [0, 1)", self.cond_drop_rate));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(format!("drop_path_rate {} must be in [0, 1)", self.drop_path_rate));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps <= 1.0) {
            return Err(format!("norm_eps {} must be in (0, 1] (upstream's is 1e-6)", self.norm_eps));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bits per token are bounded as a dataset's manifest bounds them (1024).
    #[test]
    fn bits_per_token_are_bounded_as_a_dataset_bounds_them() {
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.d = 1024;
        assert!(c.validate().is_ok());
        // (a golden folder's config.json of d = 1e12 aborted allocating the model)
        c.d = 1_000_000_000_000;
        assert_eq!(c.validate().unwrap_err(), "d 1000000000000: at most 1024");
    }

    /// LayerNorm's epsilon is a small positive number (upstream's 1e-6): 0, a negative, NaN or one above 1
    /// (a hand-edited model.json) is refused, naming it.
    #[test]
    fn norm_eps_is_positive_and_small() {
        let mut c = ModelConfig::preset("tiny").unwrap();
        for (eps, ok) in [(1e-6, true), (1.0, true), (0.0, false), (-1e-6, false), (f64::NAN, false), (2.0, false)] {
            c.norm_eps = eps;
            let v = c.validate();
            assert_eq!(v.is_ok(), ok, "{eps}: {v:?}");
            assert!(ok || v.unwrap_err().starts_with(&format!("norm_eps {eps} must be in (0, 1]")));
        }
    }

    #[test]
    fn presets_match_upstream_ffn_widths() {
        for (name, hidden) in [
            ("layer12", 3072),
            ("layer16", 4608),
            ("layer32", 8192),
            ("layer40", 10752),
            ("layer48", 13312),
            ("2b", 8192),
            ("8b", 14336),
            ("20b", 18432),
        ] {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.ffn_hidden(), hidden, "{name}");
        }
        assert_eq!(ModelConfig::preset("2b").unwrap().pool_heads(), 16);
        // the least width that keeps an FFN: 128 rounds (to even) to none, 129 to one multiple of 256
        let tiny = ModelConfig::preset("tiny").unwrap();
        let at = |c: usize| ModelConfig { embed_dim: c, num_heads: 2, ..tiny.clone() };
        let e = at(32).validate().unwrap_err();
        assert!(e.contains("embed_dim 32 × mlp_ratio 4 = 128") && e.contains("embed_dim ≥ 40 at this"), "{e}");
        assert_eq!((at(40).ffn_hidden(), at(40).validate()), (256, Ok(())));
        for bad in [0.0, -1.0, f64::NAN, 1e30] {
            let e = ModelConfig { mlp_ratio: bad, ..at(64) }.validate().unwrap_err();
            assert!(e.contains("expected a positive number up to 64"), "{e}");
        }
        // a tiny ratio: the least width is worked out, not searched for
        let e = ModelConfig { mlp_ratio: 1e-10, ..at(64) }.validate().unwrap_err();
        assert!(e.contains("embed_dim ≥ 1280000000008 at this"), "{e}");
        // sizes far beyond the family's are refused before any arithmetic on them
        assert_eq!(ModelConfig { depth: 5000, ..at(64) }.validate().unwrap_err(), "depth 5000: at most 4096");
        let wide = ModelConfig { embed_dim: 1 << 32, num_heads: 1 << 20, ..at(64) };
        assert!(wide.validate().unwrap_err().starts_with("embed_dim 4294967296: at most 131072"));
        let classes = ModelConfig { conditioning: Conditioning::Class { num_classes: 1 << 40 }, ..at(64) };
        assert!(classes.validate().unwrap_err().starts_with("num_classes 1099511627776: at most"));
    }

    #[test]
    fn an_unknown_preset_lists_the_known_ones() {
        let e = ModelConfig::named_preset("foo").unwrap_err().to_string();
        assert_eq!(e, format!("unknown preset `foo` (one of {})", PRESETS.join(", ")));
        assert!(e.contains("tiny, small, layer12") && e.ends_with("2b, 8b, 20b)"), "{e}");
    }
}
