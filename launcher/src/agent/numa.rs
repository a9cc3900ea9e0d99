//! `--numa-binding` (torchrun's flag): each local rank's CPUs, chosen near its GPU. A rank's host threads
//! (data loading, the CPU kernels of CPU ranks), its pinned staging buffers and the pages it first
//! touches then sit on the memory controller of the socket its GPU hangs off, instead of wherever the
//! scheduler moved them; CPU ranks are spread over the NUMA nodes in order.
//!
//! The topology comes from sysfs (`/sys/devices/system/{cpu,node}`), a GPU's node from its PCI
//! device (`/sys/bus/pci/devices/BUS/numa_node`), found through the NVIDIA driver's list
//! (`/proc/driver/nvidia/gpus/BUS/information`): a `CUDA_VISIBLE_DEVICES` index counts those GPUs in
//! PCI bus order (nvidia-smi's order, and CUDA's for identical GPUs or with
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`), a `GPU-…` entry is matched by its UUID. Only CPUs the agent may use
//! itself (its affinity: a SLURM or cgroup cpuset) are handed out.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

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

/// One logical CPU as sysfs describes it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Cpu {
    pub(super) id: usize,
    pub(super) node: usize,
    pub(super) socket: usize,
    /// The physical core: hyperthread siblings share it.
    pub(super) core: (usize, usize),
    /// The L3 cache domain: the lowest CPU sharing it (the node where sysfs gives none).
    pub(super) l3: usize,
}

/// The CPUs one local rank is bound to, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct RankCpus {
    pub cpus: Vec<usize>,
    /// The NUMA node chosen for it.
    pub node: usize,
    /// Whose node it is: `GPU 3's`, or `spread` (with the reason where the rank has a GPU).
    pub near: String,
}

/// This machine's online CPUs, read under `sys` (`/sys`).
pub(super) fn read_topology(sys: &Path) -> Result<Vec<Cpu>, String> {
    let cpu_dir = sys.join("devices/system/cpu");
    let online = std::fs::read_to_string(cpu_dir.join("online"))
        .map_err(|e| format!("{}: {e} (no sysfs CPU topology to bind ranks by)", cpu_dir.join("online").display()))?;
    let online = parse_list(&online).map_err(|e| format!("{}: {e}", cpu_dir.join("online").display()))?;
    // CPU -> node from each node's cpulist; a machine without NUMA nodes in sysfs is node 0
    let mut node_of = std::collections::HashMap::new();
    if let Ok(nodes) = std::fs::read_dir(sys.join("devices/system/node")) {
        for e in nodes.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_prefix("node").and_then(|n| n.parse::<usize>().ok()) else { continue };
            let list = std::fs::read_to_string(e.path().join("cpulist")).unwrap_or_default();
            let bad = |err| format!("{}: {err}", e.path().join("cpulist").display());
            for cpu in parse_list(&list).map_err(bad)? {
                node_of.insert(cpu, node);
            }
        }
    }
    let number = |cpu: usize, file: &str| -> Option<usize> {
        let text = std::fs::read_to_string(cpu_dir.join(format!("cpu{cpu}/{file}"))).ok()?;
        text.trim().parse::<i64>().ok().filter(|&v| v >= 0).map(|v| v as usize)
    };
    Ok(online
        .into_iter()
        .map(|id| {
            let node = node_of.get(&id).copied().unwrap_or(0);
            let socket = number(id, "topology/physical_package_id").unwrap_or(0);
            let core = (socket, number(id, "topology/core_id").unwrap_or(id));
            let l3 = std::fs::read_to_string(cpu_dir.join(format!("cpu{id}/cache/index3/shared_cpu_list")))
                .ok()
                .and_then(|l| parse_list(&l).ok())
                .and_then(|l| l.first().copied())
                .unwrap_or(usize::MAX - node);
            Cpu { id, node, socket, core, l3 }
        })
        .collect())
}

