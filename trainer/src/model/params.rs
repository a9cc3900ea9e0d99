//! The parameter table: every tensor of the model under its upstream state_dict name, in one flat
//! buffer (gradients and optimiser state use the same layout). No autograd tape: forward and backward
//! index this table by name once, up front.

use std::collections::HashMap;

use infinity_kernels::Real;

use super::config::{Conditioning, ModelConfig, LVL_EMBED_ROWS};

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Upstream name with `blocks.{n}` keys (see [`chunked_name`] for the other layout).
    pub name: String,
    pub shape: Vec<usize>,
    /// Start in the flat buffer.
    pub offset: usize,
    /// Whether AdamW applies weight decay (upstream's no-decay groups: 1-D tensors and named ones).
    pub decay: bool,
    /// The tensor's learning rate as a multiple of the schedule's: 1, except under μP (`model::mup`:
    /// hidden and output weights, and the queries of the text attentions).
    pub lr_mult: f64,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Names upstream excludes from weight decay (train.py, lr_control.py), matched as substrings.
const NO_DECAY: [&str; 15] = [
    "cls_token",
    "start_token",
    "task_token",
    "cfg_uncond",
    "pos_embed",
    "pos_1LC",
    "pos_start",
    "start_pos",
    "lvl_embed",
    "gamma",
    "beta",
    "ada_gss",
    "moe_bias",
    "scale_mul",
    "text_proj_for_sos.ca.mat_q",
];

/// Layout of every tensor for a config.
#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    index: HashMap<String, usize>,
    pub numel: usize,
}

impl Layout {
    pub fn new(cfg: &ModelConfig) -> Layout {
        let (c, ct, d) = (cfg.embed_dim, cfg.text_channels, cfg.d);
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, shape: &[usize]| t.push((name, shape.to_vec()));
        match &cfg.conditioning {
            Conditioning::Text => {
                let hp = cfg.pool_heads();
                add("cfg_uncond".into(), &[cfg.text_maxlen, ct]);
                add("pos_start".into(), &[1, 1, c]);
                add("text_norm.weight".into(), &[ct]);
                add("text_proj_for_sos.ca.mat_q".into(), &[1, hp, c / hp]);
                add("text_proj_for_sos.ca.v_bias".into(), &[c]);
                add("text_proj_for_sos.ca.mat_kv.weight".into(), &[2 * c, ct]);
                add("text_proj_for_sos.ca.proj.weight".into(), &[c, c]);
                add("text_proj_for_sos.ca.proj.bias".into(), &[c]);
                add("text_proj_for_ca.0.weight".into(), &[c, ct]);
                add("text_proj_for_ca.0.bias".into(), &[c]);
                add("text_proj_for_ca.2.weight".into(), &[c, c]);
                add("text_proj_for_ca.2.bias".into(), &[c]);
            }
            Conditioning::Class { num_classes } => {
                add("class_emb.weight".into(), &[num_classes + 1, c]);
                add("pos_start".into(), &[1, 1, c]);
            }
        }
        add("lvl_embed.weight".into(), &[LVL_EMBED_ROWS, c]);
        add("word_embed.weight".into(), &[c, d]);
        add("word_embed.bias".into(), &[c]);
        add("shared_ada_lin.1.weight".into(), &[6 * c, c]);
        add("shared_ada_lin.1.bias".into(), &[6 * c]);
        let hf = cfg.ffn_hidden();
        for n in 0..cfg.depth {
            let p = |s: &str| format!("blocks.{n}.{s}");
            add(p("ada_gss"), &[1, 1, 6, c]);
            add(p("sa.mat_qkv.weight"), &[3 * c, c]);
            add(p("sa.q_bias"), &[c]);
            add(p("sa.v_bias"), &[c]);
            add(p("sa.scale_mul_1H11"), &[1, cfg.num_heads, 1, 1]);
            add(p("sa.proj.weight"), &[c, c]);
            add(p("sa.proj.bias"), &[c]);
            if cfg.has_cross_attention() {
                add(p("ca.mat_q.weight"), &[c, c]);
                add(p("ca.mat_q.bias"), &[c]);
                add(p("ca.mat_kv.weight"), &[2 * c, c]);
                add(p("ca.v_bias"), &[c]);
                add(p("ca.proj.weight"), &[c, c]);
                add(p("ca.proj.bias"), &[c]);
                add(p("ca_norm.weight"), &[c]);
                add(p("ca_norm.bias"), &[c]);
            }
            add(p("ffn.fc1.weight"), &[hf, c]);
            add(p("ffn.fc1.bias"), &[hf]);
            add(p("ffn.fc2.weight"), &[c, hf]);
            add(p("ffn.fc2.bias"), &[c]);
        }
        add("head_nm.ada_lin.1.weight".into(), &[2 * c, c]);
        add("head_nm.ada_lin.1.bias".into(), &[2 * c]);
        add("head.weight".into(), &[2 * d, c]);
        add("head.bias".into(), &[2 * d]);

        let mut specs = Vec::with_capacity(t.len());
        let mut offset = 0;
        for (name, shape) in t {
            let decay = shape.len() > 1 && !name.ends_with(".bias") && !NO_DECAY.iter().any(|k| name.contains(k));
            let n: usize = shape.iter().product();
            specs.push(ParamSpec { name, shape, offset, decay, lr_mult: 1.0 });
            offset += n;
        }
        let index = specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        Layout { specs, index, numel: offset }
    }

