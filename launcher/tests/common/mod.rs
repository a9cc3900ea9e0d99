//! What every communicator's tests share: a group of ranks as threads around one store, and the
//! collective checks (each rank runs all four collectives on known data, then every result is compared
//! with its definition, and all-reduce bytes across ranks).

use std::time::Duration;

use infinity_launcher::comm::{gather_in_chunks, Communicator};
use infinity_launcher::store::{StoreClient, StoreServer};

/// Run `f(rank, store client)` on `world` ranks, each in a thread of its own, around a fresh store:
/// the results in rank order.
pub fn on_ranks<F, R>(world: usize, f: F) -> Vec<R>
where
    F: Fn(usize, &mut StoreClient) -> R + Send + Sync + Copy + 'static,
    R: Send + 'static,
{
    let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
    let addr = server.addr.to_string();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = StoreClient::connect(&addr, "t", &format!("r{rank}"), Duration::from_secs(10)).unwrap();
                f(rank, &mut c)
            })
        })
        .collect();
    let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(server);
    out
}

pub fn data(rank: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| ((rank * 7919 + i * 104729) % 1000) as f32 / 37.0 - 13.0).collect()
}

/// What one rank got back: all-reduce of `n` values, broadcast from the last rank, all-gather of 5,
/// reduce-scatter keeping 6, and the gathers of 5 to the last rank (whole, and 4 values at a time:
/// pieces of one value or more, split), which other ranks do not keep.
pub type Results = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, [Option<Vec<f32>>; 2]);

/// Run every collective on this rank (ends with a barrier).
pub fn run_collectives(c: &mut dyn Communicator, n: usize) -> Results {
    let (rank, world) = (c.rank(), c.world());
    let mut sum = data(rank, n);
    c.all_reduce_sum(&mut sum).unwrap();
    let mut b = if rank == world - 1 { data(99, n) } else { vec![0.0; n] };
    c.broadcast(&mut b, world - 1).unwrap();
    let mut gathered = vec![0.0; 5 * world];
    c.all_gather(&data(rank, 5), &mut gathered).unwrap();
    let mut part = vec![0.0; 6];
    c.reduce_scatter_sum(&data(rank, 6 * world), &mut part).unwrap();
    let root = world - 1;
    let kept = || (rank == root).then(|| vec![0.0; 5 * world]);
    let mut at_root = [kept(), kept()];
    c.gather(&data(rank, 5), at_root[0].as_deref_mut(), root).unwrap();
    gather_in_chunks(c, &data(rank, 5), at_root[1].as_deref_mut(), root, 4).unwrap();
    c.barrier().unwrap();
    (sum, b, gathered, part, at_root)
}

/// Every rank's results against the definitions.
pub fn check_collectives(world: usize, n: usize, results: &[Results]) {
    let close = |a: f32, e: f32| (a - e).abs() <= 1e-4 * e.abs().max(1.0);
    let expect_sum: Vec<f32> = (0..n).map(|i| (0..world).map(|r| data(r, n)[i]).sum()).collect();
    for (rank, (sum, b, gathered, part, at_root)) in results.iter().enumerate() {
        for (a, e) in sum.iter().zip(&expect_sum) {
            assert!(close(*a, *e), "world {world}: {a} vs {e}");
        }
        assert!(sum == &results[0].0, "world {world}: rank {rank} has different all-reduce bytes");
        assert_eq!(b, &data(99, n));
        let expect_g: Vec<f32> = (0..world).flat_map(|r| data(r, 5)).collect();
        assert_eq!(gathered, &expect_g);
        let kept = (rank == world - 1).then_some(&expect_g);
        assert_eq!(at_root.each_ref().map(Option::as_ref), [kept, kept], "world {world} rank {rank}: gathers");
        let full: Vec<f32> = (0..6 * world).map(|i| (0..world).map(|r| data(r, 6 * world)[i]).sum()).collect();
        for (a, e) in part.iter().zip(&full[rank * 6..(rank + 1) * 6]) {
            assert!(close(*a, *e), "world {world} rank {rank}: {a} vs {e}");
        }
    }
}