/// The NUMA node of the GPU `device` names (a `CUDA_VISIBLE_DEVICES` entry: an index in PCI bus order,
/// or a `GPU-…` UUID or a prefix of one), from the driver's list under `gpus`
/// (`/proc/driver/nvidia/gpus`) and sysfs under `sys`: `None` where it names none of them or sysfs
/// knows no node (`-1`: a machine with one).
pub(super) fn gpu_node(device: &str, gpus: &Path, sys: &Path) -> Option<usize> {
    let mut buses: Vec<String> =
        std::fs::read_dir(gpus).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    buses.sort();
    let bus = if let Ok(i) = device.parse::<usize>() {
        buses.get(i)?.clone()
    } else if device.starts_with("GPU-") {
        let uuid_of = |bus: &String| {
            let info = std::fs::read_to_string(gpus.join(bus).join("information")).ok()?;
            info.lines().find_map(|l| l.strip_prefix("GPU UUID:").map(|u| u.trim().to_string()))
        };
        buses.iter().find(|b| uuid_of(b).is_some_and(|u| u.starts_with(device)))?.clone()
    } else {
        return None; // (a MIG instance: its parent's node is not worth the guess)
    };
    let node = std::fs::read_to_string(sys.join("bus/pci/devices").join(bus.to_lowercase()).join("numa_node")).ok()?;
    node.trim().parse::<i64>().ok().filter(|&n| n >= 0).map(|n| n as usize)
}

/// Each local rank's CPUs under `mode`. `cpus`: the machine's; `allowed`: those the agent may use;
/// `near`: each rank's GPU (`CUDA_VISIBLE_DEVICES` entry) and its NUMA node where known; ranks without
/// either, or whose node has none of the allowed CPUs, are spread over the nodes in order, consecutive
/// ranks together.
pub(super) fn plan_binding(
    mode: NumaBinding,
    cpus: &[Cpu],
    allowed: &BTreeSet<usize>,
    near: &[(Option<String>, Option<usize>)],
) -> Result<Vec<RankCpus>, String> {
    let usable: Vec<&Cpu> = cpus.iter().filter(|c| allowed.contains(&c.id)).collect();
    if usable.is_empty() {
        return Err("no online CPU is in this agent's affinity".into());
    }
    let nodes: Vec<usize> = usable.iter().map(|c| c.node).collect::<BTreeSet<_>>().into_iter().collect();
    let nproc = near.len();
    let node_of: Vec<(usize, String)> = near
        .iter()
        .enumerate()
        .map(|(i, (gpu, node))| {
            let spread = nodes[i * nodes.len() / nproc];
            match (gpu, node) {
                (Some(g), Some(n)) if nodes.contains(n) => (*n, format!("GPU {g}'s")),
                (Some(g), Some(n)) => (spread, format!("spread: GPU {g}'s node {n} has none of the agent's CPUs")),
                (Some(g), None) => (spread, format!("spread: GPU {g}'s node is unknown")),
                (None, _) => (spread, "spread".to_string()),
            }
        })
        .collect();
    let in_node = |n: usize| usable.iter().filter(move |c| c.node == n);
    (0..nproc)
        .map(|i| {
            let (node, near) = node_of[i].clone();
            // this rank's place among the ranks bound to the same node
            let peers: Vec<usize> = (0..nproc).filter(|&j| node_of[j].0 == node).collect();
            let (k, of) = (peers.iter().position(|&j| j == i).unwrap_or(0), peers.len());
            let chosen: Vec<usize> = match mode {
                NumaBinding::Node => in_node(node).map(|c| c.id).collect(),
                NumaBinding::Socket => {
                    let sockets: BTreeSet<usize> = in_node(node).map(|c| c.socket).collect();
                    usable.iter().filter(|c| sockets.contains(&c.socket)).map(|c| c.id).collect()
                }
                NumaBinding::Exclusive => {
                    let cores: Vec<(usize, usize)> = dedup(in_node(node).map(|c| c.core));
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
                    let complexes: Vec<usize> = dedup(in_node(node).map(|c| c.l3));
                    let mine = complexes[k % complexes.len()];
                    in_node(node).filter(|c| c.l3 == mine).map(|c| c.id).collect()
                }
            };
            Ok(RankCpus { cpus: chosen, node, near })
        })
        .collect()
}

/// The distinct values of `it`, in their first order.
fn dedup<T: PartialEq>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut v = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// This machine's binding of `devices` (each local rank's `CUDA_VISIBLE_DEVICES`; "" for none).
pub fn bind(mode: NumaBinding, devices: &[String]) -> Result<Vec<RankCpus>, String> {
    let (sys, gpus) = (Path::new("/sys"), Path::new("/proc/driver/nvidia/gpus"));
    let cpus = read_topology(sys)?;
    // (without the driver's list the entries name no GPU: CPU ranks, whose devices are placeholders)
    let driver_lists_gpus = std::fs::read_dir(gpus).is_ok_and(|mut d| d.next().is_some());
    let near: Vec<(Option<String>, Option<usize>)> = devices
        .iter()
        .map(|d| match driver_lists_gpus && !d.is_empty() {
            true => (Some(d.clone()), gpu_node(d, gpus, sys)),
            false => (None, None),
        })
        .collect();
    plan_binding(mode, &cpus, &allowed_cpus()?, &near).map_err(|e| format!("--numa-binding {e}"))
}

