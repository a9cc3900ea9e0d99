//! A mix whose global batch a resume changed: each dataset's epoch goes on at the new size (no row
//! twice before all were drawn), its share of the batches at the new size's quotas, and a resume after
//! the change (on any number of ranks) draws what the run would have drawn.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use infinity_data::loader::{Batch, Loader, LoaderOptions, LoaderState, MixPhase};
use infinity_data::Dataset;

fn opts(g: usize, (rank, world): (usize, usize), phases: &[(u64, [f64; 2])]) -> LoaderOptions {
    let mut o = common::loader_options(g, (rank, world), 1, Some(vec![3.0, 1.0]));
    o.mix_phases = phases.iter().map(|&(from, w)| MixPhase { from, weights: w.to_vec() }).collect();
    o
}

/// `steps` global batches at size `g` on `world` ranks from `state`, as `(part, ids of all ranks)`,
/// and the position after them.
fn draw(
    ds: &Arc<Dataset>,
    (g, world): (usize, usize),
    phases: &[(u64, [f64; 2])],
    state: Option<LoaderState>,
    steps: usize,
) -> (Vec<(u16, Vec<u64>)>, LoaderState) {
    let mut loaders: Vec<Loader> =
        (0..world).map(|r| Loader::new(ds.clone(), opts(g, (r, world), phases), state.clone()).unwrap()).collect();
    let mut out = Vec::new();
    for _ in 0..steps {
        let parts: Vec<Batch> = loaders.iter_mut().map(|l| l.next_batch().unwrap()).collect();
        assert!(parts.iter().all(|p| p.part == parts[0].part && p.len() == g / world));
        out.push((parts[0].part, parts.iter().flat_map(|p| p.ids.clone()).collect()));
    }
    let s: LoaderState = serde_json::from_str(&serde_json::to_string(&loaders[0].state()).unwrap()).unwrap();
    (out, s)
}

/// Of each dataset's rows in the order drawn, none repeats while a bucket of it has `g` or more rows
/// not yet drawn (its epoch is not over).
fn no_row_twice_within_an_epoch(ds: &Dataset, batches: &[(u16, Vec<u64>)], g: usize) {
    for (p, part) in ds.parts().iter().enumerate() {
        let mut seen = HashSet::new();
        let rows = batches.iter().filter(|b| b.0 as usize == p).flat_map(|b| b.1.iter());
        let Some(again) = rows.copied().find(|id| !seen.insert(*id)) else { continue };
        let mut undrawn: HashMap<u16, usize> = HashMap::new();
        for r in part.rows.clone() {
            let row = ds.row(r);
            if !seen.contains(&row.id) {
                *undrawn.entry(row.bucket).or_default() += 1;
            }
        }
        assert!(undrawn.values().all(|&n| n < g), "part {p}: row {again} again with {undrawn:?} undrawn by bucket");
    }
}

#[test]
fn a_mix_goes_on_at_a_new_size_and_resumes_exactly_on_other_world_sizes() {
    let (_dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    let (before, at5) = draw(&ds, (8, 1), &[], None, 5);
    // reference: 12 from batch 5 on, past the end of each dataset's first epoch
    let (after, end) = draw(&ds, (12, 1), &[], Some(at5.clone()), 30);
    assert_eq!(end.earlier_sizes.len(), 1);
    assert!(after.iter().any(|b| b.0 == 0) && after.iter().any(|b| b.0 == 1));
    let all: Vec<(u16, Vec<u64>)> = before.iter().cloned().chain(after.iter().cloned()).collect();
    no_row_twice_within_an_epoch(&ds, &all, 12);
    // the same after a resume on 2 ranks, then on 4
    let (mut got, s) = draw(&ds, (12, 2), &[], Some(at5), 11);
    got.extend(draw(&ds, (12, 4), &[], Some(s), 19).0);
    assert_eq!(got, after);
    // A weighted 3 to B's 1: about three of every four batches are A's at either size
    let share = |bs: &[(u16, Vec<u64>)]| bs.iter().filter(|b| b.0 == 0).count() as f64 / bs.len() as f64;
    assert!((0.55..0.95).contains(&share(&after)), "{}", share(&after));
}

#[test]
fn a_phase_after_a_change_draws_at_the_new_size_and_one_before_it_stays() {
    let (_dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    // a phase from batch 3 (begun before the change at 6) and one from 12 (after it)
    let phases = [(3, [1.0, 1.0]), (12, [0.0, 1.0])];
    let (_, at6) = draw(&ds, (8, 1), &phases, None, 6);
    let (after, _) = draw(&ds, (16, 1), &phases, Some(at6.clone()), 20);
    // from batch 12 only B (weight 0 for A)
    assert!(after[6..].iter().all(|b| b.0 == 1), "{:?}", after.iter().map(|b| b.0).collect::<Vec<_>>());
    let (mut got, s) = draw(&ds, (16, 2), &phases, Some(at6), 7);
    got.extend(draw(&ds, (16, 1), &phases, Some(s), 13).0);
    assert_eq!(got, after);
}

/// A dataset weighted 0 until a phase draws nothing at the first size (its stream changes size before
/// its first batch), and two changes in a row: each dataset still draws each row once an epoch, and a
/// resume between the changes draws what the run would have drawn.
#[test]
fn a_dataset_not_drawn_at_a_size_and_two_changes_resume_exactly() {
    let (_dirs, a, b) = common::two_parts();
    let ds = Arc::new(Dataset::join(vec![a, b]).unwrap());
    let opts = |g: usize, (rank, world): (usize, usize)| {
        let mut o = common::loader_options(g, (rank, world), 1, Some(vec![1.0, 0.0]));
        o.mix_phases = vec![MixPhase { from: 8, weights: vec![1.0, 1.0] }];
        o
    };
    let draw = |g: usize, world: usize, state: Option<LoaderState>, steps: usize| {
        let mut loaders: Vec<Loader> =
            (0..world).map(|r| Loader::new(ds.clone(), opts(g, (r, world)), state.clone()).unwrap()).collect();
        let got: Vec<(u16, Vec<u64>)> = (0..steps)
            .map(|_| {
                let parts: Vec<Batch> = loaders.iter_mut().map(|l| l.next_batch().unwrap()).collect();
                (parts[0].part, parts.iter().flat_map(|p| p.ids.clone()).collect())
            })
            .collect();
        (got, loaders[0].state())
    };
    let (first, at5) = draw(8, 1, None, 5);
    assert!(first.iter().all(|b| b.0 == 0), "B weighs 0 before batch 8");
    let (middle, at10) = draw(12, 1, Some(at5.clone()), 5);
    let (last, _) = draw(4, 1, Some(at10.clone()), 30);
    assert_eq!(at10.earlier_sizes.len(), 1);
    let all: Vec<(u16, Vec<u64>)> = first.iter().chain(&middle).chain(&last).cloned().collect();
    assert!(all.iter().any(|b| b.0 == 1), "B drawn from its phase on");
    no_row_twice_within_an_epoch(&ds, &all, 12);
    // the same with the second change resumed on 2 ranks, then on 4
    let (mut got, s) = draw(4, 2, Some(at10), 12);
    got.extend(draw(4, 4, Some(s), 18).0);
    assert_eq!(got, last);
}
