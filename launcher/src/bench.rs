//! `infinity comm bench`: the TCP ring's all-reduce bus bandwidth beside raw loopback TCP measured in the
//! same run, and the time for N ranks to rendezvous. Ranks are threads of this process talking over
//! 127.0.0.1, as processes on one node would; under `infinity launch` the group's own ranks, across its
//! nodes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::comm::{Communicator, TcpRing};
use crate::store::{StoreClient, StoreServer};

#[derive(clap::Args, Clone, Debug)]
pub struct CommBenchArgs {
    /// Ring sizes to measure (each at most 256 ranks, and ranks × --mib at most 4096 MiB). Under
    /// `infinity launch` (RANK and WORLD_SIZE set) the group's own ranks form the one ring measured,
    /// across its nodes, and this and --rdzv-ranks do not apply.
    #[arg(long, value_delimiter = ',', default_value = "2,4", value_parser = crate::positive())]
    pub ranks: Vec<usize>,
    /// All-reduce buffer size in MiB (f32), at most 1024 (every rank of a ring holds one; a ring's ranks
    /// together at most 4096 MiB).
    #[arg(long, default_value_t = 64, value_parser = crate::positive())]
    pub mib: usize,
    /// Timed repetitions (after one warm-up), of the all-reduce and of the raw ring alike.
    #[arg(long, default_value_t = 5, value_parser = crate::positive())]
    pub iters: usize,
    /// Ranks for the rendezvous timing, at most 1024 (each a thread of this process).
    #[arg(long, default_value_t = 32, value_parser = crate::positive())]
    pub rdzv_ranks: usize,
}

/// The writes and reads of the raw baselines: 1 MiB at a time.
const RAW_CHUNK: usize = 1 << 20;

/// Write `bytes` bytes to `s`.
fn send_bytes(s: &mut TcpStream, bytes: usize) -> std::io::Result<()> {
    let chunk = vec![7u8; RAW_CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(RAW_CHUNK);
        s.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}

/// Read `bytes` bytes from `s` (or until it closes).
fn recv_bytes(s: &mut TcpStream, bytes: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; RAW_CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = s.read(&mut buf[..left.min(RAW_CHUNK)])?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    Ok(())
}

/// One-directional throughput of a single loopback TCP stream, bytes per second: as the ring is
/// measured, one warm-up pass, then the median of `iters` passes (one cold pass swung 2.3–3.4 GB/s from
/// run to run).
pub fn raw_loopback(bytes: usize, iters: usize) -> Result<f64> {
    let passes = raw_loopback_passes(bytes, iters)?;
    Ok(bytes as f64 / passes[iters / 2])
}

/// The seconds of each timed pass of [`raw_loopback`] (after the warm-up), sorted; each pass ends when
/// the reader has acknowledged all its bytes.
fn raw_loopback_passes(bytes: usize, iters: usize) -> Result<Vec<f64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = spawn("raw reader".into(), move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        for _ in 0..=iters {
            recv_bytes(&mut s, bytes)?;
            s.write_all(&[1])?;
        }
        Ok(())
    })?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut passes = Vec::new();
    for _ in 0..=iters {
        let t0 = Instant::now();
        send_bytes(&mut s, bytes)?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        passes.push(t0.elapsed().as_secs_f64());
    }
    reader.join().expect("reader thread")?;
    // the first is the warm-up
    passes.remove(0);
    passes.sort_by(f64::total_cmp);
    Ok(passes)
}

/// The largest `--mib`: every rank of a ring holds a buffer of that size (and the raw ring as much
/// again), all in this one process.
pub const MAX_MIB: usize = 1024;

/// The most MiB the ranks of one ring hold together (ranks × `--mib`): the rings are measured one at a
/// time, all their buffers in this one process.
pub const MAX_TOTAL_MIB: usize = 4096;

/// The largest ring measured (each rank a thread, and one more per pass for its raw stream's writes).
pub const MAX_RANKS: usize = 256;

