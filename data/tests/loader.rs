//! The loader: determinism, rank slicing, full coverage, resume across world sizes, error delivery.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{open, opts, run_world};
use infinity_data::loader::{Loader, LoaderOptions, LoaderState};
use infinity_data::{Checksums, Dataset};

#[test]
fn same_seed_gives_the_same_batches_inline_and_prefetched() {
    let (_d, ds) = open(200);
    let (a, _) = run_world(&ds, 8, 1, 0, None, 40);
    let (b, _) = run_world(&ds, 8, 1, 3, None, 40);
    assert_eq!(a, b, "prefetch threads must not change the order");
    let other =
        Loader::new(ds.clone(), LoaderOptions { seed: 43, ..opts(8, 0, 1, 0) }, None).unwrap().next_batch().unwrap();
    assert_ne!(other.ids, a[0], "a different seed gives a different order");
}

#[test]
fn batches_are_homogeneous_and_an_epoch_covers_every_row_once() {
    let (_d, ds) = open(203);
    let g = 8;
    let loader = Loader::new(ds.clone(), opts(g, 0, 1, 0), None).unwrap();
    let per_epoch = loader.batches_per_epoch() as usize;
    let left = loader.rows_left_over_per_epoch();
    drop(loader);
    let (batches, _) = run_world(&ds, g, 4, 1, None, per_epoch);
    let mut seen = HashSet::new();
    for ids in &batches {
        let buckets: HashSet<u16> = ids.iter().map(|&id| ds.row(id - 1000).bucket).collect();
        assert_eq!(buckets.len(), 1, "a global batch mixes buckets");
        for id in ids {
            assert!(seen.insert(*id), "row {id} read twice in one epoch");
        }
    }
    assert_eq!(seen.len() as u64 + left, 203, "rows read + rows left over = dataset");
    assert!(left < 2 * g as u64, "at most G-1 rows per bucket are left over");
}

#[test]
fn resume_is_sample_exact_while_the_world_size_changes() {
    let (_d, ds) = open(160);
    let g = 8;
    // reference: one rank, 45 steps (crosses epoch boundaries: 160 rows / 8 ≈ 19 per epoch)
    let (reference, _) = run_world(&ds, g, 1, 0, None, 45);
    // 1 rank for 7 steps → 2 ranks for 11 → 4 ranks for 13 → 2 ranks (prefetched) for 14
    let mut got = Vec::new();
    let mut state = None;
    for (world, workers, steps) in [(1, 0, 7), (2, 0, 11), (4, 2, 13), (2, 1, 14)] {
        let (b, s) = run_world(&ds, g, world, workers, state, steps);
        // the state survives a JSON round trip, as it does in a checkpoint
        state = Some(serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap());
        got.extend(b);
    }
    assert_eq!(got, reference);
}

