use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::sysfs::{distances, format_list, gpu_node, parse_list, read_topology, visible_gpus, Cpu, Roots};
use super::*;

/// A two-node machine on one socket (sub-NUMA clusters): 4 cores per node, two threads each (CPUs 0-3
/// and 8-11 on node 0, 4-7 and 12-15 on node 1), `core_id` repeating within the package as on
/// multi-die parts; node 0 has two L3 domains, node 1 one, each at `cache/index2`; node 2 holds memory
/// alone. Five GPUs: two on node 0, one on node 1, one on node 2, one whose node sysfs does not know,
/// in a PCI domain wider than four digits.
fn machine() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let put = |p: PathBuf, text: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let (sys, cpu) = (root.join("sys"), root.join("sys/devices/system/cpu"));
    put(cpu.join("online"), "0-15\n");
    let node = sys.join("devices/system/node");
    for (n, list, dist) in [(0, "0-3,8-11", "10 12 20"), (1, "4-7,12-15", "12 10 20"), (2, "", "30 20 10")] {
        put(node.join(format!("node{n}/cpulist")), &format!("{list}\n"));
        put(node.join(format!("node{n}/distance")), &format!("{dist}\n"));
    }
    put(node.join("possible"), "0-2\n");
    put(node.join("online"), "0-2\n");
    for c in 0..16 {
        let dir = cpu.join(format!("cpu{c}"));
        put(dir.join("topology/physical_package_id"), "0\n");
        put(dir.join("topology/core_id"), &format!("{}\n", c % 2));
        put(dir.join("topology/core_cpus_list"), &format!("{},{}\n", c % 8, c % 8 + 8));
        put(dir.join("cache/index0/level"), "1\n");
        put(dir.join("cache/index0/type"), "Data\n");
        put(dir.join("cache/index0/shared_cpu_list"), &format!("{},{}\n", c % 8, c % 8 + 8));
        let l3 = match c % 8 {
            0 | 1 => "0-1,8-9",
            2 | 3 => "2-3,10-11",
            _ => "4-7,12-15",
        };
        put(dir.join("cache/index2/level"), "3\n");
        put(dir.join("cache/index2/type"), "Unified\n");
        put(dir.join("cache/index2/shared_cpu_list"), l3);
    }
    let gpus = [
        ("0000:18:00.0", "0"),
        ("0000:2a:00.0", "0"),
        ("0000:9a:00.0", "1"),
        ("0000:ab:00.0", "2"),
        ("10000:01:00.0", "-1"),
    ];
    for (i, (bus, node)) in gpus.into_iter().enumerate() {
        let info = format!(
            "Model: \t\t NVIDIA H200\nGPU UUID: \t GPU-{i}{i}{i}-uuid\nBus Location: \t {bus}\nDevice Minor: \t {i}\n"
        );
        put(root.join("gpus").join(bus).join("information"), &info);
        put(sys.join("bus/pci/devices").join(bus).join("numa_node"), &format!("{node}\n"));
        put(root.join("dev").join(format!("nvidia{i}")), "");
    }
    (dir, root)
}

/// The fake machine's roots under `root`.
struct Tree {
    sys: PathBuf,
    gpus: PathBuf,
    dev: PathBuf,
}

impl Tree {
    fn at(root: &Path) -> Tree {
        Tree { sys: root.join("sys"), gpus: root.join("gpus"), dev: root.join("dev") }
    }

    fn roots(&self) -> Roots<'_> {
        Roots { sys: &self.sys, gpus: &self.gpus, dev: &self.dev }
    }
}

fn all(n: usize) -> BTreeSet<usize> {
    (0..n).collect()
}

/// Rank i on GPU i, on node `nodes[i]`.
fn on_gpus(nodes: &[usize]) -> Vec<Near> {
    nodes.iter().enumerate().map(|(i, &n)| Near::Gpu(i.to_string(), n)).collect()
}

fn cpus_of(b: &[RankCpus]) -> Vec<String> {
    b.iter().map(|r| format_list(&r.cpus)).collect()
}

fn topology(root: &Path) -> Vec<Cpu> {
    read_topology(&root.join("sys")).unwrap()
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
    assert_eq!(mask(&[0, 65]), [1, 2], "CPU 65 is bit 1 of the second word");
}