/// The most ranks the rendezvous is timed for (each a thread with a connection of its own).
pub const MAX_RDZV_RANKS: usize = 1024;

/// The rank counts and buffer size of `a`, refused before anything is allocated or started when one
/// would take this process more threads or memory than the bench needs to be meaningful.
fn check_bounds(a: &CommBenchArgs) -> Result<()> {
    for &w in &a.ranks {
        if w > MAX_RANKS {
            anyhow::bail!("--ranks {w}: at most {MAX_RANKS} (each rank of the ring is a thread of this process)");
        }
        match w.checked_mul(a.mib) {
            Some(total) if total <= MAX_TOTAL_MIB => {}
            _ => anyhow::bail!(
                "--ranks {w} with --mib {}: a ring's ranks hold at most {MAX_TOTAL_MIB} MiB together, all in this \
                 process (ranks × mib); use a smaller --mib",
                a.mib
            ),
        }
    }
    if a.rdzv_ranks > MAX_RDZV_RANKS {
        anyhow::bail!(
            "--rdzv-ranks {}: at most {MAX_RDZV_RANKS} (each rank is a thread of this process with its own connection)",
            a.rdzv_ranks
        );
    }
    Ok(())
}

/// A thread named `name` running `f`; a thread the system cannot start is an error, not a panic.
fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new().name(name.clone()).spawn(f).map_err(|e| anyhow::anyhow!("starting thread {name}: {e}"))
}

/// `--mib` in bytes, refused beyond [`MAX_MIB`] (a shift that wrapped timed a buffer of a few bytes,
/// and a huge one allocated until the machine ran out of memory).
fn buffer_bytes(mib: usize) -> Result<usize> {
    match mib.checked_mul(1 << 20) {
        Some(b) if mib <= MAX_MIB => Ok(b),
        _ => anyhow::bail!(
            "--mib {mib}: at most {MAX_MIB} (each rank of the ring, a thread of this process, holds a buffer of that size)"
        ),
    }
}

/// Per-stream throughput of `world` loopback TCP streams running at once in a ring (each thread sends
/// `bytes` to the next while receiving as much from the previous): the raw transport a ring of that
/// size can use on this machine, bytes per second. Measured as the all-reduce is, so the two compare:
/// one warm-up pass, then the median of `iters` passes, each as long as its slowest stream.
pub fn raw_ring(world: usize, bytes: usize, iters: usize) -> Result<f64> {
    let passes = raw_ring_passes(world, bytes, iters)?;
    Ok(bytes as f64 / passes[iters / 2])
}

/// The seconds of each timed pass of [`raw_ring`] (after the warm-up), sorted.
fn raw_ring_passes(world: usize, bytes: usize, iters: usize) -> Result<Vec<f64>> {
    let listeners: Vec<TcpListener> =
        (0..world).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr()).collect::<std::io::Result<_>>()?;
    let outs: Vec<TcpStream> =
        (0..world).map(|r| TcpStream::connect(addrs[(r + 1) % world])).collect::<std::io::Result<_>>()?;
    let ins: Vec<TcpStream> = listeners.iter().map(|l| l.accept().map(|(s, _)| s)).collect::<std::io::Result<_>>()?;
    let barrier = std::sync::Barrier::new(world);
    // the threads start timing once all are running (`true`); if one cannot start, the others end at
    // once rather than wait at the barrier for it
    let gate = std::sync::RwLock::new(false);
    let times = std::thread::scope(|sc| -> Result<Vec<Vec<f64>>> {
        let mut open = gate.write().unwrap();
        let mut hs = Vec::new();
        for (r, (mut out, mut inp)) in outs.into_iter().zip(ins).enumerate() {
            let (barrier, gate) = (&barrier, &gate);
            let h = std::thread::Builder::new().name(format!("raw ring {r}")).spawn_scoped(
                sc,
                move || -> std::io::Result<Vec<f64>> {
                    if !*gate.read().unwrap() {
                        return Ok(Vec::new());
                    }
                    let mut times = Vec::new();
                    for _ in 0..=iters {
                        barrier.wait();
                        let t0 = Instant::now();
                        std::thread::scope(|inner| {
                            let w = std::thread::Builder::new().spawn_scoped(inner, || send_bytes(&mut out, bytes))?;
                            recv_bytes(&mut inp, bytes)?;
                            w.join().expect("writer")
                        })?;
                        times.push(t0.elapsed().as_secs_f64());
                    }
                    Ok(times)
                },
            );
            match h {
                Ok(h) => hs.push(h),
                // (the gate stays shut: the threads started end at once)
                Err(e) => anyhow::bail!("starting thread raw ring {r} of {world}: {e}"),
            }
        }
        *open = true;
        drop(open);
        hs.into_iter().map(|h| Ok(h.join().expect("ring thread")?)).collect()
    })?;
    // each pass as long as its slowest stream; the first is the warm-up
    let mut passes: Vec<f64> = (1..=iters).map(|i| times.iter().map(|t| t[i]).fold(0.0, f64::max)).collect();
    passes.sort_by(f64::total_cmp);
    Ok(passes)
}

