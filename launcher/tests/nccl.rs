//! The NCCL communicator (feature `cuda`, gated on a device): every collective against its definition,
//! one rank per visible GPU (NCCL refuses two ranks on one device), and the watchdog turning a stall
//! into an abort: on one GPU (a collective queued behind a kernel that holds the stream) and on two (a
//! rank that never joins); and unique ids that never repeat. Prints what it skipped on machines
//! without NCCL or without enough GPUs.
#![cfg(feature = "cuda")]

use std::time::{Duration, Instant};

use cudarc::driver::CudaContext;
use infinity_launcher::comm::flight::{self, State};
use infinity_launcher::comm::{nccl_available, CommError, Communicator, NcclComm};
use infinity_launcher::store::{StoreClient, StoreServer};

mod common;

fn devices() -> usize {
    if !nccl_available() {
        return 0;
    }
    CudaContext::device_count().map(|n| n as usize).unwrap_or(0)
}

/// The number of GPUs, or none after saying the test is skipped.
fn devices_or_skip() -> Option<usize> {
    let count = devices();
    if count == 0 {
        eprintln!("skipped: no CUDA driver, NCCL library or GPU");
    }
    (count > 0).then_some(count)
}

/// Run `f` on `world` ranks, rank r on device r, each in its own thread and on a stream of its own:
/// tests run at once, and two groups whose collectives met on one device's default stream in opposite
/// orders on two devices would wait on each other (a deadlock a GPU would have too).
fn group<F, R>(world: usize, timeout: Duration, f: F) -> Vec<R>
where
    F: Fn(NcclComm) -> R + Send + Sync + Copy + 'static,
    R: Send + 'static,
{
    common::on_ranks(world, move |rank, c| {
        let ctx = CudaContext::new(rank).unwrap();
        f(NcclComm::connect(c, "test", rank, world, ctx.new_stream().unwrap(), timeout, false).unwrap())
    })
}

#[test]
fn collectives_match_their_definitions() {
    let Some(count) = devices_or_skip() else { return };
    let worlds: Vec<usize> = [1, 2, 4].into_iter().filter(|&w| w <= count).collect();
    if count < 2 {
        eprintln!("partly skipped: world 1 only, {count} GPU (multi-rank NCCL needs one device per rank)");
    }
    for world in worlds {
        let n = 1001;
        let results = group(world, Duration::from_secs(30), move |mut c| common::run_collectives(&mut c, n));
        common::check_collectives(world, n, &results);
        // host values staged through the device in chunks shorter than every buffer (as a checkpoint's
        // gathers of a large model's shards are): 3 values at a time, a gather's parts split
        let results = group(world, Duration::from_secs(30), move |mut c| {
            c.set_host_chunk(3);
            let results = common::run_collectives(&mut c, 7);
            // each chunk's line in the flight record carries the caller's tag
            c.flight().unwrap().tag_next("the test's gather");
            let mut gathered = vec![0.0; 5 * c.world()];
            c.all_gather(&[1.0; 5], &mut gathered).unwrap();
            let entries = c.flight().unwrap().snapshot("test").entries;
            let tags: Vec<Option<String>> = entries.into_iter().map(|e| e.tag).collect();
            (results, tags)
        });
        let chunks = 5usize.div_ceil((3 / world).max(1));
        for (_, tags) in &results {
            let last = &tags[tags.len() - chunks..];
            assert!(last.iter().all(|t| t.as_deref() == Some("the test's gather")), "world {world}: {tags:?}");
            assert_ne!(tags[tags.len() - chunks - 1].as_deref(), Some("the test's gather"));
        }
        let results: Vec<_> = results.into_iter().map(|r| r.0).collect();
        common::check_collectives(world, 7, &results);
        eprintln!("NCCL world {world}: all-reduce, broadcast, all-gather, reduce-scatter ok (whole and in chunks)");
    }
}

/// The in-place all-gather (ZeRO-1's parameters): each rank's part, written where it lands, reaches
/// every rank; the other parts' old values are overwritten.
#[test]
fn in_place_all_gather_matches_its_definition() {
    let Some(count) = devices_or_skip() else { return };
    for world in [1, 2, 4].into_iter().filter(|&w| w <= count) {
        let n = 257;
        let results = group(world, Duration::from_secs(30), move |mut c| {
            let r = c.rank();
            let host: Vec<f32> =
                (0..n * world).map(|i| if i / n == r { (r * 1000 + i % n) as f32 } else { -1.0 }).collect();
            let stream = c.stream().clone();
            let mut buf = stream.clone_htod(&host).unwrap();
            c.all_gather_in_place_device(&mut buf).unwrap();
            c.wait("all_gather").unwrap();
            stream.clone_dtoh(&buf).unwrap()
        });
        let expect: Vec<f32> = (0..n * world).map(|i| ((i / n) * 1000 + i % n) as f32).collect();
        for (r, got) in results.iter().enumerate() {
            assert!(*got == expect, "world {world}, rank {r}: in-place all-gather differs");
        }
        eprintln!("NCCL world {world}: in-place all-gather ok");
    }
}

