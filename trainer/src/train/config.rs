//! The typed training config: TOML file (which may `extends = "base.toml"` another), then
//! `INF__SECTION__KEY` environment variables, then `--set section.key=value` overrides (in that order of
//! precedence, lowest first). Unknown keys are errors naming their path; everything is validated
//! before anything is allocated.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::init::InitConfig;
use crate::model::{Conditioning, ModelConfig};
use crate::optim::{AdamWConfig, Decay, LrSchedule};

mod as_typed;
pub use as_typed::every_key;
mod load;
mod micro_batch_size;
mod peak_tflops;
mod tagged;
mod validate;

pub use load::{alternative, inf_var_key, inf_vars, keys_overlap, same_setting, value_at, vars_taken, ModelPart};
pub use micro_batch_size::MicroBatchSize;
pub use peak_tflops::PeakTflops;
pub use validate::where_it_leads;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    pub model: ModelSection,
    pub data: DataSection,
    pub optim: OptimSection,
    #[serde(default)]
    pub bsc: BscSection,
    #[serde(default)]
    pub loss: LossSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub sample: SampleSection,
    #[serde(default)]
    pub dist: DistSection,
    #[serde(default)]
    pub val: ValSection,
}

/// Held-out validation (see `train/val.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValSection {
    /// A dataset made with the training data's tokenizer; none = no validation.
    pub dir: Option<PathBuf>,
    /// Evaluate every this many steps (and at the end); 0 = only at the end.
    pub every: u64,
    /// Rows evaluated (the first ones of `dir`).
    pub max_rows: usize,
    /// Seed of the fixed self-correction noise.
    pub seed: u64,
    /// The noise's strength, as `bsc.p_max` and `bsc.apply_layers` (unset: the training's). A fixed
    /// value (upstream's evaluation takes 0.2; 0 is teacher forcing) measures runs that train with
    /// other strengths alike, so a self-correction ablation's validation losses compare.
    pub p_max: Option<f64>,
    pub apply_layers: Option<usize>,
    /// More validation datasets, each evaluated beside `dir` as it is and logged under its name
    /// (`[[val.sets]]`: `dir`, and `name`, by default its folder's): a mix's domains, each measured alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<ValSet>,
}

/// One more validation dataset (`[[val.sets]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValSet {
    pub dir: PathBuf,
    /// Its name in `val.jsonl`, TensorBoard (`val/NAME/loss`) and the console; the folder's name if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ValSet {
    /// `name`, or the folder's name (other characters than letters, digits, `.`, `_` and `-` made `-`:
    /// a TensorBoard tag's part).
    pub fn name(&self) -> String {
        let folder =
            || self.dir.file_name().map_or("val".into(), |n| crate::tensorboard::tag_part(&n.to_string_lossy()));
        self.name.clone().unwrap_or_else(folder)
    }
}

impl ValSection {
    /// Every validation dataset's folder and the key naming it: `val.dir` (where set), then
    /// `val.sets[i].dir`.
    pub fn dirs(&self) -> impl Iterator<Item = (String, &PathBuf)> {
        let sets = self.sets.iter().enumerate().map(|(i, s)| (format!("val.sets[{i}].dir"), &s.dir));
        self.dir.iter().map(|d| ("val.dir".to_string(), d)).chain(sets)
    }

    /// The self-correction `(p_max, apply_layers)` validation measures with, given training's `bsc`.
    pub fn bsc(&self, bsc: &BscSection) -> (f64, usize) {
        (self.p_max.unwrap_or(bsc.p_max), self.apply_layers.unwrap_or(bsc.apply_layers))
    }
}

impl Default for ValSection {
    fn default() -> Self {
        ValSection { dir: None, every: 0, max_rows: 512, seed: 0, p_max: None, apply_layers: None, sets: Vec::new() }
    }
}