#[test]
fn the_topology_comes_from_sysfs() {
    let (_d, root) = machine();
    let cpus = topology(&root);
    assert_eq!(cpus.len(), 16);
    // cores by their sibling lists (core_id repeats), the L3 at whichever index says level 3
    assert_eq!(cpus[9], Cpu { id: 9, node: 0, socket: 0, core: 1, l3: 0 });
    assert_eq!(cpus[12], Cpu { id: 12, node: 1, socket: 0, core: 4, l3: 4 });
    assert_eq!(distances(&root.join("sys"), 2), Some(vec![(0, 30), (1, 20), (2, 10)]));
    assert!(read_topology(&root.join("none")).unwrap_err().contains("no sysfs CPU topology"));
}

#[test]
fn a_gpu_is_found_as_cuda_numbers_the_gpus_the_agent_can_open() {
    let (_d, root) = machine();
    let tree = Tree::at(&root);
    let r = tree.roots();
    let gpus = visible_gpus(&r).unwrap();
    let sys = r.sys;
    assert_eq!(gpus.len(), 5);
    assert_eq!(gpus[4].0, "10000:01:00.0", "the wide domain orders last");
    assert_eq!(gpu_node("0", &gpus, sys), Ok(0));
    assert_eq!(gpu_node("2", &gpus, sys), Ok(1));
    assert_eq!(gpu_node("GPU-222", &gpus, sys), Ok(1), "a UUID's prefix");
    assert_eq!(gpu_node("3", &gpus, sys), Ok(2));
    assert!(gpu_node("4", &gpus, sys).unwrap_err().contains("gives no node"));
    assert!(gpu_node("5", &gpus, sys).unwrap_err().contains("GPU 5 is not among the 5 this agent can open"));
    assert!(gpu_node("MIG-1c2d", &gpus, sys).unwrap_err().contains("not a GPU index or GPU-… UUID"));
    // a job's device cgroup hides GPUs 0 and 1 (here: their device files are gone): CUDA's GPU 0 is
    // the third on the bus
    for i in [0, 1] {
        std::fs::remove_file(root.join(format!("dev/nvidia{i}"))).unwrap();
    }
    let gpus = visible_gpus(&r).unwrap();
    assert_eq!(gpus.len(), 3);
    assert_eq!(gpu_node("0", &gpus, sys), Ok(1));
    let devices = ["0".to_string(), "GPU-444".into(), String::new()];
    let near = near_of(&devices, &r, None);
    assert_eq!((&near[0], &near[2]), (&Near::Gpu("0".into(), 1), &Near::NoGpu));
    // (GPU 4's node is unknown to sysfs: the reason names its file)
    assert!(
        matches!(&near[1], Near::Unknown(why) if why.ends_with("10000:01:00.0/numa_node gives no node")),
        "{near:?}"
    );
    // an index under another CUDA_DEVICE_ORDER may be another GPU; a UUID is the same one
    let by_speed = near_of(&devices[..1], &r, Some("FASTEST_FIRST"));
    assert!(
        matches!(&by_speed[0], Near::Unknown(why) if why.contains("CUDA_DEVICE_ORDER=FASTEST_FIRST")),
        "{by_speed:?}"
    );
    assert_eq!(near_of(&["GPU-222".into()], &r, Some("FASTEST_FIRST")), [Near::Gpu("GPU-222".into(), 1)]);
    // no device file at all (made at CUDA's first use): none is left out
    for i in 2..5 {
        std::fs::remove_file(root.join(format!("dev/nvidia{i}"))).unwrap();
    }
    assert_eq!(visible_gpus(&r).unwrap().len(), 5);
    // without the driver's list the entries name no GPU (a CPU rank's placeholders)
    let absent = root.join("absent");
    assert_eq!(near_of(&devices[..1], &Roots { gpus: &absent, ..tree.roots() }, None), [Near::NoGpu]);
}

