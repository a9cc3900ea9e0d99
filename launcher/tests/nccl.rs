//! The NCCL communicator (feature `cuda`, gated on a device): every collective against its definition,
//! one rank per visible GPU (NCCL refuses two ranks on one device), and the watchdog turning a stall
//! into an abort. Prints what it skipped on machines without NCCL or without enough GPUs.
#![cfg(feature = "cuda")]

use std::time::{Duration, Instant};

use cudarc::driver::CudaContext;
use infinity_launcher::comm::{nccl_available, CommError, Communicator, NcclComm};
use infinity_launcher::store::{StoreClient, StoreServer};

mod common;

fn devices() -> usize {
    if !nccl_available() {
        return 0;
    }
    CudaContext::device_count().map(|n| n as usize).unwrap_or(0)
}

/// Run `f` on `world` ranks, rank r on device r, each in its own thread.
fn group<F, R>(world: usize, timeout: Duration, f: F) -> Vec<R>
where
    F: Fn(NcclComm) -> R + Send + Sync + Copy + 'static,
    R: Send + 'static,
{
    let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
    let addr = server.addr.to_string();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let ctx = CudaContext::new(rank).unwrap();
                let mut c = StoreClient::connect(&addr, "t", &format!("r{rank}"), Duration::from_secs(10)).unwrap();
                f(NcclComm::connect(&mut c, "test", rank, world, ctx.default_stream(), timeout, false).unwrap())
            })
        })
        .collect();
    let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(server);
    out
}

#[test]
fn collectives_match_their_definitions() {
    let count = devices();
    if count == 0 {
        eprintln!("skipped: no CUDA driver, NCCL library or GPU");
        return;
    }
    let worlds: Vec<usize> = [1, 2, 4].into_iter().filter(|&w| w <= count).collect();
    if count < 2 {
        eprintln!("multi-rank NCCL skipped: {count} GPU (NCCL needs one device per rank); world 1 only");
    }
    for world in worlds {
        let n = 1001;
        let results = group(world, Duration::from_secs(30), move |mut c| common::run_collectives(&mut c, n));
        common::check_collectives(world, n, &results);
        eprintln!("NCCL world {world}: all-reduce, broadcast, all-gather, reduce-scatter ok");
    }
}

#[test]
fn watchdog_aborts_a_stalled_collective() {
    if devices() < 2 {
        eprintln!("skipped: the stall drill needs 2 GPUs (found {})", devices());
        return;
    }
    let timeout = Duration::from_secs(3);
    let results = group(2, timeout, move |mut c| {
        if c.rank() == 1 {
            // rank 1 never joins the collective; it only keeps its communicator alive long enough
            std::thread::sleep(Duration::from_secs(8));
            return None;
        }
        let t = Instant::now();
        let e = c.all_reduce_sum(&mut [1.0; 64]).unwrap_err();
        Some((e, t.elapsed()))
    });
    let (e, took) = results.into_iter().flatten().next().unwrap();
    assert!(matches!(e, CommError::Stalled { .. }), "{e}");
    assert!(took >= timeout && took < timeout * 3, "aborted after {took:?} for a {timeout:?} timeout");
    eprintln!("stalled all-reduce aborted after {took:?}: {e}");
}