    /// Parameters less the embeddings (Kaplan et al.'s N): the lookup tables and positions
    /// (`class_emb`, `cfg_uncond`, `lvl_embed`, `pos_start`) and the bits' input embedding
    /// (`word_embed`).
    pub fn non_embedding_numel(&self) -> usize {
        const EMBEDDINGS: [&str; 5] = ["class_emb.", "cfg_uncond", "lvl_embed.", "pos_start", "word_embed."];
        let embedding = |s: &&ParamSpec| EMBEDDINGS.iter().any(|e| s.name.starts_with(e));
        self.numel - self.specs.iter().filter(embedding).map(ParamSpec::numel).sum::<usize>()
    }

    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.index.get(name).map(|&i| &self.specs[i])
    }

    /// Range of `name` in the flat buffer. Panics on an unknown name: names are fixed by the layout, so
    /// that is a bug in the model code, not bad input.
    pub fn range(&self, name: &str) -> std::ops::Range<usize> {
        let s = self.spec(name).unwrap_or_else(|| panic!("model has no parameter `{name}`"));
        s.offset..s.offset + s.numel()
    }
}

/// `blocks.{n}.…` → `block_chunks.{c}.module.{j}.…` for `chunks > 1` (upstream `MultipleLayers`).
pub fn chunked_name(name: &str, depth: usize, chunks: usize) -> String {
    if chunks <= 1 {
        return name.to_string();
    }
    match name.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
        Some((n, rest)) => {
            let n: usize = n.parse().expect("block index");
            let per = depth / chunks;
            format!("block_chunks.{}.module.{}.{rest}", n / per, n % per)
        }
        None => name.to_string(),
    }
}

/// Inverse of [`chunked_name`]: accepts either layout, returns the `blocks.{n}` name.
pub fn canonical_name(name: &str, depth: usize, chunks: usize) -> Option<String> {
    let Some(rest) = name.strip_prefix("block_chunks.") else { return Some(name.to_string()) };
    let (c, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("module.")?;
    let (j, rest) = rest.split_once('.')?;
    let (c, j): (usize, usize) = (c.parse().ok()?, j.parse().ok()?);
    let per = depth / chunks.max(1);
    Some(format!("blocks.{}.{rest}", c * per + j))
}

/// Model parameters (or gradients, or optimiser moments): one flat buffer in [`Layout`] order.
#[derive(Clone, Debug)]
pub struct Params<T> {
    pub data: Vec<T>,
}

impl<T: Real> Params<T> {
    pub fn zeros(layout: &Layout) -> Params<T> {
        Params { data: vec![T::zero(); layout.numel] }
    }

    pub fn get<'a>(&'a self, layout: &Layout, name: &str) -> &'a [T] {
        &self.data[layout.range(name)]
    }

    pub fn get_mut<'a>(&'a mut self, layout: &Layout, name: &str) -> &'a mut [T] {
        let r = layout.range(name);
        &mut self.data[r]
    }

    pub fn cast<U: Real>(&self) -> Params<U> {
        Params { data: self.data.iter().map(|v| U::of(v.f64())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_parameter_counts() {
        // infinity-reference.md §1.9, computed from the upstream code (d = 32, Ct5 = 2048)
        for (name, millions) in [("layer12", 125.2), ("layer16", 361.6), ("layer24", 940.9), ("2b", 2204.6)] {
            let cfg = ModelConfig::preset(name).unwrap();
            let m = Layout::new(&cfg).numel as f64 / 1e6;
            assert!((m - millions).abs() < 0.1, "{name}: {m:.1} M parameters, upstream {millions} M");
        }
        // 20b: "~19.95 B" (§1.9)
        let b = Layout::new(&ModelConfig::preset("20b").unwrap()).numel as f64 / 1e9;
        assert!((b - 19.95).abs() < 0.01, "20b: {b:.3} B parameters");
        // less the embeddings: layer12's text model has cfg_uncond (512 × 2048), lvl_embed (15 × 768),
        // pos_start (768) and word_embed (768 × 32 + 768)
        let l = Layout::new(&ModelConfig::preset("layer12").unwrap());
        let c = 768;
        let embeddings = 512 * 2048 + LVL_EMBED_ROWS * c + c + (c * 32 + c);
        assert_eq!(l.numel - l.non_embedding_numel(), embeddings);
        // a class model: its class table (classes + 1 for the unconditional) in place of cfg_uncond
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.conditioning = crate::model::Conditioning::Class { num_classes: 10 };
        let (l, c, d) = (Layout::new(&cfg), cfg.embed_dim, cfg.d);
        let embeddings = 11 * c + LVL_EMBED_ROWS * c + c + (c * d + c);
        assert_eq!(l.numel - l.non_embedding_numel(), embeddings);
    }

    #[test]
    fn chunked_names_round_trip_and_no_decay_groups() {
        assert_eq!(chunked_name("blocks.13.sa.proj.weight", 32, 8), "block_chunks.3.module.1.sa.proj.weight");
        assert_eq!(
            canonical_name("block_chunks.3.module.1.sa.proj.weight", 32, 8).unwrap(),
            "blocks.13.sa.proj.weight"
        );
        assert_eq!(canonical_name("head.weight", 32, 8).unwrap(), "head.weight");
        let l = Layout::new(&ModelConfig::preset("tiny").unwrap());
        assert!(l.spec("blocks.0.sa.mat_qkv.weight").unwrap().decay);
        for n in [
            "blocks.0.ada_gss",
            "blocks.1.sa.scale_mul_1H11",
            "cfg_uncond",
            "lvl_embed.weight",
            "pos_start",
            "head.bias",
            "text_proj_for_sos.ca.mat_q",
            "text_norm.weight",
        ] {
            assert!(!l.spec(n).unwrap().decay, "{n} must not decay");
        }
    }
}