/// The CPUs this process may run on (its affinity).
fn allowed_cpus() -> Result<BTreeSet<usize>, String> {
    // SAFETY: sched_getaffinity(2) fills the zeroed set we own; CPU_ISSET reads it within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(format!("reading the agent's CPU affinity: {}", std::io::Error::last_os_error()));
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// `cpus` as an affinity mask for sched_setaffinity(2) in the child.
pub(super) fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it (ids below CPU_SETSIZE,
    // the only ones sched_getaffinity reported).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

/// A sysfs CPU list (`0-3,8,10-11`).
pub(super) fn parse_list(text: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("expected a CPU list such as `0-3,8`, found `{}`", text.trim());
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if b < a || b - a > 1 << 16 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `cpus` as a CPU list (`0-3,8`).
pub fn format_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        let sep = if out.is_empty() { "" } else { "," };
        let _ = if j > i { write!(out, "{sep}{}-{}", cpus[i], cpus[j]) } else { write!(out, "{sep}{}", cpus[i]) };
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A two-node machine on one socket (sub-NUMA clusters): 4 cores per node, two threads each (CPUs
    /// 0-3 and 8-11 on node 0, 4-7 and 12-15 on node 1); node 0 has two L3 domains, node 1 one. Four
    /// GPUs, two on each node; the last one's node unknown to sysfs.
    fn machine() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (sys, gpus) = (dir.path().join("sys"), dir.path().join("gpus"));
        let put = |p: PathBuf, text: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let cpu = sys.join("devices/system/cpu");
        put(cpu.join("online"), "0-15\n");
        put(sys.join("devices/system/node/node0/cpulist"), "0-3,8-11\n");
        put(sys.join("devices/system/node/node1/cpulist"), "4-7,12-15\n");
        put(sys.join("devices/system/node/possible"), "0-1\n");
        for c in 0..16 {
            put(cpu.join(format!("cpu{c}/topology/physical_package_id")), "0\n");
            put(cpu.join(format!("cpu{c}/topology/core_id")), &format!("{}\n", c % 8));
            let l3 = match c % 8 {
                0 | 1 => "0-1,8-9",
                2 | 3 => "2-3,10-11",
                _ => "4-7,12-15",
            };
            put(cpu.join(format!("cpu{c}/cache/index3/shared_cpu_list")), l3);
        }
        for (i, (bus, node)) in
            [("0000:18:00.0", "0"), ("0000:2a:00.0", "0"), ("0000:9a:00.0", "1"), ("0000:ab:00.0", "-1")]
                .into_iter()
                .enumerate()
        {
            let info = format!("Model: \t\t NVIDIA H200\nGPU UUID: \t GPU-{i}{i}{i}-uuid\nBus Location: \t {bus}\n");
            put(gpus.join(bus).join("information"), &info);
            put(sys.join("bus/pci/devices").join(bus).join("numa_node"), &format!("{node}\n"));
        }
        (dir, sys, gpus)
    }

    fn all(n: usize) -> BTreeSet<usize> {
        (0..n).collect()
    }

    fn gpus(nodes: &[Option<usize>]) -> Vec<(Option<String>, Option<usize>)> {
        nodes.iter().enumerate().map(|(i, &n)| (Some(i.to_string()), n)).collect()
    }

    fn cpus_of(b: &[RankCpus]) -> Vec<String> {
        b.iter().map(|r| format_list(&r.cpus)).collect()
    }

    #[test]
    fn cpu_lists_read_and_written_as_sysfs_does() {
        assert_eq!(parse_list("0-3,8,10-11\n").unwrap(), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_list("").unwrap(), Vec::<usize>::new());
        for bad in ["3-1", "a", "0-", "1-99999999"] {
            assert!(parse_list(bad).unwrap_err().contains("expected a CPU list"), "{bad}");
        }
        assert_eq!(format_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_list(&[5]), "5");
    }

    #[test]
    fn the_topology_and_each_gpus_node_come_from_sysfs_and_the_driver() {
        let (_d, sys, gpus) = machine();
        let cpus = read_topology(&sys).unwrap();
        assert_eq!(cpus.len(), 16);
        assert_eq!(cpus[9], Cpu { id: 9, node: 0, socket: 0, core: (0, 1), l3: 0 });
        assert_eq!(cpus[12], Cpu { id: 12, node: 1, socket: 0, core: (0, 4), l3: 4 });
        // an index counts the driver's GPUs in bus order; a UUID or its prefix names one
        assert_eq!(gpu_node("0", &gpus, &sys), Some(0));
        assert_eq!(gpu_node("2", &gpus, &sys), Some(1));
        assert_eq!(gpu_node("GPU-222", &gpus, &sys), Some(1));
        assert_eq!(gpu_node("3", &gpus, &sys), None, "numa_node -1");
        assert_eq!(gpu_node("4", &gpus, &sys), None, "no such GPU");
        assert_eq!(gpu_node("MIG-1c2d", &gpus, &sys), None);
        assert!(read_topology(&sys.join("none")).unwrap_err().contains("no sysfs CPU topology"));
    }

    #[test]
    fn each_mode_binds_a_rank_to_its_gpus_node_or_part_of_it() {
        let (_d, sys, _) = machine();
        let cpus = read_topology(&sys).unwrap();
        let near = gpus(&[Some(0), Some(0), Some(1), Some(1)]);
        let bind = |mode| plan_binding(mode, &cpus, &all(16), &near).unwrap();
        let node = bind(NumaBinding::Node);
        assert_eq!(cpus_of(&node), ["0-3,8-11", "0-3,8-11", "4-7,12-15", "4-7,12-15"]);
        assert_eq!((node[2].node, node[2].near.as_str()), (1, "GPU 2's"));
        assert_eq!(cpus_of(&bind(NumaBinding::Socket)), ["0-15"; 4], "both nodes are on socket 0");
        // the node's two ranks split its four cores, each with both of a core's threads
        assert_eq!(cpus_of(&bind(NumaBinding::Exclusive)), ["0-1,8-9", "2-3,10-11", "4-5,12-13", "6-7,14-15"]);
        assert_eq!(cpus_of(&bind(NumaBinding::CoreComplex)), ["0-1,8-9", "2-3,10-11", "4-7,12-15", "4-7,12-15"]);

        // three ranks on node 0: cores split 1, 1, 2; core complexes taken in turn
        let three = gpus(&[Some(0), Some(0), Some(0)]);
        let ex = plan_binding(NumaBinding::Exclusive, &cpus, &all(16), &three).unwrap();
        assert_eq!(cpus_of(&ex), ["0,8", "1,9", "2-3,10-11"]);
        let cc = plan_binding(NumaBinding::CoreComplex, &cpus, &all(16), &three).unwrap();
        assert_eq!(cpus_of(&cc), ["0-1,8-9", "2-3,10-11", "0-1,8-9"]);
        let five = gpus(&[Some(0); 5]);
        let e = plan_binding(NumaBinding::Exclusive, &cpus, &all(16), &five).unwrap_err();
        assert!(e.contains("NUMA node 0 has 4 physical cores for its 5 ranks"), "{e}");
    }

    #[test]
    fn ranks_without_a_known_node_are_spread_and_the_agents_affinity_bounds_all() {
        let (_d, sys, _) = machine();
        let cpus = read_topology(&sys).unwrap();
        // CPU ranks: consecutive ranks on a node, the nodes in order
        let cpu_ranks = vec![(None, None); 4];
        let b = plan_binding(NumaBinding::Node, &cpus, &all(16), &cpu_ranks).unwrap();
        assert_eq!(b.iter().map(|r| r.node).collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert_eq!(b[0].near, "spread");
        // the agent may use node 0's first threads alone (a cpuset): GPU 2's node offers none
        let allowed: BTreeSet<usize> = (0..4).collect();
        let b = plan_binding(NumaBinding::Node, &cpus, &allowed, &gpus(&[Some(0), None, Some(1)])).unwrap();
        assert_eq!(cpus_of(&b), ["0-3"; 3]);
        assert_eq!(b[1].near, "spread: GPU 1's node is unknown");
        assert_eq!(b[2].near, "spread: GPU 2's node 1 has none of the agent's CPUs");
        let e = plan_binding(NumaBinding::Node, &cpus, &BTreeSet::from([99]), &cpu_ranks).unwrap_err();
        assert!(e.contains("no online CPU is in this agent's affinity"), "{e}");
    }
}
