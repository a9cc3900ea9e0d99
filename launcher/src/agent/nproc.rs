//! `--nproc-per-node`: a number of ranks, or torchrun's `gpu` (one rank per GPU this node shows),
//! `auto` (one per GPU, else one) and `cpu` (one per CPU), counted without loading CUDA in the agent.

use std::path::Path;

/// The ranks `--nproc-per-node TEXT` asks for, the GPUs counted in this process's environment.
pub fn parse_nproc(text: &str) -> Result<usize, String> {
    nproc_from(text, || visible_gpus(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref()))
}

/// Ranks on one node at most (a rank per CPU of the largest machines, with room to spare).
const MAX_RANKS_PER_NODE: usize = 1024;

/// The ranks `text` asks for, `gpus` counting this node's GPUs when it names them.
pub(super) fn nproc_from(text: &str, gpus: impl FnOnce() -> usize) -> Result<usize, String> {
    match text.trim() {
        "gpu" => match gpus() {
            0 => Err("`gpu`: this node shows no GPU (CUDA_VISIBLE_DEVICES hides them, or no \
                      /proc/driver/nvidia/gpus)"
                .into()),
            n => Ok(n),
        },
        "auto" => Ok(gpus().max(1)),
        "cpu" => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => match n.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("expected a number of ranks ≥ 1, `gpu`, `auto` or `cpu`, found `{n}`")),
            // (processes a node can hold: beyond, the agent would run out of them or of open files midway)
            Ok(n) if n > MAX_RANKS_PER_NODE => Err(format!("{n} ranks on one node: at most {MAX_RANKS_PER_NODE}")),
            Ok(n) => Ok(n),
        },
    }
}

/// The GPUs a rank could be given: `CUDA_VISIBLE_DEVICES`'s entries where it is set (a scheduler's
/// allocation; empty, `-1` or `NoDevFiles` hide them all, as CUDA reads them), else the NVIDIA driver's
/// list of this machine's GPUs.
pub(super) fn visible_gpus(cuda_visible_devices: Option<&str>) -> usize {
    visible_gpu_ids(cuda_visible_devices).len()
}

/// The ids of [`visible_gpus`]: `CUDA_VISIBLE_DEVICES`'s entries as CUDA takes them, else `0, 1, …` for
/// the driver's GPUs.
pub fn visible_gpu_ids(cuda_visible_devices: Option<&str>) -> Vec<String> {
    match cuda_visible_devices {
        Some(list) => {
            // CUDA stops at the first entry it cannot take (`-1` hides everything after it)
            let valid = |d: &&str| !d.is_empty() && *d != "-1" && *d != "NoDevFiles";
            list.split(',').map(str::trim).take_while(valid).map(str::to_string).collect()
        }
        None => {
            let n = std::fs::read_dir(Path::new("/proc/driver/nvidia/gpus")).map_or(0, |d| d.flatten().count());
            (0..n).map(|i| i.to_string()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{nproc_from, visible_gpus};

    #[test]
    fn a_number_or_the_gpus_this_node_shows() {
        assert_eq!(nproc_from("4", || unreachable!()), Ok(4));
        assert_eq!(nproc_from("gpu", || 8), Ok(8));
        assert_eq!(nproc_from("auto", || 2), Ok(2));
        assert_eq!(nproc_from("auto", || 0), Ok(1), "no GPU: one rank");
        assert!(nproc_from("gpu", || 0).unwrap_err().contains("shows no GPU"));
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(nproc_from("cpu", || unreachable!()), Ok(cpus), "torchrun's rank per CPU");
        assert_eq!(nproc_from("100000", || 1), Err("100000 ranks on one node: at most 1024".into()));
        for bad in ["0", "-1", "cpus", ""] {
            let e = nproc_from(bad, || 1).unwrap_err();
            assert!(e.contains("expected a number of ranks ≥ 1, `gpu`, `auto` or `cpu`"), "{bad}: {e}");
        }
    }

    #[test]
    fn cuda_visible_devices_counts_as_cuda_reads_it() {
        assert_eq!(visible_gpus(Some("0,1,2")), 3);
        assert_eq!(visible_gpus(Some("GPU-8f2c, GPU-91ab")), 2);
        for none in ["", "-1", "NoDevFiles"] {
            assert_eq!(visible_gpus(Some(none)), 0, "{none:?}");
        }
        assert_eq!(visible_gpus(Some("3,-1,4")), 1, "CUDA stops at -1");
    }
}
