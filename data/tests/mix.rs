//! Mixing joined datasets: each part drawn by its weight, in its own order, resumable across world
//! sizes; parts of other layouts and a changed mix refused.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use infinity_data::loader::{mix_state, Batch, Loader, LoaderOptions, LoaderState, MixPhase, MixState};
use infinity_data::{Checksums, Dataset};

fn opts(rank: usize, world: usize, workers: usize, weights: Option<Vec<f64>>) -> LoaderOptions {
    common::loader_options(8, (rank, world), workers, weights)
}

/// `steps` global batches as `(part, ids of all ranks in rank order)`, from `state` on; and the state
/// afterwards.
fn run(
    ds: &Arc<Dataset>,
    world: usize,
    workers: usize,
    weights: &Option<Vec<f64>>,
    state: Option<LoaderState>,
    steps: usize,
) -> (Vec<(u16, Vec<u64>)>, LoaderState) {
    let mut loaders: Vec<Loader> = (0..world)
        .map(|r| Loader::new(ds.clone(), opts(r, world, workers, weights.clone()), state.clone()).unwrap())
        .collect();
    let mut out = Vec::new();
    for _ in 0..steps {
        let parts: Vec<Batch> = loaders.iter_mut().map(|l| l.next_batch().unwrap()).collect();
        assert!(parts.iter().all(|p| p.part == parts[0].part && p.bucket == parts[0].bucket));
        out.push((parts[0].part, parts.iter().flat_map(|p| p.ids.clone()).collect()));
    }
    (out, loaders[0].state())
}

#[test]
fn parts_are_drawn_by_weight_each_in_its_own_order() {
    let (_dirs, a, b) = common::two_parts();
    let alone = Arc::new(Dataset::open(a.dir(), Checksums::Verify).unwrap());
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    assert_eq!(ds.num_rows(), 208);
    assert_eq!(ds.parts().iter().map(|p| p.rows.clone()).collect::<Vec<_>>(), [0..160, 160..208]);
    // ~19 and ~5 batches per epoch of their own (rows left over per bucket); equal weights split the 24
    let natural = mix_state(&ds, 8, None, &[]).unwrap().unwrap().batches_per_epoch;
    let weights = Some(vec![1.0, 1.0]);
    let quotas = mix_state(&ds, 8, weights.as_deref(), &[]).unwrap().unwrap().batches_per_epoch;
    let per_epoch: u64 = natural.iter().sum();
    assert_eq!(quotas.iter().sum::<u64>(), per_epoch);
    assert!(quotas[0].abs_diff(quotas[1]) <= 1 && natural[1] < quotas[1], "{natural:?} → {quotas:?}");

    let epochs = 3;
    let (batches, state) = run(&ds, 1, 0, &weights, None, (epochs * per_epoch) as usize);
    let mix = state.mix.unwrap();
    assert_eq!((mix.batches_per_epoch, mix.weights), (quotas.clone(), weights.clone()));
    for e in 0..epochs as usize {
        let window = &batches[e * per_epoch as usize..(e + 1) * per_epoch as usize];
        let counts = [0, 1].map(|p| window.iter().filter(|(q, _)| *q == p).count() as u64);
        assert_eq!(counts[..], quotas[..], "mixed epoch {e} gives each part its quota");
    }
    // every batch is its part's rows; each part goes through all its rows before any repeats
    for (p, (lo, natural)) in [(1000u64, natural[0]), (5000, natural[1])].into_iter().enumerate() {
        let stream: Vec<&Vec<u64>> = batches.iter().filter(|(q, _)| *q as usize == p).map(|(_, ids)| ids).collect();
        assert!(stream.iter().flat_map(|ids| ids.iter()).all(|id| (lo..lo + 1000).contains(id)));
        for epoch in stream.chunks(natural as usize) {
            let mut seen = HashSet::new();
            assert!(epoch.iter().flat_map(|ids| ids.iter()).all(|id| seen.insert(*id)), "part {p}: a row twice");
        }
    }
    // part 0 is drawn in the order it has alone: adding a dataset does not reshuffle the first
    let first: Vec<Vec<u64>> = batches.iter().filter(|(q, _)| *q == 0).map(|(_, ids)| ids.clone()).collect();
    let mut l = Loader::new(alone, opts(0, 1, 0, None), None).unwrap();
    let by_itself: Vec<Vec<u64>> = (0..first.len()).map(|_| l.next_batch().unwrap().ids).collect();
    assert_eq!(first, by_itself);

    // no weights: the datasets concatenated, every row once an epoch
    let (batches, _) = run(&ds, 1, 0, &None, None, per_epoch as usize);
    let mut seen = HashSet::new();
    assert!(batches.iter().flat_map(|(_, ids)| ids.iter()).all(|id| seen.insert(*id)));
    assert!(seen.len() as u64 > 208 - 2 * 2 * 8, "rows left over: at most G - 1 per bucket and part");
}