/// One rank's all-reduces of `n` f32 over `ring`: a warm-up, then `iters` timed calls (seconds), each
/// after a barrier so that the ranks start together.
fn timed_all_reduces(ring: &mut TcpRing, n: usize, iters: usize) -> Result<Vec<f64>> {
    let mut buf = vec![1.0f32; n];
    ring.all_reduce_sum(&mut buf)?; // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        ring.barrier()?;
        let t0 = Instant::now();
        ring.all_reduce_sum(&mut buf)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// NCCL's bus bandwidth of an all-reduce over `world` ranks: what each link carries, `algbw · 2(W−1)/W`.
fn bus_bandwidth(algbw: f64, world: usize) -> f64 {
    algbw * 2.0 * (world - 1) as f64 / world as f64
}

/// Median all-reduce time of `n` f32 over a `world`-rank ring, seconds.
pub fn ring_all_reduce(world: usize, n: usize, iters: usize) -> Result<f64> {
    let server = StoreServer::spawn("127.0.0.1:0".parse()?, "bench".into())?;
    let addr = server.addr.to_string();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            spawn(format!("ring rank {rank}"), move || -> Result<Vec<f64>> {
                let mut c = StoreClient::connect(&addr, "bench", &format!("r{rank}"), Duration::from_secs(10))?;
                let mut ring =
                    TcpRing::connect(&mut c, "bench", rank, world, "127.0.0.1", false, Duration::from_secs(60))?;
                timed_all_reduces(&mut ring, n, iters)
            })
        })
        .collect::<Result<_>>()?;
    let mut worst: Vec<f64> = vec![0.0; iters];
    for h in handles {
        let t = h.join().expect("rank thread")?;
        worst.iter_mut().zip(t).for_each(|(w, x)| *w = w.max(x));
    }
    worst.sort_by(f64::total_cmp);
    Ok(worst[iters / 2])
}