/// Data-parallel settings (the group itself comes from the environment: `infinity launch`, torchrun-style
/// variables or SLURM).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistSection {
    /// A collective that makes no progress for this long fails (the rank exits with code 86).
    pub timeout_s: f64,
    /// How long ranks wait for each other to arrive.
    pub rdzv_timeout_s: f64,
    /// Shard the optimiser state over ranks (ZeRO-1): reduce-scatter, sharded AdamW, all-gather.
    pub zero1: bool,
    /// The communicator: `ring` (TCP, any machine), `nccl` (GPUs; needs a build with feature `cuda`)
    /// or `auto` (the ring while the model runs on the CPU).
    pub backend: CommBackend,
    /// Over NCCL: sum each bucket of gradients over the ranks as soon as the backward has written it,
    /// while the backward goes on (the step's last micro-batch); otherwise after the whole backward.
    pub overlap_grads: bool,
    /// The gradients of at least this many MiB make a bucket (consecutive blocks; 0: one per block).
    pub bucket_mib: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommBackend {
    /// NCCL when every rank computes on a GPU (a `cuda` build), else the TCP ring.
    #[default]
    Auto,
    Ring,
    Nccl,
}

impl Default for DistSection {
    fn default() -> Self {
        DistSection {
            timeout_s: 300.0,
            rdzv_timeout_s: 300.0,
            zero1: false,
            backend: CommBackend::Auto,
            overlap_grads: true,
            bucket_mib: 25.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run folder: config, logs, checkpoints.
    pub dir: PathBuf,
    /// Seeds initialisation, data order, flips and condition dropout.
    pub seed: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// Log every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// One device's peak dense TFLOP/s, for MFU (e.g. 989.4 for an H100 SXM in bf16), or `"auto"` (the
    /// default): a GPU's datasheet peak at `precision` (`train::mfu`), none on the CPU.
    #[serde(default)]
    pub peak_tflops: PeakTflops,
    /// Where forward and backward run: `cpu`, `cuda` (an error without a GPU or a build without the
    /// `cuda` feature) or `auto` (the GPU when there is one, else the CPU, saying so).
    #[serde(default)]
    pub device: DeviceChoice,
    /// On the GPU, keep only each block's input in the forward and recompute the block in the
    /// backward (activation memory of one block instead of all, for one more block forward each).
    #[serde(default)]
    pub recompute: bool,
    /// The GPU's matmuls: `f32`, or `bf16` inputs with f32 accumulation (tensor cores, with bf16
    /// activations where upstream's autocast has them; f32 master weights and f32 islands:
    /// docs/numerics.md).
    #[serde(default)]
    pub precision: Precision,
    /// On the GPU, stop before the first step when `model::memory`'s count of a step exceeds the GPU's
    /// memory (naming the micro-batches that fit). `false` lets the run try (and run out of memory).
    #[serde(default = "yes")]
    pub gpu_memory_check: bool,
    /// End the process (exit code 75, which `infinity launch` restarts from the last checkpoint) when
    /// a phase of the training loop (a step's data read, its forward and backward, its optimiser step,
    /// a validation, a checkpoint) lasts longer than this many seconds: a hang outside a collective.
    /// 0 (the default) watches nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stall_timeout_s: f64,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda,
    Auto,
}

/// As the config writes them (`cpu`, `bf16`).
impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Auto => "auto",
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

fn default_log_every() -> u64 {
    10
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A preset of `ModelConfig::preset` (tiny, small, layer12 … 2b).
    pub preset: String,
    pub depth: Option<usize>,
    pub embed_dim: Option<usize>,
    pub num_heads: Option<usize>,
    pub mlp_ratio: Option<f64>,
    /// `"class"` (VAR-style) or `"text"` (upstream Infinity); must match the dataset's conditions.
    pub conditioning: String,
    /// Probability of dropping a sample's condition (classifier-free guidance).
    #[serde(default = "default_cond_drop")]
    pub cond_drop_rate: f64,
    /// Stochastic depth at the last block (upstream `drop_path_rate`, 0 at the first block, linear in
    /// between), on the self-attention and FFN branches in training. Unset: the preset's (0.1 for
    /// upstream's presets, as their `--dp -1` default; 0 for tiny and small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_path_rate: Option<f64>,
    /// Upstream `apply_spatial_patchify`: tokens of `4·d` bits, each the 2×2 unshuffle of a dataset
    /// whose schedules have twice the transformer's sides (made with `--spatial-patchify`). Unset: the
    /// preset's (true for 8b, as upstream's 8B).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_spatial_patchify: Option<bool>,
    /// Start a fresh run from these weights instead of a random initialisation (upstream's
    /// `--rush_resume`: fine-tuning, or the next resolution of a progressive recipe): a checkpoint or
    /// run folder (its newest checkpoint) or a safetensors file with upstream names (an export). The
    /// transformer body must match; `word_embed`, `head` and the conditioning layers keep their fresh
    /// values where the file has another shape or none. Optimiser, schedule and data start afresh;
    /// a resumed run takes its weights from its own checkpoint instead (the source may be gone by
    /// then). Empty (`--set model.init_from=""`): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Start the weights from `init_from`'s moving average of them instead: a checkpoint's
    /// `ema.safetensors`, an export made with `--ema`, or upstream's `trainer.gpt_ema_fsdp`. (Either way,
    /// a run keeping its own average starts it from the source's where it keeps one, as upstream's
    /// `--rush_resume` does.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub init_from_ema: bool,
    /// The fresh initialisation's factors (`[model.init]`: upstream's `tini`, `aln`, `alng`, `hd0`,
    /// `diva`; each left out takes train.sh's value).
    #[serde(default, skip_serializing_if = "is_default_init")]
    pub init: InitConfig,
    /// μP (`model::mup`): initialise and scale the learning rates as for a model of this width, so
    /// that `optim.lr` tuned at this width carries over to the others of a width sweep. Unset: the
    /// standard parametrization (upstream's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mup_base_width: Option<usize>,
    /// μP's base model's heads (only with `mup_base_width`; required with text conditioning, unused
    /// by class-conditioned models): sets the cross-attention's base head dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mup_base_heads: Option<usize>,
}

impl ModelSection {
    /// The model for the dataset of manifest `m`: its bits per token and its condition (the classes, or
    /// the text's width and maximum tokens).
    pub fn model_for(&self, m: &infinity_data::Manifest) -> Result<ModelConfig> {
        let num_classes = m.conditions.class.as_ref().map(|c| c.num_classes as usize);
        let text = m.conditions.text.as_ref().map(|t| (t.width as usize, t.max_tokens as usize));
        self.model_config(m.d as usize, num_classes, text)
    }

    /// The preset with this section's changes to it that need no dataset: depth (its key layout too),
    /// width, heads, MLP ratio, spatial patchify, condition and path dropping.
    pub fn shape(&self) -> Result<ModelConfig> {
        let m = self;
        let mut c = ModelConfig::named_preset(&m.preset).map_err(|e| anyhow::anyhow!("model.preset: {e}"))?;
        if let Some(depth) = m.depth {
            c = c.with_depth(depth);
        }
        c.embed_dim = m.embed_dim.unwrap_or(c.embed_dim);
        c.num_heads = m.num_heads.unwrap_or(c.num_heads);
        c.mlp_ratio = m.mlp_ratio.unwrap_or(c.mlp_ratio);
        c.apply_spatial_patchify = m.apply_spatial_patchify.unwrap_or(c.apply_spatial_patchify);
        c.cond_drop_rate = m.cond_drop_rate;
        c.drop_path_rate = m.drop_path_rate.unwrap_or(c.drop_path_rate);
        Ok(c)
    }

    /// The model for a dataset with `d` bits per token and the given conditions.
    /// `text`: the dataset's text width and maximum tokens per caption.
    pub fn model_config(
        &self,
        d: usize,
        num_classes: Option<usize>,
        text: Option<(usize, usize)>,
    ) -> Result<ModelConfig> {
        let m = self;
        let mut c = m.shape()?;
        c.d = c.token_bits(d);
        c.conditioning = match (m.conditioning.as_str(), num_classes, text) {
            ("class", Some(n), _) => Conditioning::Class { num_classes: n },
            ("text", _, Some((width, max_tokens))) => {
                c.text_channels = width;
                c.text_maxlen = max_tokens;
                Conditioning::Text
            }
            (kind @ ("class" | "text"), _, _) => {
                let none = match (num_classes, text) {
                    (None, None) => {
                        " (nor any: for unconditional training, write it as one class, manifest \
                                     `conditions.class = {\"num_classes\": 1}` and every class_label 0, and \
                                     train with model.conditioning = \"class\")"
                    }
                    (Some(n), None) => &format!(" (it has {n} classes: model.conditioning = \"class\" trains on them)"),
                    (None, Some((width, _))) => &format!(
                        " (it has text features of width {width}: model.conditioning = \"text\" trains on them)"
                    ),
                    _ => "",
                };
                bail!("model.conditioning = \"{kind}\", but the dataset has no {kind} condition{none}")
            }
            (kind, _, _) => bail!("model.conditioning must be \"class\" or \"text\", found {kind:?}"),
        };
        c.validate().map_err(|e| anyhow::anyhow!("model: {e}"))?;
        if let Some(base) = m.mup() {
            base.validate(&c).map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(c)
    }

    /// μP's base model, when the run uses μP.
    pub fn mup(&self) -> Option<crate::model::mup::MupBase> {
        self.mup_base_width.map(|width| crate::model::mup::MupBase { width, heads: self.mup_base_heads })
    }
}

fn default_cond_drop() -> f64 {
    0.1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub dir: PathBuf,
    /// Samples per optimiser step.
    pub global_batch: usize,
    /// Samples per forward/backward; `global_batch / micro_batch` micro-steps accumulate. `"auto"`:
    /// the most a rank's GPU holds (`train::gpu_fit::resolve_micro_batch`).
    pub micro_batch: MicroBatchSize,
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The chance that a row's short caption is read instead of its long one (upstream's
    /// `--short_cap_prob`, 0.5 in its train.sh), for a text model on a dataset with short captions
    /// (`conditions.text.short_caption`; a row without one reads its long one); 0, the default, reads
    /// the long ones alone. Drawn per sample from (seed, step, sample id), as condition dropout.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub short_cap_prob: f64,
    /// `data.dir`'s weight in a mix with `data.mix` (relative to theirs). Give every dataset of a mix a
    /// weight, or none: then each is drawn as often as its size says (the datasets concatenated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// More datasets trained on with `data.dir`, of its bits, schedules and columns (`[[data.mix]]`
    /// tables). A global batch is one dataset's rows (one bucket's, as ever); each dataset is drawn in
    /// its own order, and by its weight's share of the global batches (data/src/loader/mix.rs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mix: Vec<MixSource>,
    /// Later weights of the mix (`[[data.phases]]`, by increasing `from_step`): an annealing phase on
    /// other data. The steps before a phase are drawn as without it; each dataset goes on in its own
    /// order where the phases before left it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<DataPhase>,
}

/// A phase of a training mix (`[[data.phases]]`): from its first step on, the datasets drawn by
/// `weights`, `data.dir`'s first and then each `data.mix` one's. The first step is `from_step`
/// (0-based), or `from_fraction` of `run.steps` (rounded to the nearest step), which moves with the
/// run's length as the learning-rate schedule does: one of the two.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPhase {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_fraction: Option<f64>,
    pub weights: Vec<f64>,
}

impl DataPhase {
    /// The phase's first step in a run of `steps` steps (0 for a phase that gives neither key, which
    /// validation refuses).
    pub fn start(&self, steps: u64) -> u64 {
        match (self.from_step, self.from_fraction) {
            (Some(step), _) => step,
            (None, Some(f)) => (f * steps as f64).round() as u64,
            (None, None) => 0,
        }
    }

    /// The key that sets the start, with its value, as errors name it.
    pub fn start_key(&self, k: usize, steps: u64) -> String {
        match self.from_fraction.filter(|_| self.from_step.is_none()) {
            Some(f) => {
                format!("data.phases[{k}].from_fraction ({f} of run.steps = {}: step {})", steps, self.start(steps))
            }
            None => format!("data.phases[{k}].from_step ({})", self.start(steps)),
        }
    }
}

/// One more dataset of a training mix (`[[data.mix]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSource {
    pub dir: PathBuf,
    /// Its weight, relative to `data.weight` and the others'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

impl DataSection {
    /// Every training dataset's folder and the key naming it: `data.dir`, then `data.mix[i].dir`.
    pub fn dirs(&self) -> impl Iterator<Item = (String, &PathBuf)> {
        std::iter::once(("data.dir".to_string(), &self.dir))
            .chain(self.mix.iter().enumerate().map(|(i, m)| (format!("data.mix[{i}].dir"), &m.dir)))
    }

    /// Every training dataset's folder, as a run names them: `A + B`.
    pub fn folders(&self) -> String {
        self.dirs().map(|(_, d)| d.display().to_string()).collect::<Vec<_>>().join(" + ")
    }

    /// The phases of a mix in a run of `steps` steps as the loader takes them (one global batch a step).
    pub fn mix_phases(&self, steps: u64) -> Vec<infinity_data::loader::MixPhase> {
        let phase =
            |p: &DataPhase| infinity_data::loader::MixPhase { from: p.start(steps), weights: p.weights.clone() };
        self.phases.iter().map(phase).collect()
    }

    /// The weights of a mix, `data.weight` first; `None` where none is given (the datasets concatenated).
    pub fn mix_weights(&self) -> Option<Vec<f64>> {
        let given = std::iter::once(self.weight).chain(self.mix.iter().map(|m| m.weight));
        given.collect::<Option<Vec<f64>>>().filter(|_| !self.mix.is_empty())
    }
}

fn default_workers() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// The peak learning rate (reached after the warm-up). One of `lr` and `lr_per_256`: of the two,
    /// the one set last (a file over the file it extends, the environment over the file, `--set` over
    /// both) replaces the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// The peak learning rate per 256 samples of `data.global_batch` (upstream's `tblr`:
    /// `lr = tblr · global_batch / 256`), so that the rate follows the batch of a batch-size sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_per_256: Option<f64>,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_constant")]
    pub decay: Decay,
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Global-norm clip (upstream `tclip`); 0 turns clipping off.
    #[serde(default = "default_clip")]
    pub clip: f64,
    /// Upstream's `--cdec`: the clip decays over the run, `clip · (0.3^(20·t) + 0.2)` at progress `t`
    /// ([`crate::optim::clip_at`]); logged as `train/clip`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clip_decay: bool,
    /// Stop after this many consecutive steps with a non-finite loss or gradient norm.
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite: u64,
    /// Decay of a moving average of the weights kept beside them (upstream `--use_fsdp_model_ema`,
    /// 0.9999 there), updated after every step and saved as each checkpoint's `ema.safetensors`; 0
    /// (the default, as upstream's train.sh) keeps none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ema_decay: f64,
    /// Skip the update of a step whose loss is more than this many standard deviations above the
    /// mean of the last `spike_window` steps (llm.c's `-sl`); 0 (the default) judges no loss.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip_loss_z: f64,
    /// The same for the gradient norm (llm.c's `-sg`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip_grad_z: f64,
    /// How many steps the z-scores look back over (they judge nothing until as many have passed).
    #[serde(default = "default_spike_window", skip_serializing_if = "is_default_spike_window")]
    pub spike_window: usize,
}

fn default_spike_window() -> usize {
    128
}
// (each key left out of a config.toml at its default: [`as_typed::left_out`])
fn is_default_spike_window(w: &usize) -> bool {
    as_typed::left_out(*w == default_spike_window())
}

fn is_false(v: &bool) -> bool {
    as_typed::left_out(!*v)
}

fn is_zero(v: &f64) -> bool {
    as_typed::left_out(*v == 0.0)
}

fn is_default_init(init: &InitConfig) -> bool {
    as_typed::left_out(init.is_default())
}

fn default_constant() -> Decay {
    Decay::Constant {}
}
fn default_clip() -> f64 {
    5.0
}
fn default_max_nonfinite() -> u64 {
    5
}

/// Bitwise self-correction (upstream `noise_apply_strength`, `noise_apply_layers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BscSection {
    pub p_max: f64,
    pub apply_layers: usize,
}