#[test]
fn resume_refuses_a_different_seed_or_dataset() {
    // (a different global batch is taken: tests/loader_sizes.rs)
    let (_d, ds) = open(64);
    let mut l = Loader::new(ds.clone(), opts(8, 0, 1, 0), None).unwrap();
    l.next_batch().unwrap();
    let s = l.state();
    let e = Loader::new(ds.clone(), LoaderOptions { seed: 1, ..opts(8, 0, 1, 0) }, Some(s.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("seed"), "{e}");
    // bits of another tokenizer mean other images; a position of an earlier build names none
    assert_eq!(s.tokenizer, Some(infinity_data::tokenizer::identity(&ds.parts()[0].dir, &ds.manifest)));
    let other =
        LoaderState { tokenizer: Some("patch-pca-bsq tokenizer.safetensors crc32c 00000000".into()), ..s.clone() };
    let e = Loader::new(ds.clone(), opts(8, 0, 1, 0), Some(other)).err().unwrap().to_string();
    assert!(e.contains("its bits are of another tokenizer than the checkpoint's data"), "{e}");
    Loader::new(ds.clone(), opts(8, 0, 1, 0), Some(LoaderState { tokenizer: None, ..s.clone() })).unwrap();
    // an earlier build saved the contents' part alone: still this dataset
    let contents = ds.manifest.fingerprint().rsplit_once('-').unwrap().0.to_string();
    Loader::new(ds.clone(), opts(8, 0, 1, 0), Some(LoaderState { dataset: contents, ..s.clone() })).unwrap();
    // the same shards read by another scale schedule are another dataset
    let mut other = ds.manifest.clone();
    other.schedules[0].scales.pop();
    assert!(!other.fingerprint_matches(&ds.manifest.fingerprint()));
    let e = Loader::new(ds.clone(), opts(8, 0, 1, 0), Some(LoaderState { dataset: "x".into(), ..s }))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dataset fingerprint"), "{e}");
    let e = Loader::new(ds.clone(), opts(6, 0, 4, 0), None).err().unwrap().to_string();
    assert!(e.contains("multiple of world size 4"), "{e}");
    let e = Loader::new(ds, opts(1000, 0, 1, 0), None).err().unwrap().to_string();
    assert!(e.contains("no bucket has a full global batch of 1000 rows"), "{e}");
}

/// A refused resume says what changed in the dataset, as far as its fingerprint tells.
#[test]
fn resume_on_a_changed_dataset_says_what_changed() {
    let (_d, ds) = open(64);
    let mut l = Loader::new(ds.clone(), opts(8, 0, 1, 0), None).unwrap();
    l.next_batch().unwrap();
    let s = l.state();
    let (_d96, more) = open(96);
    let e = Loader::new(more.clone(), opts(8, 0, 1, 0), Some(s.clone())).err().unwrap();
    assert!(matches!(e, infinity_data::DataError::Config(_)), "a configuration error: {e:?}");
    let e = e.to_string();
    assert!(e.contains("the row count changed: 64 → 96") && e.contains("fixes the order of the samples"), "{e}");
    // the same number of other rows
    let other_dir = tempfile::tempdir().unwrap();
    common::write_random(other_dir.path(), 64, 8);
    let other = Arc::new(Dataset::open(other_dir.path(), Checksums::Verify).unwrap());
    let e = Loader::new(other, opts(8, 0, 1, 0), Some(s.clone())).err().unwrap().to_string();
    assert!(e.contains("the shards changed (their names, checksums or row counts; still 64 rows in all)"), "{e}");
    assert!(!e.contains("schedules changed"), "{e}");
    // the same shards read by other schedules
    let mut relaid = Dataset::open(_d.path(), Checksums::Verify).unwrap();
    relaid.manifest.schedules[0].scales.pop();
    assert_eq!(relaid.manifest.fingerprint_changes(&s.dataset), ["`d` or the scale schedules changed"]);

    // `--accept-data-change`: the position moves to other contents of the same layout, not to others
    let moved = s.moved_to(&more).unwrap();
    assert_eq!((moved.batches_done, moved.dataset.clone()), (s.batches_done, more.manifest.fingerprint()));
    assert_eq!(moved.same_buckets(&more), Some(true));
    Loader::new(more.clone(), opts(8, 0, 1, 0), Some(moved)).unwrap();
    let e = s.moved_to(&relaid).unwrap_err().to_string();
    assert!(e.contains("`d` or the scale schedules changed since the saved position"), "{e}");
    // whether the rows of every bucket are the ones the position was drawn from (the same order)
    assert_eq!((s.same_buckets(&ds), s.same_buckets(&more)), (Some(true), Some(false)));
    // a position of an earlier build: no layout part in its fingerprint (moved), no buckets (cannot tell)
    let earlier =
        LoaderState { dataset: s.dataset.rsplit_once('-').unwrap().0.to_string(), buckets: None, ..s.clone() };
    assert!(earlier.moved_to(&relaid).is_ok());
    assert_eq!(earlier.same_buckets(&ds), None);
    let json = serde_json::to_string(&earlier).unwrap();
    assert!(!json.contains("buckets") && serde_json::from_str::<LoaderState>(&json).unwrap() == earlier, "{json}");
}

#[test]
fn batch_accessors_decode_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, m) = common::write_random(dir.path(), 50, 9);
    let ds = Arc::new(Dataset::open(dir.path(), Checksums::Verify).unwrap());
    let mut l = Loader::new(ds, opts(4, 0, 1, 1), None).unwrap();
    let b = l.next_batch().unwrap();
    let cu = b.text_cu_seqlens.as_ref().unwrap();
    for (i, id) in b.ids.iter().enumerate() {
        let want = &rows[(id - 1000) as usize];
        let mut packed = Vec::new();
        infinity_data::format::pack_bits(&b.unpacked_bits(i, m.d as usize), m.d as usize, &mut packed);
        assert_eq!(packed, want.bits);
        let lat = b.latent_f32(i).unwrap();
        let want_lat: Vec<f32> = want
            .latent
            .as_ref()
            .unwrap()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(lat, want_lat);
        let text = b.text_f32(i, common::TEXT_WIDTH, infinity_data::manifest::TextDtype::Bf16).unwrap();
        assert_eq!(text.len(), (cu[i + 1] - cu[i]) as usize * common::TEXT_WIDTH);
        assert_eq!(text.len() * 2, want.text_emb.as_ref().unwrap().len());
        let short = b.text_short_f32(i, common::TEXT_WIDTH, infinity_data::manifest::TextDtype::Bf16);
        let bf16 = |b: &Vec<u8>| b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(short, want.text_emb_short.as_ref().map(bf16), "row {id}");
        assert_eq!(b.captions.as_ref().unwrap()[i], want.caption);
    }
}

#[test]
fn recycled_buffers_give_identical_batches() {
    let (_d, ds) = open(120);
    let mut plain = Loader::new(ds.clone(), opts(8, 0, 1, 2), None).unwrap();
    let mut recycling = Loader::new(ds, opts(8, 0, 1, 2), None).unwrap();
    for _ in 0..40 {
        let a = plain.next_batch().unwrap();
        let b = recycling.next_batch().unwrap();
        assert_eq!(a, b);
        recycling.recycle(b);
    }
}
