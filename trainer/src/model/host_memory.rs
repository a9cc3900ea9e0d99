//! Host memory a training rank holds for the model's state, counted from where `train` keeps it: the
//! f32 weights, the gradients and AdamW's moments where the host updates, the weights' moving average,
//! and on rank 0 the copy of the state a checkpoint is written from. For `infinity train --check`:
//! what a job asks its scheduler for (SLURM's `--mem`), besides the CPU's activations, the dataset's
//! page cache and the process itself.
//!
//! `n` parameters, `s = ⌈n / world⌉` a ZeRO-1 shard; bytes.

/// Where AdamW runs, as `Updater::place` decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updates {
    /// On the host, all of the parameters on every rank (the CPU).
    Host,
    /// On the host, this rank's ZeRO-1 shard (the CPU, or GPUs over the TCP ring).
    HostZero1,
    /// On the GPU, all of the parameters: the host keeps no gradients, and its copy of the moments
    /// on rank 0 alone (for checkpoints; the others hold a resume's until they are on the GPU).
    Device,
    /// On the GPU, this rank's ZeRO-1 shard: the host keeps the shard's moments for checkpoints.
    DeviceZero1,
}

/// The most a rank's host holds for the model's state (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostState {
    pub rank0: u64,
    pub other_ranks: u64,
    /// Rank 0's more while a checkpoint is written: the copy of the weights, the whole moments and the
    /// moving average the writer works from (twice that when the next checkpoint comes before the
    /// write ends: the ranks gather the next copy before rank 0 waits).
    pub rank0_writing: u64,
}

/// The host state of `n` parameters over `world` ranks, updated as `updates` says, with the moving
/// average when `ema`.
pub fn host_state(n: usize, world: usize, updates: Updates, ema: bool) -> HostState {
    let (n, s) = (n as u64, n.div_ceil(world) as u64);
    let f32s = |values: u64| 4 * values;
    let weights = f32s(n); // every rank: the start's upload, the checkpoints' download (ema.rs, compute.rs)
    let ema_whole = if ema { f32s(n) } else { 0 };
    // the moving average is split over the ranks wherever the optimizer is (ema::start), except beside
    // the whole device optimizer (rank 0 alone); one rank's shard is all of it
    let ema_shard = if ema { f32s(s) } else { 0 };
    let (rank0, other_ranks) = match updates {
        Updates::Host => {
            let each = weights + f32s(3 * n) + ema_shard;
            (each, each)
        }
        // the gradients, Zero1's padded buffer for their reduce-scatter and the parameters' gather, its
        // shard, and the shard's moments and average
        Updates::HostZero1 => {
            let each = weights + f32s(n) + f32s(s * world as u64) + f32s(s) + f32s(2 * s) + ema_shard;
            (each, each)
        }
        // (the others free their moments once on the GPU: a resume's are read whole first)
        Updates::Device => (weights + f32s(2 * n) + ema_whole, weights + f32s(2 * n)),
        Updates::DeviceZero1 => {
            let each = weights + f32s(2 * s) + ema_shard;
            (each, each)
        }
    };
    let other_ranks = if world == 1 { 0 } else { other_ranks };
    HostState { rank0, other_ranks, rank0_writing: f32s(3 * n) + ema_whole }
}

/// The most memory this process may hold (bytes), and what bounds it: the machine's memory and swap
/// (`/proc/meminfo`), a container's limit (cgroup v2 `memory.max`, with its `memory.swap.max`), or the
/// process's address-space limit (`ulimit -v`), whichever is least. None where none can be read (not
/// Linux). A model whose state exceeds it cannot train here: said before anything is allocated, not
/// found as an aborted allocation.
pub fn bound() -> Option<(u64, String)> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    };
    let mut bounds = Vec::new();
    if let Some(ram) = kib("MemTotal:") {
        bounds.push((ram + kib("SwapTotal:").unwrap_or(0), "this machine's memory and swap".to_string()));
    }
    let cgroup = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok());
    if let Some(max) = cgroup("/sys/fs/cgroup/memory.max") {
        // (`max`: the machine's swap)
        let swap = match read("/sys/fs/cgroup/memory.swap.max").as_deref().map(str::trim) {
            Some("max") => kib("SwapTotal:").unwrap_or(0),
            _ => cgroup("/sys/fs/cgroup/memory.swap.max").unwrap_or(0),
        };
        bounds.push((max.saturating_add(swap), "the container's memory limit (cgroup memory.max)".into()));
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, nothing else
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
        bounds.push((limit.rlim_cur, "the process's address-space limit (ulimit -v)".into()));
    }
    bounds.into_iter().min_by_key(|(b, _)| *b)
}

/// Refuse model state of `need` bytes on this rank's host where it exceeds `bound` (see [`bound`]).
pub fn check_fits(need: u64, bound: Option<(u64, String)>) -> anyhow::Result<()> {
    let Some((most, what)) = bound.filter(|(most, _)| need > *most) else { return Ok(()) };
    anyhow::bail!(
        "the model's state needs {:.2} GB of host memory on this rank (its f32 weights, gradients and AdamW's \
         moments where the host updates them), more than {what}, {:.2} GB: a smaller model (model.depth, \
         model.embed_dim), more ranks with dist.zero1, or a GPU",
        need as f64 / 1e9,
        most as f64 / 1e9
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state beyond the bound is refused naming both and what bounds it; within it, or with no bound
    /// known, it is not; this machine has one.
    #[test]
    fn a_state_beyond_the_hosts_memory_is_refused() {
        let limit = || Some((8_000_000_000, "this machine's memory and swap".to_string()));
        assert!(check_fits(7_000_000_000, limit()).is_ok() && check_fits(u64::MAX, None).is_ok());
        let e = check_fits(9_000_000_000, limit()).unwrap_err().to_string();
        assert!(
            e.contains("needs 9.00 GB of host memory") && e.contains("than this machine's memory and swap, 8.00 GB"),
            "{e}"
        );
        #[cfg(target_os = "linux")]
        assert!(bound().is_some_and(|(b, _)| b > 0));
    }

    #[test]
    fn the_host_keeps_what_each_placement_leaves_it() {
        let (n, gb) = (1_000_000_000, 1_000_000_000);
        // one CPU rank: weights, gradients, two moments; the checkpoint's copy of all but the gradients
        let one = host_state(n, 1, Updates::Host, false);
        assert_eq!((one.rank0, one.other_ranks, one.rank0_writing), (16 * gb, 0, 12 * gb));
        // the moving average: one more copy, and in the checkpoint's
        let ema = host_state(n, 1, Updates::Host, true);
        assert_eq!((ema.rank0, ema.rank0_writing), (20 * gb, 16 * gb));
        // GPUs with the whole optimizer: the others keep the weights, and a resume's moments until
        // they are on the GPU
        let dev = host_state(n, 8, Updates::Device, true);
        assert_eq!((dev.rank0, dev.other_ranks), (16 * gb, 12 * gb));
        // ZeRO-1 on the GPUs: the shard's moments and average
        let z = host_state(n, 8, Updates::DeviceZero1, true);
        assert_eq!((z.rank0, z.other_ranks), (5_500_000_000, 5_500_000_000));
        // ZeRO-1 on the host: the gradients and the gather's buffer are whole
        let hz = host_state(n, 4, Updates::HostZero1, false);
        assert_eq!(hz.other_ranks, 4 * gb + 4 * gb + 4 * gb + gb + 2 * gb);
        assert_eq!(hz.rank0_writing, 12 * gb);
    }
}
