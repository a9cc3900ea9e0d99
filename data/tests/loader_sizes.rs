//! A global batch size changed at a resume: the rest of the epoch drawn once at the new size, the
//! epochs after as a run of that size draws them, and a resume after the change (on any number of
//! ranks) draws what the run would have drawn.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{open, opts, run_world};
use infinity_data::loader::{EarlierSize, Loader, LoaderState};
use infinity_data::Dataset;

/// The batches of one rank of one at size `g` from `state` on, as `(epoch, ids)`, until `stop` says
/// so of the next batch (which is not taken); the state after the last taken.
fn draw_until(
    ds: &Arc<Dataset>,
    g: usize,
    state: Option<LoaderState>,
    stop: impl Fn(usize, u64) -> bool,
) -> (Vec<(u64, Vec<u64>)>, LoaderState) {
    let mut l = Loader::new(ds.clone(), opts(g, 0, 1, 0), state).unwrap();
    let mut out = Vec::new();
    loop {
        let before = l.state();
        let b = l.next_batch().unwrap();
        if stop(out.len(), b.epoch) {
            return (out, before);
        }
        out.push((b.epoch, b.ids.clone()));
    }
}

/// The state after `n` batches at size `g` from `state` (one rank).
fn after(ds: &Arc<Dataset>, g: usize, state: Option<LoaderState>, n: usize) -> LoaderState {
    draw_until(ds, g, state, |k, _| k == n).1
}

/// Every row of `batches` once, and fewer than `g` rows of each bucket not among them.
fn once_each_but_less_than_a_batch_per_bucket(ds: &Dataset, batches: &[Vec<u64>], g: usize) {
    let mut seen = HashSet::new();
    for id in batches.iter().flatten() {
        assert!(seen.insert(*id), "row {id} drawn twice in one epoch");
    }
    let mut undrawn: HashMap<u16, usize> = HashMap::new();
    for r in 0..ds.num_rows() {
        if !seen.contains(&(r + 1000)) {
            *undrawn.entry(ds.row(r).bucket).or_default() += 1;
        }
    }
    assert!(undrawn.values().all(|&n| n < g), "rows left undrawn by bucket: {undrawn:?} (size {g})");
}

#[test]
fn the_epoch_a_size_changed_in_draws_each_row_once_and_the_next_as_the_new_size_does() {
    let (_d, ds) = open(203);
    let state = after(&ds, 8, None, 7);
    let (batches, end) = draw_until(&ds, 12, Some(state.clone()), |_, epoch| epoch > 1);
    assert_eq!(end.global_batch, 12);
    assert_eq!(end.earlier_sizes, [EarlierSize { global_batch: 8, until: 7 }]);
    let (ours, next): (Vec<_>, Vec<_>) = batches.into_iter().partition(|(epoch, _)| *epoch == 0);
    assert!(ours.iter().all(|(_, ids)| ids.len() == 12));
    let first_seven = draw_until(&ds, 8, None, |k, _| k == 7).0;
    let epoch0: Vec<Vec<u64>> = first_seven.into_iter().chain(ours).map(|(_, ids)| ids).collect();
    once_each_but_less_than_a_batch_per_bucket(&ds, &epoch0, 12);
    // epoch 1 is the one a run at 12 from the start draws
    let fresh = draw_until(&ds, 12, None, |_, epoch| epoch > 1).0;
    let fresh1: Vec<_> = fresh.into_iter().filter(|(epoch, _)| *epoch == 1).collect();
    assert!(!fresh1.is_empty());
    assert_eq!(next, fresh1);
}

#[test]
fn a_resume_after_a_change_draws_what_the_run_would_have_on_other_world_sizes() {
    let (_d, ds) = open(203);
    let changed = after(&ds, 8, None, 7);
    // reference: one rank at 12 for 40 batches (over two epoch boundaries: 203 rows / 12 ≈ 16 an epoch)
    let (reference, _) = run_world(&ds, 12, 1, 0, Some(changed.clone()), 40);
    let (mut got, s) = run_world(&ds, 12, 2, 0, Some(changed), 9);
    // (the position survives a JSON round trip, as it does in a checkpoint)
    let s: LoaderState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(s.earlier_sizes, [EarlierSize { global_batch: 8, until: 7 }]);
    let (rest, _) = run_world(&ds, 12, 4, 2, Some(s), 31);
    got.extend(rest);
    assert_eq!(got, reference);
}