/// A part of a buffer that another stream wrote (on another context object, as the model's) is summed
/// in place, ordered after that stream's work (`after`) and before its next (`before`); another part
/// is summed at the last rank alone; the rest stays as it was; a part past the end is refused.
#[test]
fn parts_of_another_streams_buffer_are_summed_alone() {
    let Some(count) = devices_or_skip() else { return };
    for world in [1, 2, 4].into_iter().filter(|&w| w <= count) {
        let n = 301;
        let results = group(world, Duration::from_secs(30), move |mut c| {
            let r = c.rank();
            let compute = CudaContext::new(c.stream().context().ordinal()).unwrap().default_stream();
            let host: Vec<f32> = (0..4 * n).map(|i| (r * 10_000 + i) as f32).collect();
            let mut buf = compute.clone_htod(&host).unwrap();
            c.after(&compute).unwrap();
            c.all_reduce_sum_part(&mut buf, n..2 * n).unwrap();
            c.reduce_sum_part(&mut buf, 2 * n..3 * n, world - 1).unwrap();
            let past = c.all_reduce_sum_part(&mut buf, 3 * n..4 * n + 1);
            assert!(matches!(past, Err(CommError::Usage { .. })), "{past:?}");
            c.wait("all_reduce").unwrap();
            c.before(&compute).unwrap();
            compute.clone_dtoh(&buf).unwrap()
        });
        let ranks: f32 = (0..world).map(|r| (r * 10_000) as f32).sum();
        for (r, got) in results.iter().enumerate() {
            for (i, &v) in got.iter().enumerate() {
                let summed = (n..2 * n).contains(&i) || ((2 * n..3 * n).contains(&i) && r == world - 1);
                let expect = if summed { ranks + (world * i) as f32 } else { (r * 10_000 + i) as f32 };
                assert_eq!(v, expect, "world {world}, rank {r}, element {i}");
            }
        }
        eprintln!("NCCL world {world}: all-reduce and reduce of a part ok");
    }
}

/// Communicators made at once, on many threads of one process, get distinct unique ids: two that
/// shared one would meet in one group (on the emulated device, one folder) and mix their collectives.
#[test]
fn unique_ids_are_distinct_across_threads() {
    if devices_or_skip().is_none() {
        return;
    }
    let ids: Vec<Vec<u8>> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                (0..64)
                    .map(|_| cudarc::nccl::result::get_uniqueid().unwrap().internal.iter().map(|&c| c as u8).collect())
                    .collect::<Vec<Vec<u8>>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{} of {} unique ids repeat", ids.len() - distinct.len(), ids.len());

    // the emulated NCCL refuses a second rank 0 on one id instead of merging the two groups
    let ctx = CudaContext::new(0).unwrap();
    if !ctx.name().is_ok_and(|n| n.starts_with("Emulated")) {
        return;
    }
    ctx.bind_to_thread().unwrap();
    use cudarc::nccl::result::{comm_abort, comm_init_rank, get_uniqueid};
    let id = get_uniqueid().unwrap();
    let mut first = std::mem::MaybeUninit::uninit();
    let mut second = std::mem::MaybeUninit::uninit();
    // SAFETY: valid out pointers; a world of one rank, so neither call waits for a peer.
    unsafe {
        comm_init_rank(first.as_mut_ptr(), 1, id, 0).unwrap();
        assert!(comm_init_rank(second.as_mut_ptr(), 1, id, 0).is_err(), "a second rank 0 joined the same id");
        comm_abort(first.assume_init()).unwrap();
    }
}