/// Seconds from start until all `world` ranks have connected and passed the rendezvous.
pub fn rendezvous_time(world: usize) -> Result<f64> {
    let server = StoreServer::spawn("127.0.0.1:0".parse()?, "bench".into())?;
    let addr = server.addr.to_string();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            spawn(format!("rendezvous rank {rank}"), move || -> Result<()> {
                let mut c = StoreClient::connect(&addr, "bench", &format!("r{rank}"), Duration::from_secs(30))?;
                c.rendezvous("rdzv-bench", rank, world, Duration::from_secs(30))
            })
        })
        .collect::<Result<_>>()?;
    for h in handles {
        h.join().expect("rank thread")?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Under `infinity launch` (or torchrun, srun): the group's own ranks, on their nodes, in one TCP ring
/// (as `dist.backend = "ring"` trains), the all-reduce of `--mib` timed as [`ring_all_reduce`] times it;
/// rank 0 prints the line. The network between the nodes, where the threads of [`run`] measure loopback.
fn group_all_reduce(env: &crate::env::DistEnv, a: &CommBenchArgs) -> Result<()> {
    let bytes = buffer_bytes(a.mib)?;
    let timeout = Duration::from_secs(300);
    // (rank 0 hosts the store where no agent does, as a training rank would)
    let _server = match env.rank == 0 && !env.agent_store {
        true => Some(StoreServer::spawn(format!("0.0.0.0:{}", env.master_port).parse()?, env.token.clone())?),
        false => None,
    };
    let mut store = StoreClient::connect(&env.store_addr(), &env.token, &format!("rank {}", env.rank), timeout)?;
    let prefix = format!("{}/comm-bench", env.prefix());
    store.rendezvous(&format!("{prefix}/ranks"), env.rank, env.world, timeout)?;
    let ip = store.local_ip()?;
    let listen_all = env.ring_listens_everywhere(ip);
    let mut ring = TcpRing::connect(&mut store, &prefix, env.rank, env.world, &ip.to_string(), listen_all, timeout)?;
    let times = timed_all_reduces(&mut ring, bytes / 4, a.iters)?;
    // each pass as long as its slowest rank
    let mine: Vec<f32> = times.iter().map(|&t| t as f32).collect();
    let mut all = vec![0.0f32; env.world * a.iters];
    ring.all_gather(&mine, &mut all)?;
    let mut times: Vec<f64> =
        (0..a.iters).map(|i| (0..env.world).map(|r| all[r * a.iters + i] as f64).fold(0.0, f64::max)).collect();
    times.sort_by(f64::total_cmp);
    if env.rank == 0 {
        let (w, secs) = (env.world, times[a.iters / 2]);
        let algbw = bytes as f64 / secs;
        let busbw = bus_bandwidth(algbw, w);
        console!("| ranks | nodes | MiB | all-reduce ms | algbw GB/s | busbw GB/s |");
        console!("|---|---|---|---|---|---|");
        let nodes = w.div_ceil(env.local_world.max(1));
        console!("| {w} | {nodes} | {} | {:.1} | {:.2} | {:.2} |", a.mib, secs * 1e3, algbw / 1e9, busbw / 1e9);
    }
    Ok(())
}

pub fn run(a: &CommBenchArgs) -> Result<()> {
    if let Some(env) = crate::env::DistEnv::from_env()? {
        return group_all_reduce(&env, a);
    }
    // one rank moves no bytes: its all-reduce is a copy, with no bus bandwidth to compare
    if a.ranks.contains(&1) {
        anyhow::bail!("--ranks 1: a ring of one rank sends nothing, so it has no bandwidth; measure 2 ranks or more");
    }
    let bytes = buffer_bytes(a.mib)?;
    check_bounds(a)?;
    let raw_bytes = bytes.max(256 << 20);
    let passes = raw_loopback_passes(raw_bytes, a.iters)?;
    let raw = raw_bytes as f64 / passes[a.iters / 2];
    let gbs = |secs: f64| raw_bytes as f64 / secs / 1e9;
    console!(
        "raw loopback TCP, one stream: {:.2} GB/s (median of {} passes after a warm-up; {:.2}–{:.2} GB/s)",
        raw / 1e9,
        a.iters,
        gbs(passes[a.iters - 1]),
        gbs(passes[0])
    );
    console!("| ranks | MiB | all-reduce ms | algbw GB/s | busbw GB/s | raw ring GB/s per stream | busbw / raw stream | busbw / raw ring |");
    console!("|---|---|---|---|---|---|---|---|");
    for &w in &a.ranks {
        let secs = ring_all_reduce(w, bytes / 4, a.iters)?;
        let ring_raw = raw_ring(w, bytes, a.iters)?;
        let algbw = bytes as f64 / secs;
        let busbw = bus_bandwidth(algbw, w);
        console!(
            "| {w} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} % | {:.0} % |",
            a.mib,
            secs * 1e3,
            algbw / 1e9,
            busbw / 1e9,
            ring_raw / 1e9,
            100.0 * busbw / raw,
            100.0 * busbw / ring_raw
        );
    }
    let t = rendezvous_time(a.rdzv_ranks)?;
    console!("rendezvous of {} ranks (connect + token + world check + wait): {:.1} ms", a.rdzv_ranks, t * 1e3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_is_refused_before_anything_is_measured() {
        let a = CommBenchArgs { ranks: vec![2, 1], mib: 1 << 20, iters: 5, rdzv_ranks: 2 };
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("--ranks 1") && e.contains("2 ranks or more"), "{e}");
    }

    /// A `--mib` whose bytes overflow (`<< 20` wrapped to a 0.6 ms all-reduce of a few bytes) or that
    /// would allocate without bound is refused before anything is measured.
    #[test]
    fn a_buffer_beyond_the_cap_is_refused_not_wrapped() {
        for mib in [17592186044417, 17592186044416, usize::MAX, MAX_MIB + 1] {
            let a = CommBenchArgs { ranks: vec![2], mib, iters: 1, rdzv_ranks: 2 };
            let e = format!("{:#}", run(&a).unwrap_err());
            assert!(e.contains(&format!("--mib {mib}: at most {MAX_MIB}")), "{e}");
        }
        assert_eq!(buffer_bytes(MAX_MIB).unwrap(), MAX_MIB << 20);
    }

    /// Rings whose buffers together exceed the cap (`--ranks 64 --mib 1024` allocated 64 GiB), rings
    /// of more ranks than the cap and a rendezvous of unbounded ranks are refused before anything is
    /// measured.
    #[test]
    fn ranks_times_mib_and_rank_counts_beyond_the_caps_are_refused() {
        let bench = |ranks: Vec<usize>, mib: usize, rdzv_ranks: usize| {
            let a = CommBenchArgs { ranks, mib, iters: 1, rdzv_ranks };
            format!("{:#}", run(&a).unwrap_err())
        };
        let e = bench(vec![2, 64], 1024, 2);
        assert!(e.contains("--ranks 64 with --mib 1024") && e.contains("4096 MiB"), "{e}");
        let e = bench(vec![2, 5], 1024, 2);
        assert!(e.contains("--ranks 5 with --mib 1024"), "{e}");
        let e = bench(vec![MAX_RANKS + 1], 1, 2);
        assert!(e.contains(&format!("--ranks {}: at most {MAX_RANKS}", MAX_RANKS + 1)), "{e}");
        let e = bench(vec![2], 1, usize::MAX);
        assert!(e.contains(&format!("--rdzv-ranks {}: at most {MAX_RDZV_RANKS}", usize::MAX)), "{e}");
        let a = CommBenchArgs { ranks: vec![4, MAX_RANKS], mib: 16, iters: 1, rdzv_ranks: MAX_RDZV_RANKS };
        check_bounds(&a).unwrap();
    }

    /// The single-stream baseline is timed as the rings are: a warm-up, then sorted passes for the
    /// median (one cold pass swung the ratios by 11 points from run to run).
    #[test]
    fn the_raw_stream_is_timed_over_several_passes_sorted_for_the_median() {
        let passes = raw_loopback_passes(1 << 20, 4).unwrap();
        assert_eq!(passes.len(), 4);
        assert!(passes.windows(2).all(|w| w[0] <= w[1]) && passes[0] > 0.0, "{passes:?}");
        assert!(raw_loopback(1 << 20, 3).unwrap() > 0.0);
    }

    /// The raw ring is measured as the all-reduce is (one cold pass made `busbw / raw ring` 409 %):
    /// a warm-up, then the median of the timed passes.
    #[test]
    fn the_raw_ring_is_timed_over_several_passes_sorted_for_the_median() {
        let passes = raw_ring_passes(3, 1 << 20, 4).unwrap();
        assert_eq!(passes.len(), 4);
        assert!(passes.windows(2).all(|w| w[0] <= w[1]) && passes[0] > 0.0, "{passes:?}");
        assert!(raw_ring(2, 1 << 20, 3).unwrap() > 0.0);
    }
}