#[test]
fn two_changes_in_one_epoch_still_draw_each_row_once_and_one_undone_before_a_step_changes_nothing() {
    let (_d, ds) = open(203);
    let at8 = after(&ds, 8, None, 5);
    let at12 = after(&ds, 12, Some(at8.clone()), 4);
    let (rest, _) = draw_until(&ds, 4, Some(at12.clone()), |_, epoch| epoch > 0);
    let mut epoch0: Vec<Vec<u64>> = draw_until(&ds, 8, None, |k, _| k == 5).0.into_iter().map(|b| b.1).collect();
    epoch0.extend(draw_until(&ds, 12, Some(at8.clone()), |k, _| k == 4).0.into_iter().map(|b| b.1));
    epoch0.extend(rest.into_iter().map(|b| b.1));
    once_each_but_less_than_a_batch_per_bucket(&ds, &epoch0, 4);
    let s = Loader::new(ds.clone(), opts(4, 0, 1, 0), Some(at12)).unwrap().state();
    let sizes = |g: &[(usize, u64)]| {
        g.iter().map(|&(global_batch, until)| EarlierSize { global_batch, until }).collect::<Vec<_>>()
    };
    assert_eq!(s.earlier_sizes, sizes(&[(8, 5), (12, 9)]));

    // to 12 and back to 8 before a step: the stream a run at 8 draws throughout
    let to12 = Loader::new(ds.clone(), opts(12, 0, 1, 0), Some(at8.clone())).unwrap().state();
    assert_eq!(to12.earlier_sizes, sizes(&[(8, 5)]));
    let back = Loader::new(ds.clone(), opts(8, 0, 1, 0), Some(to12)).unwrap().state();
    assert_eq!(back, at8);
}

#[test]
fn a_change_at_an_epoch_boundary_starts_the_epoch_as_the_new_size_does() {
    let (_d, ds) = open(160);
    let per_epoch = Loader::new(ds.clone(), opts(8, 0, 1, 0), None).unwrap().batches_per_epoch() as usize;
    let state = after(&ds, 8, None, per_epoch);
    let (ours, _) = draw_until(&ds, 16, Some(state), |_, epoch| epoch > 1);
    let fresh: Vec<_> = draw_until(&ds, 16, None, |_, epoch| epoch > 1).0.into_iter().filter(|b| b.0 == 1).collect();
    assert_eq!(ours, fresh);
}

/// A change that leaves less than a batch of the new size in every bucket of the epoch goes on with the
/// next epoch, as the new size draws it.
#[test]
fn a_change_that_leaves_no_batch_of_the_new_size_goes_on_with_the_next_epoch() {
    let (_d, ds) = open(203);
    let per_epoch = Loader::new(ds.clone(), opts(8, 0, 1, 0), None).unwrap().batches_per_epoch() as usize;
    // (one batch of 8 left, with each bucket's fewer than 8 left over: under 16 in every bucket)
    let state = after(&ds, 8, None, per_epoch - 1);
    let (ours, _) = draw_until(&ds, 16, Some(state), |_, epoch| epoch > 1);
    assert_eq!(ours[0].0, 1, "the first batch at 16 is of the next epoch");
    let fresh: Vec<_> = draw_until(&ds, 16, None, |_, epoch| epoch > 1).0.into_iter().filter(|b| b.0 == 1).collect();
    assert_eq!(ours, fresh);
}

#[test]
fn a_damaged_record_of_the_sizes_is_refused() {
    let (_d, ds) = open(64);
    let s = after(&ds, 8, None, 3);
    let with = |earlier: &[(usize, u64)], g: usize| LoaderState {
        earlier_sizes: earlier.iter().map(|&(global_batch, until)| EarlierSize { global_batch, until }).collect(),
        global_batch: g,
        ..s.clone()
    };
    let refusal =
        |state: LoaderState| Loader::new(ds.clone(), opts(8, 0, 1, 0), Some(state)).err().unwrap().to_string();
    for (bad, why) in [((16, 4), "until 4"), ((0, 2), "global_batch 0"), ((16, 0), "until 0"), ((8, 2), "the next (8)")]
    {
        let e = refusal(with(&[bad], 8));
        assert!(e.contains("earlier_sizes[0]") && e.contains(why) && e.contains("batches done (3)"), "{e}");
        assert!(e.contains("edited by hand, or damaged"), "{e}");
    }
    let e = refusal(with(&[], 0));
    assert!(e.contains("global_batch is 0"), "{e}");
    // a size the dataset has no batch of
    let e = refusal(with(&[(1000, 2)], 8));
    assert!(e.contains("global batches of 1000 rows (earlier_sizes[0])") && e.contains("has no full one"), "{e}");
}
