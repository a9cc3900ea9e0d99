//! Helpers shared by the data crate's integration tests: small manifests and random but valid rows.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use half::f16;
use infinity_data::format::{self, BIT_ORDER, FORMAT_NAME, FORMAT_VERSION};
use infinity_data::loader::{Batch, Loader, LoaderState};
use infinity_data::manifest::{ClassInfo, Conditions, LatentInfo, Manifest, TextDtype, TextInfo, TokenizerInfo};
use infinity_data::writer::{DatasetWriter, RowData, WriterOptions};
use infinity_data::{Catalog, Checksums, Dataset};
use rand::{Rng, SeedableRng};

pub const D: usize = 12; // not a multiple of 8: exercises the padding bits
pub const TEXT_WIDTH: usize = 6;

/// Manifest with every optional column, two buckets (square and 2:3) at the `demo4` budget.
pub fn manifest() -> Manifest {
    let c = Catalog::upstream();
    Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        d: D as u32,
        bit_order: BIT_ORDER.into(),
        tokenizer: TokenizerInfo { name: "test".into(), file: None, params: serde_json::Value::Null },
        conditions: Conditions {
            class: Some(ClassInfo { num_classes: 10, names: vec![] }),
            text: Some(TextInfo {
                width: TEXT_WIDTH as u32,
                dtype: TextDtype::Bf16,
                max_tokens: 5,
                encoder: "test".into(),
                short_caption: true,
            }),
            caption: true,
        },
        latent: Some(LatentInfo { dtype: "f16".into(), layout: "d,H,W".into() }),
        schedules: vec![c.schedule("1.000", "demo4").unwrap(), c.schedule("0.666", "demo4").unwrap()],
        shards: vec![],
        total_rows: 0,
        created_by: "test".into(),
    }
}

/// A valid random row for `m`: a random latent and its multi-scale BSQ bits.
pub fn random_row(m: &Manifest, id: u64, rng: &mut impl Rng) -> RowData {
    let bucket = rng.random_range(0..m.schedules.len()) as u16;
    let s = &m.schedules[bucket as usize];
    let d = m.d as usize;
    let (h, w) = s.latent_hw();
    let values: Vec<f16> = (0..d * h * w).map(|_| f16::from_f32(rng.random_range(-2.0..2.0))).collect();
    let stored: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
    let bits = infinity_kernels::bsq::encode_multiscale(&stored, d, &s.hw()).bits;
    let mut packed = Vec::new();
    format::pack_bits(&bits, d, &mut packed);
    let latent = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let n_text = rng.random_range(1..=5);
    let mut text_of = |n_tokens: usize| -> Vec<u8> {
        (0..n_tokens * TEXT_WIDTH)
            .flat_map(|_| half::bf16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes())
            .collect()
    };
    let text = text_of(n_text);
    // (every fourth row without a short caption: the column's nulls)
    let text_short = (!id.is_multiple_of(4)).then(|| text_of(1 + id as usize % 3));
    RowData {
        id,
        bucket,
        bits: packed,
        latent: Some(latent),
        class_label: Some(rng.random_range(0..10)),
        text_emb: Some(text),
        text_emb_short: text_short,
        caption: if id.is_multiple_of(3) { None } else { Some(format!("caption of row {id} ✓")) },
    }
}

/// Loader options of the tests: seed 42, prefetching 2, bad rows refused, the mix's `weights`.
pub fn loader_options(
    g: usize,
    (rank, world): (usize, usize),
    workers: usize,
    weights: Option<Vec<f64>>,
) -> infinity_data::loader::LoaderOptions {
    infinity_data::loader::LoaderOptions {
        global_batch: g,
        seed: 42,
        rank,
        world_size: world,
        workers,
        prefetch: 2,
        bad_rows: infinity_data::loader::BadRows::Error,
        mix_weights: weights,
        mix_phases: Vec::new(),
    }
}

/// Write `n` random rows into `dir` with small shards and batches; returns the rows and the manifest.
pub fn write_random(dir: &Path, n: u64, seed: u64) -> (Vec<RowData>, Manifest) {
    write_random_from(dir, n, seed, 1000)
}

/// [`write_random`] with ids from `first_id` on.
pub fn write_random_from(dir: &Path, n: u64, seed: u64, first_id: u64) -> (Vec<RowData>, Manifest) {
    write_random_with(dir, (n, seed, first_id), true)
}

/// [`write_random_from`], with short captions or without (no `text_emb_short` column).
pub fn write_random_with(dir: &Path, (n, seed, first_id): (u64, u64, u64), short: bool) -> (Vec<RowData>, Manifest) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut m = manifest();
    m.conditions.text.as_mut().expect("the test manifest has text").short_caption = short;
    let mut rows: Vec<RowData> = (0..n).map(|id| random_row(&m, first_id + id, &mut rng)).collect();
    if !short {
        for r in &mut rows {
            r.text_emb_short = None;
        }
    }
    let opts = WriterOptions { batch_rows: 7, shard_bytes: 16 << 10, overwrite: true };
    let mut w = DatasetWriter::create(dir, m, opts).unwrap();
    for r in &rows {
        w.push(r.clone()).unwrap();
    }
    let m = w.finish().unwrap();
    (rows, m)
}

/// A dataset of `n` random rows (ids from 1000) in a temporary folder.
pub fn open(n: u64) -> (tempfile::TempDir, Arc<Dataset>) {
    let dir = tempfile::tempdir().unwrap();
    write_random(dir.path(), n, 7);
    let ds = Arc::new(Dataset::open(dir.path(), Checksums::Verify).unwrap());
    (dir, ds)
}

/// [`loader_options`] of one dataset.
pub fn opts(g: usize, rank: usize, world: usize, workers: usize) -> infinity_data::loader::LoaderOptions {
    loader_options(g, (rank, world), workers, None)
}

/// The ids of `steps` global batches read by all ranks of `world` (rank slices concatenated in rank
/// order), continuing from `state`; returns them with the state afterwards.
pub fn run_world(
    ds: &Arc<Dataset>,
    g: usize,
    world: usize,
    workers: usize,
    state: Option<LoaderState>,
    steps: usize,
) -> (Vec<Vec<u64>>, LoaderState) {
    let mut loaders: Vec<Loader> =
        (0..world).map(|r| Loader::new(ds.clone(), opts(g, r, world, workers), state.clone()).unwrap()).collect();
    let mut out = Vec::new();
    for _ in 0..steps {
        let parts: Vec<Batch> = loaders.iter_mut().map(|l| l.next_batch().unwrap()).collect();
        assert!(parts.iter().all(|p| p.bucket == parts[0].bucket && p.global_index == parts[0].global_index));
        assert!(parts.iter().all(|p| p.len() == g / world), "every rank gets an equal slice");
        out.push(parts.iter().flat_map(|p| p.ids.clone()).collect());
    }
    let states: Vec<LoaderState> = loaders.iter().map(Loader::state).collect();
    assert!(states.iter().all(|s| s == &states[0]), "ranks agree on the position");
    (out, states[0].clone())
}

/// Part A: 160 rows, ids from 1000; part B: 48 rows, ids from 5000.
pub fn two_parts() -> (Vec<tempfile::TempDir>, Dataset, Dataset) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_random_from(a.path(), 160, 7, 1000);
    write_random_from(b.path(), 48, 8, 5000);
    let open = |d: &tempfile::TempDir| Dataset::open(d.path(), Checksums::Verify).unwrap();
    let (da, db) = (open(&a), open(&b));
    (vec![a, b], da, db)
}
