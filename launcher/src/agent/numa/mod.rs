//! `--numa-binding` (torchrun's flag): each local rank's CPUs, chosen near its GPU. A rank's host threads
//! (data loading, the CPU kernels of CPU ranks) then run on the socket its GPU hangs off, and the
//! memory they first touch (pinned staging buffers, decoded batches) is allocated there by Linux's
//! default first-touch policy; no memory policy is set, so with `socket` on a socket split into
//! several NUMA nodes the pages land on whichever node the touching thread ran. CPU ranks are spread
//! over the nodes in order.
//!
//! The topology comes from sysfs, a GPU's node from its PCI device ([`sysfs`]). Only CPUs the agent
//! may use itself (its affinity: a SLURM or cgroup cpuset) are handed out.

mod sysfs;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

pub use sysfs::format_list;
use sysfs::{Cpu, Roots};

/// How `--numa-binding` places a rank (torchrun's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NumaBinding {
    /// Every CPU of its GPU's NUMA node.
    Node,
    /// Every CPU of the socket that holds its GPU's NUMA node.
    Socket,
    /// A share of its GPU's NUMA node's physical cores of its own (the node's ranks split them).
    Exclusive,
    /// One L3 cache domain (core complex) of its GPU's NUMA node, a different one for each of the
    /// node's ranks while there are enough.
    CoreComplex,
}

/// Where a rank's GPU is, as far as the agent can tell.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Near {
    /// The rank has no GPU (a CPU rank, or beyond a short `CUDA_VISIBLE_DEVICES`).
    NoGpu,
    /// GPU `.0`, on NUMA node `.1`.
    Gpu(String, usize),
    /// A GPU whose node is unknown, and why.
    Unknown(String),
}

/// The CPUs one local rank is bound to, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct RankCpus {
    pub cpus: Vec<usize>,
    /// The NUMA node chosen for it.
    pub node: usize,
    /// Why that node: `GPU 3's`, or `spread` (with the reason where the rank has a GPU).
    pub why: String,
    /// The local ranks bound to these very CPUs (itself included).
    pub shared_by: usize,
}

impl RankCpus {
    /// The rank's threads (`RAYON_NUM_THREADS`): its share of its CPUs.
    pub fn threads(&self) -> usize {
        (self.cpus.len() / self.shared_by).max(1)
    }
}

/// Each local rank's CPUs under `mode`. `cpus`: the machine's; `allowed`: those the agent may use;
/// `near`: each rank's GPU and node; `distances(n)`: node `n`'s `(node, distance)` to each online node,
/// where known.
/// A rank whose GPU's node has none of the allowed CPUs takes the nearest node that has; ranks without
/// a known node are spread over the nodes in order, consecutive ranks together.
pub(crate) fn plan_binding(
    mode: NumaBinding,
    cpus: &[Cpu],
    allowed: &BTreeSet<usize>,
    near: &[Near],
    distances: impl Fn(usize) -> Option<Vec<(usize, u32)>>,
) -> Result<Vec<RankCpus>, String> {
    let usable: Vec<&Cpu> = cpus.iter().filter(|c| allowed.contains(&c.id)).collect();
    if usable.is_empty() {
        return Err("no online CPU is in this agent's affinity".into());
    }
    let nodes: Vec<usize> = usable.iter().map(|c| c.node).collect::<BTreeSet<_>>().into_iter().collect();
    let nproc = near.len();
    let placed: Vec<(usize, String)> = near
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let spread = nodes[i * nodes.len() / nproc];
            match n {
                Near::Gpu(g, n) if nodes.contains(n) => (*n, format!("GPU {g}'s")),
                Near::Gpu(g, n) => {
                    let nearest = distances(*n).and_then(|d| {
                        d.into_iter()
                            .filter(|(m, _)| nodes.contains(m))
                            .min_by_key(|&(m, dist)| (dist, m))
                            .map(|(m, _)| m)
                    });
                    match nearest {
                        Some(m) => {
                            (m, format!("the nearest to GPU {g}'s node {n}, which has none of the agent's CPUs"))
                        }
                        None => (spread, format!("spread: GPU {g}'s node {n} has none of the agent's CPUs")),
                    }
                }
                Near::Unknown(why) => (spread, format!("spread: {why}")),
                Near::NoGpu => (spread, "spread".to_string()),
            }
        })
        .collect();
    let in_node = |n: usize| usable.iter().filter(move |c| c.node == n);
    let mut bound = Vec::with_capacity(nproc);
    for (i, (node, why)) in placed.iter().cloned().enumerate() {
        // this rank's place among the ranks bound to the same node
        let peers: Vec<usize> = (0..nproc).filter(|&j| placed[j].0 == node).collect();
        let (k, of) = (peers.iter().position(|&j| j == i).unwrap_or(0), peers.len());
        let chosen: Vec<usize> = match mode {
            NumaBinding::Node => in_node(node).map(|c| c.id).collect(),
            NumaBinding::Socket => {
                let sockets: BTreeSet<usize> = in_node(node).map(|c| c.socket).collect();
                usable.iter().filter(|c| sockets.contains(&c.socket)).map(|c| c.id).collect()
            }
            NumaBinding::Exclusive => {
                let cores: Vec<usize> = in_node(node).map(|c| c.core).collect::<BTreeSet<_>>().into_iter().collect();
                if cores.len() < of {
                    return Err(format!(
                        "exclusive: NUMA node {node} has {} for its {of} ranks (the agent's affinity counted)",
                        crate::plural(cores.len(), "physical core")
                    ));
                }
                let mine = &cores[k * cores.len() / of..(k + 1) * cores.len() / of];
                in_node(node).filter(|c| mine.contains(&c.core)).map(|c| c.id).collect()
            }
            NumaBinding::CoreComplex => {
                let complexes: Vec<usize> = in_node(node).map(|c| c.l3).collect::<BTreeSet<_>>().into_iter().collect();
                let mine = complexes[k % complexes.len()];
                in_node(node).filter(|c| c.l3 == mine).map(|c| c.id).collect()
            }
        };
        bound.push(RankCpus { cpus: chosen, node, why, shared_by: 1 });
    }
    for i in 0..nproc {
        bound[i].shared_by = bound.iter().filter(|b| b.cpus == bound[i].cpus).count();
    }
    Ok(bound)
}

