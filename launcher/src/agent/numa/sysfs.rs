//! What `--numa-binding` reads of the machine: its CPUs (node, socket, physical core, L3 domain) from
//! sysfs, each GPU's NUMA node from its PCI device, and the CPUs the agent may use.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Where the machine describes itself: `/sys`, the NVIDIA driver's GPU list and `/dev` (tests give a
/// fake tree).
pub(crate) struct Roots<'a> {
    pub(crate) sys: &'a Path,
    pub(crate) gpus: &'a Path,
    pub(crate) dev: &'a Path,
}

impl Roots<'static> {
    /// This machine's.
    pub(crate) fn machine() -> Roots<'static> {
        Roots { sys: Path::new("/sys"), gpus: Path::new("/proc/driver/nvidia/gpus"), dev: Path::new("/dev") }
    }
}

/// One logical CPU as sysfs describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cpu {
    pub(crate) id: usize,
    pub(crate) node: usize,
    pub(crate) socket: usize,
    /// The physical core, as its lowest CPU: hyperthread siblings share it.
    pub(crate) core: usize,
    /// The L3 cache domain, as its lowest CPU (`usize::MAX - node` where sysfs shows no L3).
    pub(crate) l3: usize,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The lowest CPU of the list in file `p`, if it reads.
fn first_of(p: &Path) -> Option<usize> {
    parse_list(&read(p)?).ok()?.first().copied()
}

/// This machine's online CPUs.
pub(crate) fn read_topology(sys: &Path) -> Result<Vec<Cpu>, String> {
    let cpu_dir = sys.join("devices/system/cpu");
    let online_file = cpu_dir.join("online");
    let online = read(&online_file)
        .ok_or_else(|| format!("cannot read {} (no sysfs CPU topology to bind ranks by)", online_file.display()))?;
    let online = parse_list(&online).map_err(|e| format!("{}: {e}", online_file.display()))?;
    // CPU -> node from each node's cpulist; a machine without NUMA nodes in sysfs is node 0
    let mut node_of = HashMap::new();
    for (node, path) in node_dirs(sys) {
        let file = path.join("cpulist");
        for cpu in parse_list(&read(&file).unwrap_or_default()).map_err(|e| format!("{}: {e}", file.display()))? {
            node_of.insert(cpu, node);
        }
    }
    Ok(online
        .into_iter()
        .map(|id| {
            let dir = cpu_dir.join(format!("cpu{id}"));
            let node = node_of.get(&id).copied().unwrap_or(0);
            let number = |f: &str| read(&dir.join(f))?.trim().parse::<i64>().ok().filter(|&v| v >= 0);
            let socket = number("topology/physical_package_id").unwrap_or(0) as usize;
            // (core_id repeats across a package's dies: the sibling list names the core itself)
            let core = ["topology/core_cpus_list", "topology/thread_siblings_list"]
                .iter()
                .find_map(|f| first_of(&dir.join(f)))
                .unwrap_or(id);
            let l3 = l3_of(&dir).unwrap_or(usize::MAX - node);
            Cpu { id, node, socket, core, l3 }
        })
        .collect())
}

/// The lowest CPU sharing `cpu_dir`'s L3: the unified level-3 cache among `cache/index*` (the index
/// numbers differ between machines).
fn l3_of(cpu_dir: &Path) -> Option<usize> {
    let caches = std::fs::read_dir(cpu_dir.join("cache")).ok()?;
    caches.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("index")).find_map(|e| {
        let p = e.path();
        let is_l3 = read(&p.join("level"))?.trim() == "3" && read(&p.join("type"))?.trim() == "Unified";
        if is_l3 {
            first_of(&p.join("shared_cpu_list"))
        } else {
            None
        }
    })
}

/// The NUMA nodes sysfs lists, with their folders.
fn node_dirs(sys: &Path) -> Vec<(usize, std::path::PathBuf)> {
    let Ok(dirs) = std::fs::read_dir(sys.join("devices/system/node")) else { return Vec::new() };
    let mut nodes: Vec<_> = dirs
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().strip_prefix("node")?.parse().ok()?, e.path())))
        .collect();
    nodes.sort();
    nodes
}

/// The distance from node `from` to each online node, as `(node, distance)` (`nodeN/distance` lists
/// one per online node in id order, 10 for itself; ids may have gaps), where sysfs says.
pub(crate) fn distances(sys: &Path, from: usize) -> Option<Vec<(usize, u32)>> {
    let dir = sys.join("devices/system/node");
    let online = parse_list(&read(&dir.join("online"))?).ok()?;
    let text = read(&dir.join(format!("node{from}/distance")))?;
    let d: Vec<u32> = text.split_whitespace().map(|d| d.parse().ok()).collect::<Option<_>>()?;
    (d.len() == online.len()).then(|| online.into_iter().zip(d).collect())
}