impl Default for BscSection {
    fn default() -> Self {
        BscSection { p_max: 0.3, apply_layers: 13 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSection {
    /// Upstream `reweight_loss_by_scale` (the formula it intends).
    #[serde(default)]
    pub reweight_by_scale: bool,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Upstream's `bitloss_type`: a token's loss is the mean of its `d` bits' (`mean`, the default) or
    /// their sum (`sum`: gradients `d` times larger, so `optim.clip` bites sooner). The logged losses
    /// are per bit either way.
    #[serde(default, skip_serializing_if = "BitLoss::is_mean")]
    pub bitloss: BitLoss,
}

/// How a token's `d` bit losses make its loss (`loss.bitloss`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitLoss {
    #[default]
    Mean,
    Sum,
}

impl BitLoss {
    fn is_mean(&self) -> bool {
        as_typed::left_out(*self == BitLoss::Mean)
    }

    /// The factor on the per-bit mean that the objective takes, for `d` bits per token.
    pub fn scale(&self, d: usize) -> f64 {
        match self {
            BitLoss::Mean => 1.0,
            BitLoss::Sum => d as f64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (and at the end); 0 = only at the end.
    pub every: u64,
    /// Also save once this many minutes have passed since the session's start or its last save, at the
    /// end of the step where rank 0's clock says so (not while the last checkpoint is still being
    /// written): the work a preemption loses is bounded in time whatever a step takes; 0 (the default)
    /// = by steps alone.
    #[serde(skip_serializing_if = "is_zero")]
    pub every_minutes: f64,
    /// Keep the newest this many.
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0 = none).
    pub keep_every: u64,
    /// Write checkpoints on a thread of their own while training goes on (rank 0 keeps a copy of the
    /// weights and optimiser state until the write ends); false writes them in the step loop, every
    /// rank waiting at a barrier until the files are on disk.
    pub background: bool,
    /// Failed writes in a row that training goes on after (warned of, counted in `summary.json`, the
    /// last complete checkpoint kept); one more stops the run. The session's last checkpoint (the
    /// run's end, a stop) is never let fail.
    #[serde(skip_serializing_if = "is_default_failed_writes_tolerated")]
    pub failed_writes_tolerated: u64,
}

fn is_default_failed_writes_tolerated(n: &u64) -> bool {
    as_typed::left_out(*n == CheckpointSection::default().failed_writes_tolerated)
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: 100,
            every_minutes: 0.0,
            keep_last: 2,
            keep_every: 0,
            background: true,
            failed_writes_tolerated: 2,
        }
    }
}

/// Sample grids logged to TensorBoard (and `RUN/samples/`) during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// Every this many steps, and at the end; 0 = never.
    pub every: u64,
    /// Conditions in the grid (classes spread over the label range, or the first rows' captions).
    pub n: usize,
    /// Samples per condition.
    pub per_condition: usize,
    pub cfg: f64,
    /// Temperature and per-bit top-p (0 = off), as `infinity sample --tau --top-p` (and their defaults,
    /// upstream's: 0.5 and 0.97).
    pub tau: f64,
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SampleSection {
    fn default() -> Self {
        SampleSection { every: 0, n: 8, per_condition: 2, cfg: 3.0, tau: 0.5, top_p: 0.97, seed: 0 }
    }
}

/// A config's path `dir` as messages name it, under its `key`: a relative one that is not there says
/// it was read from the working folder (a config's relative paths are, not from the config's folder).
pub fn path_as_read(key: &str, dir: &Path) -> String {
    match dir.is_relative() && !dir.exists() {
        true => {
            let here = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
            format!("{key} {} (relative to the working folder, {here})", dir.display())
        }
        false => format!("{key} {}", dir.display()),
    }
}

/// The peak learning rate `optim.lr_per_256` (upstream's `tblr`) gives at a global batch of `batch`, to
/// 12 significant digits: the rate written out by hand (`6e-3 · 100 / 256` as 0.00234375) is the same
/// number, so that configs giving it either way compare equal.
pub fn lr_of_per_256(per_256: f64, batch: f64) -> f64 {
    let lr = per_256 * batch / 256.0;
    format!("{lr:.11e}").parse().unwrap_or(lr)
}

impl TrainConfig {
    /// The config with its paths made absolute (from the working directory), as the run folder and its
    /// checkpoints record it: sampling, export and a resume started from another folder find the same
    /// files.
    pub fn with_absolute_paths(&self) -> TrainConfig {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let mut c = self.clone();
        (c.run.dir, c.data.dir) = (abs(&c.run.dir), abs(&c.data.dir));
        c.data.mix.iter_mut().for_each(|m| m.dir = abs(&m.dir));
        c.val.dir = c.val.dir.as_ref().map(abs);
        c.val.sets.iter_mut().for_each(|s| s.dir = abs(&s.dir));
        c.model.init_from = c.model.init_from.as_ref().map(abs);
        c
    }

    /// The peak learning rate: `optim.lr`, or `optim.lr_per_256` scaled to `data.global_batch`
    /// (NaN with neither, which [`TrainConfig::validate`] refuses).
    pub fn peak_lr(&self) -> f64 {
        match (self.optim.lr, self.optim.lr_per_256) {
            (Some(lr), _) => lr,
            (None, Some(per_256)) => lr_of_per_256(per_256, self.data.global_batch as f64),
            (None, None) => f64::NAN,
        }
    }

    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.peak_lr(),
            warmup_steps: self.optim.warmup_steps,
            warmup_start_ratio: 0.005,
            decay: self.optim.decay.clone(),
        }
    }

    /// The model for the dataset of manifest `m` ([`ModelSection::model_for`]).
    pub fn model_for(&self, m: &infinity_data::Manifest) -> Result<ModelConfig> {
        self.model.model_for(m)
    }
}
