//! The TCP ring: every collective against its definition for 2, 3 and 4 ranks (odd sizes, lengths not
//! divisible by the world), identical bytes on every rank, and a timeout instead of a hang.

use std::time::{Duration, Instant};

use infinity_launcher::comm::{CommError, Communicator, TcpRing};

mod common;

fn ring_group<F, R>(world: usize, timeout: Duration, f: F) -> Vec<R>
where
    F: Fn(TcpRing) -> R + Send + Sync + Copy + 'static,
    R: Send + 'static,
{
    common::on_ranks(world, move |rank, c| {
        f(TcpRing::connect(c, "test", rank, world, "127.0.0.1", false, timeout).unwrap())
    })
}

#[test]
fn collectives_match_their_definitions() {
    for world in [2, 3, 4] {
        let n = 1001; // not divisible by 2, 3 or 4
        let results = ring_group(world, Duration::from_secs(10), move |mut r| common::run_collectives(&mut r, n));
        common::check_collectives(world, n, &results);
    }
}

#[test]
fn a_silent_peer_is_a_timeout_not_a_hang() {
    // (built with time to spare, then a short timeout for the collective)
    let results = ring_group(2, Duration::from_secs(10), |mut r| {
        r.set_timeout(Duration::from_millis(500)).unwrap();
        if r.rank() == 1 {
            std::thread::sleep(Duration::from_secs(3)); // never joins the collective in time
            return None;
        }
        let t0 = Instant::now();
        let e = r.all_reduce_sum(&mut [1.0; 16]).unwrap_err();
        Some((e, t0.elapsed()))
    });
    let (e, took) = results[0].as_ref().unwrap();
    assert!(matches!(e, CommError::Timeout { peer: 1, .. }), "{e}");
    assert!(*took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn tiny_and_empty_buffers() {
    // fewer values than ranks leaves some chunks empty
    let results = ring_group(4, Duration::from_secs(10), |mut r| {
        let mut out = Vec::new();
        for n in [0usize, 1, 2, 3, 5] {
            let mut v: Vec<f32> = (0..n).map(|i| (r.rank() * 10 + i) as f32).collect();
            r.all_reduce_sum(&mut v).unwrap();
            out.push(v);
        }
        out
    });
    for per_rank in &results {
        for (k, n) in [0usize, 1, 2, 3, 5].iter().enumerate() {
            let expect: Vec<f32> = (0..*n).map(|i| (0..4).map(|r| (r * 10 + i) as f32).sum()).collect();
            assert_eq!(per_rank[k], expect, "n = {n}");
        }
    }
}