/// The GPUs CUDA can show this process, in PCI bus order (`CUDA_DEVICE_ORDER=PCI_BUS_ID`, which the
/// agent sets for bound ranks): the driver's list less those whose `/dev/nvidiaN` it may not open (a
/// SLURM job's device cgroup, a container's), as CUDA leaves them out and numbers the rest from 0.
/// Where no `/dev/nvidiaN` exists yet (no udev rule: CUDA's first use makes them), none is left out.
/// Each as its bus id and UUID; `None` where the driver has no list (no NVIDIA driver).
pub(crate) fn visible_gpus(roots: &Roots) -> Option<Vec<(String, Option<String>)>> {
    let dirs = std::fs::read_dir(roots.gpus).ok()?;
    let any_device_file = std::fs::read_dir(roots.dev).is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    });
    let mut gpus: Vec<(u64, String, Option<String>)> = dirs
        .flatten()
        .filter_map(|e| {
            let bus = e.file_name().to_string_lossy().into_owned();
            let info = read(&e.path().join("information")).unwrap_or_default();
            let field = |name: &str| info.lines().find_map(|l| Some(l.strip_prefix(name)?.trim().to_string()));
            let openable = !any_device_file
                || field("Device Minor:").is_none_or(|minor| may_open(&roots.dev.join(format!("nvidia{minor}"))));
            openable.then(|| (bus_order(&bus), bus.clone(), field("GPU UUID:")))
        })
        .collect();
    gpus.sort();
    Some(gpus.into_iter().map(|(_, bus, uuid)| (bus, uuid)).collect())
}

/// Whether this process may open device `p` for reading and writing, as CUDA does.
fn may_open(p: &Path) -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open(p).is_ok()
}

/// A PCI address `DOMAIN:BUS:DEVICE.FUNCTION` as one number, for its order (domains can be wider
/// than four digits: Intel VMD's `10000:`).
fn bus_order(bus: &str) -> u64 {
    let digits: Vec<u64> = bus.split([':', '.']).map(|p| u64::from_str_radix(p, 16).unwrap_or(u64::MAX)).collect();
    match digits[..] {
        [domain, b, dev, f] => (domain << 24) | (b << 16) | (dev << 8) | f,
        _ => u64::MAX,
    }
}

/// The GPU a `CUDA_VISIBLE_DEVICES` entry names among `gpus` (an index, or a `GPU-…` UUID or a prefix
/// of one) and its NUMA node from sysfs: `Err` with the reason where either is unknown.
pub(crate) fn gpu_node(device: &str, gpus: &[(String, Option<String>)], sys: &Path) -> Result<usize, String> {
    let bus = if let Ok(i) = device.parse::<usize>() {
        &gpus.get(i).ok_or_else(|| format!("GPU {device} is not among the {} this agent can open", gpus.len()))?.0
    } else if device.starts_with("GPU-") {
        &gpus
            .iter()
            .find(|(_, uuid)| uuid.as_deref().is_some_and(|u| u.starts_with(device)))
            .ok_or_else(|| format!("no GPU the driver lists has UUID {device}"))?
            .0
    } else {
        // (a MIG instance is on its parent GPU's node, but naming the parent takes NVML)
        return Err(format!("{device} is not a GPU index or GPU-… UUID"));
    };
    let file = sys.join("bus/pci/devices").join(bus.to_lowercase()).join("numa_node");
    let node = read(&file).and_then(|n| n.trim().parse::<i64>().ok());
    match node {
        Some(n) if n >= 0 => Ok(n as usize),
        _ => Err(format!("{} gives no node", file.display())),
    }
}

/// The CPUs this process may run on: `Cpus_allowed_list` of `/proc/self/status` (sched_getaffinity's
/// fixed mask fails on machines of over 1024 possible CPUs).
pub(crate) fn allowed_cpus() -> Result<BTreeSet<usize>, String> {
    let status = read(Path::new("/proc/self/status")).ok_or("cannot read /proc/self/status")?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).ok_or("no Cpus_allowed_list")?;
    Ok(parse_list(list)?.into_iter().collect())
}

/// A sysfs CPU list (`0-3,8,10-11`).
pub(crate) fn parse_list(text: &str) -> Result<Vec<usize>, String> {
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

/// `cpus` (ascending) as a CPU list (`0-3,8`).
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", cpus[i], cpus[j]) } else { cpus[i].to_string() });
        i = j + 1;
    }
    parts.join(",")
}