#[test]
fn each_mode_binds_a_rank_to_its_gpus_node_or_part_of_it() {
    let (_d, root) = machine();
    let cpus = topology(&root);
    let near = on_gpus(&[0, 0, 1, 1]);
    let bind = |mode| plan_binding(mode, &cpus, &all(16), &near, |_| None).unwrap();
    let node = bind(NumaBinding::Node);
    assert_eq!(cpus_of(&node), ["0-3,8-11", "0-3,8-11", "4-7,12-15", "4-7,12-15"]);
    assert_eq!((node[2].node, node[2].why.as_str(), node[2].shared_by, node[2].threads()), (1, "GPU 2's", 2, 4));
    let socket = bind(NumaBinding::Socket);
    assert_eq!(cpus_of(&socket), ["0-15"; 4], "both nodes are on socket 0");
    assert_eq!(socket[0].threads(), 4, "four ranks share the socket");
    // the node's two ranks split its four cores, each with both of a core's threads
    let ex = bind(NumaBinding::Exclusive);
    assert_eq!(cpus_of(&ex), ["0-1,8-9", "2-3,10-11", "4-5,12-13", "6-7,14-15"]);
    assert_eq!(ex[0].threads(), 4);
    let cc = bind(NumaBinding::CoreComplex);
    assert_eq!(cpus_of(&cc), ["0-1,8-9", "2-3,10-11", "4-7,12-15", "4-7,12-15"]);
    assert_eq!((cc[0].threads(), cc[3].threads()), (4, 4), "node 1's one L3 is shared by two ranks");

    // three ranks on node 0: cores split 1, 1, 2; core complexes taken in turn
    let three = on_gpus(&[0, 0, 0]);
    let ex = plan_binding(NumaBinding::Exclusive, &cpus, &all(16), &three, |_| None).unwrap();
    assert_eq!(cpus_of(&ex), ["0,8", "1,9", "2-3,10-11"]);
    let cc = plan_binding(NumaBinding::CoreComplex, &cpus, &all(16), &three, |_| None).unwrap();
    assert_eq!(cpus_of(&cc), ["0-1,8-9", "2-3,10-11", "0-1,8-9"]);
    let e = plan_binding(NumaBinding::Exclusive, &cpus, &all(16), &on_gpus(&[0; 5]), |_| None).unwrap_err();
    assert!(e.contains("NUMA node 0 has 4 physical cores for its 5 ranks"), "{e}");
}

#[test]
fn ranks_without_a_node_with_cpus_go_to_the_nearest_or_are_spread() {
    let (_d, root) = machine();
    let cpus = topology(&root);
    let sys = root.join("sys");
    // CPU ranks: consecutive ranks on a node, the nodes in order
    let b =
        plan_binding(NumaBinding::Node, &cpus, &all(16), &[Near::NoGpu, Near::NoGpu, Near::NoGpu, Near::NoGpu], |_| {
            None
        })
        .unwrap();
    assert_eq!(b.iter().map(|r| r.node).collect::<Vec<_>>(), [0, 0, 1, 1]);
    assert_eq!(b[0].why, "spread");
    // GPU 3 is on node 2, which has memory alone: node 1 is nearer to it than node 0
    let near = [Near::Gpu("3".into(), 2), Near::Unknown("why".into())];
    let b = plan_binding(NumaBinding::Node, &cpus, &all(16), &near, |n| distances(&sys, n)).unwrap();
    assert_eq!(
        (b[0].node, b[0].why.as_str()),
        (1, "the nearest to GPU 3's node 2, which has none of the agent's CPUs")
    );
    assert_eq!((b[1].node, b[1].why.as_str()), (1, "spread: why"));
    // the agent may use node 0's first threads alone (a cpuset): GPU 2's node offers none
    let allowed: BTreeSet<usize> = (0..4).collect();
    let b = plan_binding(NumaBinding::Node, &cpus, &allowed, &on_gpus(&[0, 0, 1]), |n| distances(&sys, n)).unwrap();
    assert_eq!(cpus_of(&b), ["0-3"; 3]);
    assert_eq!(b[2].shared_by, 3);
    let e = plan_binding(NumaBinding::Node, &cpus, &BTreeSet::from([99]), &[Near::NoGpu], |_| None).unwrap_err();
    assert!(e.contains("no online CPU is in this agent's affinity"), "{e}");

    // node ids with gaps (CPU nodes 0 and 8, GPU memory on 252): a distance's place is not its node
    let node = sys.join("devices/system/node");
    std::fs::write(node.join("online"), "0,8,252\n").unwrap();
    std::fs::create_dir_all(node.join("node252")).unwrap();
    std::fs::write(node.join("node252/distance"), "40 20 10\n").unwrap();
    let two: Vec<Cpu> = [(0, 0), (1, 8)].map(|(id, node)| Cpu { id, node, socket: 0, core: id, l3: 0 }).to_vec();
    let b =
        plan_binding(NumaBinding::Node, &two, &all(2), &[Near::Gpu("0".into(), 252)], |n| distances(&sys, n)).unwrap();
    assert_eq!((b[0].node, &b[0].cpus[..]), (8, &[1][..]));
}