/// Where each rank's GPU is: `devices` (each local rank's `CUDA_VISIBLE_DEVICES`, "" for none) among
/// the GPUs the agent can open; `order`: `CUDA_DEVICE_ORDER` where set. Without an NVIDIA driver the
/// entries name no GPU (a CPU rank's are placeholders).
fn near_of(devices: &[String], roots: &Roots, order: Option<&str>) -> Vec<Near> {
    let Some(gpus) = sysfs::visible_gpus(roots) else { return vec![Near::NoGpu; devices.len()] };
    // (indices count in PCI bus order; FASTEST_FIRST's may differ)
    let by_speed = order.filter(|o| *o != "PCI_BUS_ID");
    devices
        .iter()
        .map(|d| match (d.is_empty(), gpus.is_empty(), by_speed) {
            (true, _, _) => Near::NoGpu,
            (false, true, _) => Near::Unknown("the NVIDIA driver lists no GPU this agent can open".into()),
            (false, false, Some(o)) if d.parse::<usize>().is_ok() => Near::Unknown(format!(
                "CUDA_DEVICE_ORDER={o} may number GPU {d} otherwise than the PCI bus (set PCI_BUS_ID)"
            )),
            (false, false, _) => match sysfs::gpu_node(d, &gpus, roots.sys) {
                Ok(node) => Near::Gpu(d.clone(), node),
                Err(why) => Near::Unknown(why),
            },
        })
        .collect()
}

/// This machine's binding of `devices` (each local rank's `CUDA_VISIBLE_DEVICES`; "" for none).
pub fn bind(mode: NumaBinding, devices: &[String]) -> Result<Vec<RankCpus>, String> {
    let roots = Roots::machine();
    let cpus = sysfs::read_topology(roots.sys)?;
    let allowed = sysfs::allowed_cpus()?;
    let order = std::env::var("CUDA_DEVICE_ORDER").ok();
    let near = near_of(devices, &roots, order.as_deref());
    plan_binding(mode, &cpus, &allowed, &near, |n| sysfs::distances(roots.sys, n))
        .map_err(|e| format!("--numa-binding {e}"))
}

/// `cpus` as an affinity mask for sched_setaffinity(2): 64 CPUs a word, as long as the highest needs
/// (the kernel takes a shorter mask than its own as zeros beyond).
pub fn mask(cpus: &[usize]) -> Vec<u64> {
    let mut words = vec![0u64; cpus.iter().max().map_or(1, |&m| m / 64 + 1)];
    for &c in cpus {
        words[c / 64] |= 1 << (c % 64);
    }
    words
}