#[test]
fn watchdog_aborts_a_stalled_collective() {
    if devices() < 2 {
        eprintln!("skipped: the stall drill needs 2 GPUs (found {})", devices());
        return;
    }
    let timeout = Duration::from_secs(3);
    let tmp = tempfile::tempdir().unwrap();
    // (group takes a Copy closure)
    let dir: &'static std::path::Path = Box::leak(tmp.path().to_path_buf().into_boxed_path());
    let results = group(2, timeout, move |mut c| {
        c.flight().unwrap().set_dir(dir.to_path_buf());
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
    // rank 0's flight record: the connecting probe completed, the all-reduce of 64 values did not
    let (dumps, _) = flight::read_dumps(dir);
    let d = dumps.iter().find(|d| d.rank == 0).expect("rank 0's flight record");
    let last: Vec<(&str, usize, State)> = d.entries.iter().map(|e| (e.op.as_str(), e.values, e.state)).collect();
    assert_eq!(last, [("all_reduce", 1, State::Completed), ("all_reduce", 64, State::Started)], "{d:?}");
    assert!(d.reason.contains("made no progress"), "{}", d.reason);
}

/// NCCL's setup waits for every rank with no timeout of its own: a rank that never comes (it failed
/// after rank 0 published the id) makes the others' setup fail after the communicator's timeout,
/// naming it, instead of blocking until they are killed.
#[test]
fn setup_without_a_rank_times_out_naming_it() {
    // (rank 1 never touches a GPU: one is enough)
    if devices_or_skip().is_none() {
        return;
    }
    let timeout = Duration::from_secs(2);
    let results = common::on_ranks(2, move |rank, c| {
        if rank == 1 {
            // reads the id (so rank 0 has published it), then never sets up
            return c.get("test/nccl-id", Duration::from_secs(10)).map(|_| None).unwrap();
        }
        let ctx = CudaContext::new(0).unwrap();
        let t = Instant::now();
        let e = NcclComm::connect(c, "test", 0, 2, ctx.new_stream().unwrap(), timeout, false).err().unwrap();
        Some((e, t.elapsed()))
    });
    let (e, took) = results.into_iter().flatten().next().unwrap();
    assert!(matches!(e, CommError::Timeout { op: "nccl init", peer: 1, .. }), "{e}");
    assert!(took >= timeout && took < timeout * 3, "failed after {took:?} for a {timeout:?} timeout");

    // a rank whose own setup failed (it posts why, as a failed ncclCommInitRank does) is named with it
    let results = common::on_ranks(2, move |rank, c| {
        if rank == 1 {
            c.get("test/nccl-id", Duration::from_secs(10)).unwrap();
            c.set("test/nccl-joining/1", b"1").unwrap();
            c.set("test/nccl-failed/1", b"collective `nccl init`: NCCL ncclSystemError").unwrap();
            return None;
        }
        let ctx = CudaContext::new(0).unwrap();
        NcclComm::connect(c, "test", 0, 2, ctx.new_stream().unwrap(), timeout, false).err()
    });
    let e = results.into_iter().flatten().next().unwrap();
    assert!(matches!(e, CommError::Peer { op: "nccl init", peer: 1, .. }), "{e}");
    assert!(e.to_string().contains("its NCCL setup failed: collective `nccl init`: NCCL ncclSystemError"), "{e}");
}

/// A kernel that holds the stream for `ns` nanoseconds of wall time (the device's global timer).
const SPIN: &str = r#"
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"#;

/// The stall drill on one GPU: a kernel that spins for three timeouts holds the stream, so a
/// collective queued behind it makes no progress; the watchdog must abort the communicator and the
/// wait must fail with `Stalled` after about one timeout, not when the kernel ends.
#[test]
fn watchdog_aborts_a_collective_stuck_behind_the_stream() {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    if devices_or_skip().is_none() {
        return;
    }
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        eprintln!("skipped: the stall drill compiles a spin kernel and needs libnvrtc");
        return;
    }
    let timeout = Duration::from_secs(1);
    let ctx = CudaContext::new(0).unwrap();
    if ctx.name().is_ok_and(|n| n.starts_with("Emulated")) {
        eprintln!(
            "skipped: the drill needs a GPU's asynchronous stream (the emulated device runs a kernel at its launch)"
        );
        return;
    }
    let stream = ctx.default_stream();
    let module = ctx.load_module(cudarc::nvrtc::compile_ptx(SPIN).unwrap()).unwrap();
    let spin = module.load_function("spin").unwrap();
    let server = StoreServer::spawn("127.0.0.1:0".parse().unwrap(), "t".into()).unwrap();
    let mut store = StoreClient::connect(&server.addr.to_string(), "t", "r0", Duration::from_secs(10)).unwrap();
    let mut comm = NcclComm::connect(&mut store, "stall", 0, 1, stream.clone(), timeout, false).unwrap();
    let mut buf = stream.clone_htod(&[1.0f32; 64]).unwrap();
    let ns = 3 * timeout.as_nanos() as u64;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    let mut launch = stream.launch_builder(&spin);
    launch.arg(&ns);
    // SAFETY: spin(unsigned long long) as declared above.
    unsafe { launch.launch(cfg) }.unwrap();
    let t = Instant::now();
    comm.all_reduce_sum_device(&mut buf).unwrap();
    let e = comm.wait("all_reduce").unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, CommError::Stalled { .. }), "{e}");
    assert!(took >= timeout && took < 2 * timeout + Duration::from_millis(500), "failed after {took:?}");
    eprintln!("collective behind a {ns} ns kernel failed after {took:?}: {e}");
    assert!(matches!(comm.all_reduce_sum_device(&mut buf), Err(CommError::Stalled { .. })), "aborted stays aborted");
    drop(comm);
    // let the spin kernel end before the context goes (what the aborted collective left is not checked)
    let _ = stream.synchronize();
}