#[test]
fn a_mix_resumes_sample_exactly_while_the_world_size_changes() {
    let (_dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    let weights = Some(vec![0.3, 0.7]);
    let (reference, _) = run(&ds, 1, 0, &weights, None, 60);
    let mut got = Vec::new();
    let mut state = None;
    for (world, workers, steps) in [(1, 0, 9), (2, 2, 17), (4, 1, 13), (2, 0, 21)] {
        let (b, s) = run(&ds, world, workers, &weights, state, steps);
        state = Some(serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap());
        got.extend(b);
    }
    assert_eq!(got, reference);
}

/// A dataset of the mix rewritten with more rows (`--accept-data-change`): its batches per mixed epoch
/// change from the position on, and the batches before keep the datasets they were drawn from, so the
/// one that did not change goes on in its own order with its next batch, none skipped or drawn again.
#[test]
fn a_changed_dataset_leaves_the_others_of_the_mix_where_they_were() {
    let (dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    let weights = Some(vec![1.0, 1.0]);
    let own = |batches: &[(u16, Vec<u64>)]| -> Vec<Vec<u64>> {
        batches.iter().filter(|(p, _)| *p == 0).map(|(_, ids)| ids.clone()).collect()
    };
    let (whole, _) = run(&ds, 1, 0, &weights, None, 80);
    let (before, state) = run(&ds, 1, 0, &weights, None, 10);
    // `b` grown from 48 rows to 80, the position moved to it as `--accept-data-change` moves it
    common::write_random_from(dirs[1].path(), 80, 9, 5000);
    let open = |d: &tempfile::TempDir| Dataset::open(d.path(), Checksums::Verify).unwrap();
    let grown = Arc::new(Dataset::join(vec![open(&dirs[0]), open(&dirs[1])]).unwrap());
    let now = mix_state(&grown, 8, weights.as_deref(), &[]).unwrap().unwrap();
    let saved = state.mix.as_ref().unwrap();
    assert_ne!(now.batches_per_epoch, saved.batches_per_epoch, "b's share of a mixed epoch grows");
    assert_eq!(saved.drawn.len(), 1, "{saved:?}");
    let mut moved = state.moved_to(&grown).unwrap();
    moved.mix = Some(MixState { drawn: saved.drawn.clone(), ..now.clone() });
    let (after, end) = run(&grown, 1, 0, &weights, Some(moved.clone()), 30);
    let drawn_a = own(&[before, after.clone()].concat());
    assert!(drawn_a.len() > own(&whole[..10]).len());
    assert_eq!(drawn_a[..], own(&whole)[..drawn_a.len()], "a's own order, from where it was");
    // the position records what it drew with: the first quotas to batch 10, the new ones from there
    let spans: Vec<(u64, Vec<u64>)> =
        end.mix.unwrap().drawn.into_iter().map(|d| (d.from, d.batches_per_epoch)).collect();
    assert_eq!(spans, [(0, saved.batches_per_epoch.clone()), (10, now.batches_per_epoch)]);
    // a record edited by hand is named, not a panic
    for bad in
        [vec![(1, vec![3, 3])], vec![(0, vec![3])], vec![(0, vec![0, 0])], vec![(0, vec![3, 3]), (0, vec![2, 2])]]
    {
        let drawn = bad
            .into_iter()
            .map(|(from, batches_per_epoch)| infinity_data::loader::DrawnSpan { from, batches_per_epoch });
        let mut edited = moved.clone();
        edited.mix.as_mut().unwrap().drawn = drawn.collect();
        let e = Loader::new(grown.clone(), opts(0, 1, 0, weights.clone()), Some(edited)).err().unwrap().to_string();
        assert!(
            e.contains("the saved position's mix.drawn[") && e.contains("(a position edited by hand, or damaged)"),
            "{e}"
        );
    }
    // resumed again later, it draws as it did
    let (first, mid) = run(&grown, 1, 0, &weights, Some(moved), 17);
    let (rest, _) = run(&grown, 1, 0, &weights, Some(mid), 13);
    assert_eq!([first, rest].concat(), after);
}

#[test]
fn a_changed_mix_and_parts_of_another_layout_are_refused() {
    let (dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    let (_, s) = run(&ds, 1, 0, &Some(vec![1.0, 1.0]), None, 3);
    // (the parts' bucket lists end to end are the whole's)
    assert_eq!(s.same_buckets(&ds), Some(true));
    let e = Loader::new(ds.clone(), opts(0, 1, 0, Some(vec![1.0, 2.0])), Some(s.clone())).err().unwrap().to_string();
    assert!(
        e.contains(
            "the mix's weights drawn before batch 3 (data.weight, data.mix) [1.0, 1.0], this run has [1.0, 2.0]"
        ) && e.contains("data.mix"),
        "{e}"
    );
    // the same shares, rescaled: the same samples
    let mut l = Loader::new(ds.clone(), opts(0, 1, 0, Some(vec![2.0, 2.0])), Some(s.clone())).unwrap();
    l.next_batch().unwrap();
    assert_eq!(l.state().mix.unwrap().weights, Some(vec![2.0, 2.0]), "the position takes this run's weights");
    // one dataset's position on a mix: the joined dataset is another one
    let alone = Arc::new(Dataset::open(dirs[0].path(), Checksums::Verify).unwrap());
    let e = Loader::new(alone, opts(0, 1, 0, None), Some(s)).err().unwrap().to_string();
    assert!(e.contains("the saved position has data.mix: a mix of 2 datasets, this run has one dataset"), "{e}");
    let e = Loader::new(ds.clone(), opts(0, 1, 0, Some(vec![1.0])), None).err().unwrap().to_string();
    assert!(e.contains("mixing 2 datasets with 1 weights"), "{e}");

    let open = |i: usize| Dataset::open(dirs[i].path(), Checksums::Verify).unwrap();
    let mut other = open(1);
    other.manifest.d += 1;
    let e = Dataset::join(vec![open(0), other]).err().unwrap().to_string();
    let b = dirs[1].path().display().to_string();
    assert!(
        e.starts_with(&format!("{b}: cannot be mixed with")) && e.contains("d = 13 in this one, 12 in the first"),
        "{e}"
    );
    let mut other = open(1);
    other.manifest.schedules.pop();
    let e = Dataset::join(vec![open(0), other]).err().unwrap().to_string();
    assert!(e.contains("the scale schedules"), "{e}");
    let mut other = open(1);
    other.manifest.latent = None;
    let e = Dataset::join(vec![open(0), other]).err().unwrap().to_string();
    assert!(e.contains("the columns are [id, bucket, bits, class_label"), "{e}");
    // captions: another encoder, or a longer bound than the first's (the model's); a shorter one mixes
    let mut other = open(1);
    other.manifest.conditions.text.as_mut().unwrap().encoder = "t5".into();
    let e = Dataset::join(vec![open(0), other]).err().unwrap().to_string();
    assert!(
        e.contains("the text embeddings are width 6, bf16, by `t5` in this one, width 6, bf16, by `test` in the first"),
        "{e}"
    );
    let mut other = open(1);
    other.manifest.conditions.text.as_mut().unwrap().max_tokens += 1;
    let e = Dataset::join(vec![open(0), other]).err().unwrap().to_string();
    assert!(e.contains("captions of up to 6 tokens in this one, 5 tokens in the first"), "{e}");
    let mut first = open(0);
    first.manifest.conditions.text.as_mut().unwrap().max_tokens += 1;
    Dataset::join(vec![first, open(1)]).unwrap();
}

/// Short captions are optional per row: a dataset without any mixes with one that has them, its rows
/// read as rows without one (their long caption), whichever comes first.
#[test]
fn a_dataset_without_short_captions_mixes_with_one_that_has_them() {
    let (with, without) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_random_with(with.path(), (64, 3, 1000), true);
    common::write_random_with(without.path(), (64, 4, 5000), false);
    let open = |d: &tempfile::TempDir| Dataset::open(d.path(), Checksums::Verify).unwrap();
    for order in [[&without, &with], [&with, &without]] {
        let ds = Arc::new(Dataset::join(vec![open(order[0]), open(order[1])]).unwrap());
        assert!(ds.manifest.conditions.text.as_ref().unwrap().short_caption, "the joined dataset has them");
        let mut l = Loader::new(ds.clone(), opts(0, 1, 0, Some(vec![1.0, 1.0])), None).unwrap();
        let mut seen = [false, false];
        for _ in 0..12 {
            let b = l.next_batch().unwrap();
            let cu = b.text_short_cu_seqlens.as_ref().expect("short captions in every batch");
            let short_tokens = *cu.last().unwrap();
            let part_has_short = std::ptr::eq(order[b.part as usize], &with);
            // (the rows of the part without: no tokens; of the other, three in four rows have some)
            assert_eq!(short_tokens > 0, part_has_short, "part {} of {order:?}", b.part);
            seen[b.part as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }
}

/// `opts` with phases: `(from, weights)`.
fn phased(rank: usize, world: usize, workers: usize, phases: &[(u64, [f64; 2])]) -> LoaderOptions {
    let mut o = opts(rank, world, workers, Some(vec![1.0, 1.0]));
    o.mix_phases = phases.iter().map(|&(from, w)| MixPhase { from, weights: w.to_vec() }).collect();
    o
}

/// Global batches as `(part, ids)` and the position after them.
type Drawn = (Vec<(u16, Vec<u64>)>, LoaderState);

/// `steps` global batches of a phased mix from `state` on, as [`run`].
fn run_phased(
    ds: &Arc<Dataset>,
    (world, workers): (usize, usize),
    phases: &[(u64, [f64; 2])],
    state: Option<LoaderState>,
    steps: usize,
) -> Result<Drawn, String> {
    let mut loaders = Vec::new();
    for r in 0..world {
        loaders.push(
            Loader::new(ds.clone(), phased(r, world, workers, phases), state.clone()).map_err(|e| e.to_string())?,
        );
    }
    let mut out = Vec::new();
    for _ in 0..steps {
        let parts: Vec<Batch> = loaders.iter_mut().map(|l| l.next_batch().unwrap()).collect();
        out.push((parts[0].part, parts.iter().flat_map(|p| p.ids.clone()).collect()));
    }
    Ok((out, loaders[0].state()))
}

#[test]
fn a_phase_reweighs_the_mix_from_its_batch_and_resumes_across_it() {
    let (_dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    let natural = mix_state(&ds, 8, None, &[]).unwrap().unwrap().batches_per_epoch;
    // from batch 10 on, part 1 alone (an annealing phase on the second dataset)
    let anneal = [(10, [0.0, 1.0])];
    let (plain, _) = run(&ds, 1, 0, &Some(vec![1.0, 1.0]), None, 10);
    let (batches, state) = run_phased(&ds, (1, 0), &anneal, None, 30).unwrap();
    assert_eq!(batches[..10], plain[..], "before the phase, as without it");
    assert!(batches[10..].iter().all(|(p, _)| *p == 1), "from the phase on, part 1 alone");
    let recorded = &state.mix.as_ref().unwrap().phases;
    assert_eq!((recorded.len(), recorded[0].from, recorded[0].batches_per_epoch[0]), (1, 10, 0));
    // part 1 goes on in its stream where the first phase left it: no row twice within its epochs
    let stream: Vec<&Vec<u64>> = batches.iter().filter(|(q, _)| *q == 1).map(|(_, ids)| ids).collect();
    for epoch in stream.chunks(natural[1] as usize) {
        let mut seen = HashSet::new();
        assert!(epoch.iter().flat_map(|ids| ids.iter()).all(|id| seen.insert(*id)), "part 1: a row twice");
    }

    // resumed across the phase's start while the world size changes: the same batches
    let mut got = Vec::new();
    let mut state = None;
    for (world, workers, steps) in [(1, 0, 7), (2, 2, 8), (4, 1, 15)] {
        let (b, s) = run_phased(&ds, (world, workers), &anneal, state, steps).unwrap();
        state = Some(serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap());
        got.extend(b);
    }
    assert_eq!(got, batches);

    // a phase not begun yet may change; one begun may not
    let (_, at7) = run_phased(&ds, (1, 0), &anneal, None, 7).unwrap();
    let (later, _) = run_phased(&ds, (1, 0), &[(12, [0.0, 1.0])], Some(at7.clone()), 8).unwrap();
    assert_eq!(later[..3], plain[7..10], "the first phase goes on to the new start");
    run_phased(&ds, (1, 0), &[], Some(at7), 1).unwrap();
    let (_, at12) = run_phased(&ds, (1, 0), &anneal, None, 12).unwrap();
    run_phased(&ds, (1, 0), &[(10, [0.0, 3.0])], Some(at12.clone()), 1).expect("the same shares");
    let e = run_phased(&ds, (1, 0), &[(11, [0.0, 1.0])], Some(at12.clone()), 1).unwrap_err();
    assert!(
        e.contains(
            "the mix's weights drawn before batch 12 (data.weight, data.mix, data.phases) [1.0, 1.0], from batch 10: \
                    [0.0, 1.0], this run has [1.0, 1.0], from batch 11: [0.0, 1.0]"
        ),
        "{e}"
    );
    let e = run_phased(&ds, (1, 0), &[], Some(at12), 1).unwrap_err();
    assert!(e.contains("from batch 10: [0.0, 1.0], this run has [1.0, 1.0] ("), "{e}");

    // phases out of order, or of the wrong length, named
    let e = run_phased(&ds, (1, 0), &[(0, [1.0, 0.0])], None, 1).unwrap_err();
    assert!(e.contains("data.phases[0] starts at global batch 0: the phases must start after batch 0"), "{e}");
    let e = run_phased(&ds, (1, 0), &[(5, [1.0, 0.0]), (5, [0.0, 1.0])], None, 1).unwrap_err();
    assert!(e.contains("data.phases[1] starts at global batch 5"), "{e}");
    let mut o = phased(0, 1, 0, &[]);
    o.mix_phases = vec![MixPhase { from: 4, weights: vec![1.0] }];
    let e = Loader::new(ds.clone(), o, None).err().unwrap().to_string();
    assert!(e.contains("mixing 2 datasets with 1 weights"), "{e}");
    let alone = Arc::new(Dataset::open(ds.parts()[0].dir.as_path(), Checksums::Verify).unwrap());
    let e = Loader::new(alone, phased(0, 1, 0, &anneal), None).err().unwrap().to_string();
    assert!(e.contains("a mix's phase from global batch 10: one dataset has no mix to change"), "{e}");
}
