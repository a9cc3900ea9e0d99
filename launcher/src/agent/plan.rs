//! What an agent's command line and environment (SLURM's job step, torchrun's `PET_*` variables as
//! Kubeflow's PyTorchJob sets them, the launcher's variables) make of the group: its node count, this
//! node's rank, the rendezvous address, the shared token and the run id, checked before anything starts.

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{LaunchArgs, Nodes};
use crate::env::slurm::{job_port, parse_nodelist, slurm_run_id};
use crate::env::vars;

/// Where this agent stands in its group.
pub(super) struct Plan {
    /// The number of nodes (the most, for an elastic group).
    pub(super) nnodes: usize,
    /// `--nnodes MIN:MAX`.
    pub(super) elastic: Option<(usize, usize)>,
    pub(super) node_rank: usize,
    /// Ranks on this node: `--nproc-per-node`, else PET_NPROC_PER_NODE, else 1.
    pub(super) nproc_per_node: usize,
    pub(super) host: String,
    pub(super) port: u16,
    /// The port was derived from SLURM's job id, not given: with the run id derived from it too, a store
    /// there that refuses this agent is another job's that took it (its id ≡ this one's mod 10000), not a
    /// wrong command line.
    pub(super) port_derived: bool,
    pub(super) run_id: String,
    pub(super) token: String,
    /// The settings taken from torchrun's variables, as flags with their sources (`--nnodes 2
    /// (PET_NNODES)`), for the agent's first line.
    pub(super) adopted: Vec<String>,
    /// SLURM's values that torchrun's variables overrode where they differ (`SLURM_NNODES=4 (PET_NNODES=2
    /// taken)`), for a warning.
    pub(super) set_aside: Vec<String>,
    /// `--numa-binding`: each local rank's CPUs.
    pub(super) cpus: Option<Vec<super::numa::RankCpus>>,
    /// A warning of how the group was set up where it is likely not what was meant: a SLURM allocation
    /// of several nodes seen outside an srun job step (a batch script or an salloc shell calling the
    /// agent directly: the group is this node alone), or several nodes without a run id.
    pub(super) setup_warning: Option<String>,
}

impl Plan {
    /// The folder of attempt `round`'s logs, failure reports and flight records:
    /// `LOG_DIR/RUN_ID/attempt_K`.
    pub(super) fn attempt_dir(&self, log_dir: &std::path::Path, round: u32) -> std::path::PathBuf {
        log_dir.join(&self.run_id).join(format!("attempt_{round}"))
    }
}

pub(super) fn plan(a: &LaunchArgs) -> Result<Plan> {
    check_command(&a.cmd, &|k| std::env::var_os(k))?;
    let mut p = plan_with(a, |k| std::env::var(k).ok())?;
    if let Some(mode) = a.numa_binding {
        // (once: the command line is planned twice, and opening a GPU's device file may wake it)
        static BOUND: std::sync::OnceLock<Result<Vec<super::numa::RankCpus>, String>> = std::sync::OnceLock::new();
        let bound = BOUND.get_or_init(|| {
            let cuda_visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            super::numa::bind(mode, &super::ranks::local_devices(cuda_visible.as_deref(), p.nproc_per_node))
        });
        p.cpus = Some(bound.clone().map_err(|e| anyhow!(e))?);
    }
    // (the command line is checked, then planned again to run: one line)
    static SAID: std::sync::Once = std::sync::Once::new();
    if !p.adopted.is_empty() {
        SAID.call_once(|| {
            console_err!("[launch] from torchrun's variables: {}", p.adopted.join(", "));
            if !p.set_aside.is_empty() {
                console_err!("[launch] warning: SLURM's job step says otherwise: {}", p.set_aside.join(", "));
            }
        });
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(w) = &p.setup_warning {
        WARNED.call_once(|| console_err!("[launch] warning: {w}"));
    }
    if let Some(cpus) = &p.cpus {
        static PRINTED: std::sync::Once = std::sync::Once::new();
        PRINTED.call_once(|| {
            for (local, r) in cpus.iter().enumerate() {
                let (list, n) = (super::numa::format_list(&r.cpus), r.cpus.len());
                console_err!("[launch] local rank {local}: CPUs {list} ({n}), NUMA node {} ({})", r.node, r.why);
            }
        });
    }
    Ok(p)
}

/// torchrun's defaults where its `PET_*` variables leave a port out.
const TORCHRUN_RDZV_PORT: u16 = 29400;
const TORCHRUN_MASTER_PORT: u16 = 29500;

/// An error for a command that is neither an `infinity` subcommand nor a program found on `PATH` (or
/// by its path): a typo would otherwise fail on every rank of every node, after the rendezvous, with
/// an exit a scheduler retries.
fn check_command(cmd: &[String], env: &impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<()> {
    let Some(first) = cmd.first() else { return Ok(()) };
    if super::ranks::OWN_SUBCOMMANDS.contains(&first.as_str()) || first.contains('/') {
        return Ok(());
    }
    // (no PATH to look in: the spawn's own default path decides)
    let Some(path) = env("PATH") else { return Ok(()) };
    if std::env::split_paths(&path).any(|dir| dir.join(first).is_file()) {
        return Ok(());
    }
    let near = super::ranks::OWN_SUBCOMMANDS.iter().find(|s| strsim::levenshtein(s, first) <= 2);
    let hint = near.map_or(String::new(), |s| format!("; did you mean `{s}`?"));
    bail!(
        "-- {first}: neither an infinity subcommand ({}) nor a program on PATH{hint}",
        super::ranks::OWN_SUBCOMMANDS.join(", ")
    )
}

/// [`plan`] with the environment looked up by `env` (tests pass a map).
fn plan_with(a: &LaunchArgs, env: impl Fn(&str) -> Option<String>) -> Result<Plan> {
    // SLURM's node count and index describe the job step an srun started, one agent per node; the batch
    // script and an salloc shell see them too, but run on one node, where no other agent comes
    let in_step = env("SLURM_STEP_ID").is_some();
    let slurm_num = |k: &str| -> Result<Option<usize>> {
        env(k)
            .filter(|_| in_step)
            .map(|v| v.trim().parse::<usize>().with_context(|| format!("{k}={v:?}: expected a number")))
            .transpose()
    };
    // each setting from its flag, else torchrun's variable (as torchrun takes it: Kubeflow's PyTorchJob
    // sets PET_* for one launcher per pod), else SLURM's; the source names it in errors
    let mut adopted = Vec::new();
    let (nodes, nodes_from) = if let Some(n) = a.nnodes {
        (n, "--nnodes")
    } else if let Some(v) = env("PET_NNODES") {
        let n = v.parse::<Nodes>().map_err(|e| anyhow!("PET_NNODES={v:?}: {e}"))?;
        adopted.push(format!("--nnodes {} (PET_NNODES)", v.trim()));
        (n, "PET_NNODES")
    } else if let Some(n) = slurm_num("SLURM_NNODES")? {
        ensure!(n > 0, "SLURM_NNODES=0: expected at least 1");
        (Nodes::Fixed(n), "SLURM_NNODES")
    } else {
        refuse_process_ranks(&env)?;
        (Nodes::Fixed(1), "--nnodes")
    };
    // (a batch script that forgot srun: its one node would train alone, unsaid)
    let allocated = env("SLURM_NNODES").and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 1);
    let mut setup_warning = match allocated {
        Some(n) if !in_step && a.nnodes.is_none() && nodes_from == "--nnodes" => Some(format!(
            "SLURM_NNODES={n} but no SLURM_STEP_ID: this agent runs outside an srun job step (in the batch script \
             or an salloc shell), so the group is this node alone; to train on the allocation's {n} nodes start one \
             agent on each: `srun --ntasks-per-node=1 infinity launch …`"
        )),
        _ => None,
    };
    let (nnodes, elastic) = match nodes {
        Nodes::Fixed(n) => (n, None),
        Nodes::Elastic { min, max } => (max, Some((min, max))),
    };
    let (node_rank, rank_from) = match elastic {
        Some(_) if a.node_rank.is_some() => {
            bail!("--node-rank: an elastic group (--nnodes MIN:MAX) numbers its nodes in the order they join")
        }
        // (PET_NODE_RANK too: torchrun takes it for a static rendezvous only)
        Some(_) => (0, "--node-rank"),
        None => {
            if let Some(r) = a.node_rank {
                (r, "--node-rank")
            } else if let Some(v) = env("PET_NODE_RANK") {
                let r = v.trim().parse().with_context(|| format!("PET_NODE_RANK={v:?}: expected a number"))?;
                adopted.push(format!("--node-rank {r} (PET_NODE_RANK)"));
                (r, "PET_NODE_RANK")
            } else if let Some(v) = env("JOB_COMPLETION_INDEX").filter(|_| nnodes > 1) {
                // (a Kubernetes Indexed Job's pod: its index, 0 to completions − 1, is its node's)
                let r = v.trim().parse().with_context(|| format!("JOB_COMPLETION_INDEX={v:?}: expected a number"))?;
                adopted.push(format!("--node-rank {r} (JOB_COMPLETION_INDEX)"));
                (r, "JOB_COMPLETION_INDEX")
            } else if let Some(r) = slurm_num("SLURM_NODEID")? {
                (r, "SLURM_NODEID")
            } else {
                // every pod would be node 0
                ensure!(
                    nodes_from != "PET_NNODES" || nnodes == 1,
                    "PET_NNODES={nnodes} but PET_NODE_RANK is not set (nor an Indexed Job's JOB_COMPLETION_INDEX): \
                     pass --node-rank (this node's index, 0 to {})",
                    nnodes - 1
                );
                (0, "--node-rank")
            }
        }
    };
    if nodes_from.starts_with("SLURM") || rank_from.starts_with("SLURM") {
        one_task_per_node(&slurm_num)?;
    }
    // torchrun's variables inside a SLURM job step: taken, and where SLURM's differ, said (a SLURM value
    // that does not parse is SLURM's business here: not an error)
    let mut set_aside = Vec::new();
    let slurm_says =
        [("SLURM_NNODES", nodes_from, "PET_NNODES", nnodes), ("SLURM_NODEID", rank_from, "PET_NODE_RANK", node_rank)];
    for (var, _, pet, taken) in slurm_says.into_iter().filter(|(_, from, pet, _)| from == pet) {
        if let Some(v) = slurm_num(var).ok().flatten().filter(|&v| v != taken) {
            let given = env(pet).unwrap_or_default();
            set_aside.push(format!("{var}={v} ({pet}={} taken)", given.trim()));
        }
    }
    let secs =
        [("--grace-s", a.grace_s), ("--rdzv-timeout-s", a.rdzv_timeout_s), ("--rdzv-last-call-s", a.rdzv_last_call_s)];
    for (flag, v) in secs {
        if !(v.is_finite() && (0.0..=crate::MAX_SECONDS).contains(&v)) {
            bail!("{flag} {v}: expected a number of seconds ≥ 0 and at most {} (a week)", crate::MAX_SECONDS);
        }
    }
    // torchrun's PET_NPROC_PER_NODE is the flag's default (Kubeflow's PyTorchJob sets it from nprocPerNode);
    // a flag that contradicts it is refused, as the pod's ranks would not be the operator's
    let gpus = || super::nproc::visible_gpus(env("CUDA_VISIBLE_DEVICES").as_deref());
    let from_pet = match env("PET_NPROC_PER_NODE") {
        Some(v) => Some(super::nproc::nproc_from(&v, gpus).map_err(|e| anyhow!("PET_NPROC_PER_NODE={v}: {e}"))?),
        None => None,
    };
    let nproc_per_node = match (a.nproc_given, from_pet) {
        (None, Some(n)) => {
            adopted.push(format!("--nproc-per-node {n} (PET_NPROC_PER_NODE)"));
            n
        }
        (None, None) => 1,
        // (torchrun's `cpu`, a rank per core, is a CPU job's choice a flag may make otherwise)
        (Some(given), Some(_)) if env("PET_NPROC_PER_NODE").is_some_and(|v| v.trim() == "cpu") => given,
        (Some(given), Some(n)) if given != n => bail!(
            "PET_NPROC_PER_NODE={n} but --nproc-per-node is {given}: pass --nproc-per-node {n}, or leave it out (the \
             agent spawns that many ranks on each node)"
        ),
        (Some(given), _) => given,
    };
    if let Some(shown) = a.local_ranks_filter.as_ref().filter(|f| f.max() >= Some(nproc_per_node)) {
        // (a filter of ranks this node does not run would hide all of its output)
        bail!(
            "--local-ranks-filter {shown}: this node runs local ranks 0 to {} (--nproc-per-node {})",
            nproc_per_node - 1,
            nproc_per_node
        );
    }
    ensure!(node_rank < nnodes, "expected {rank_from} below {nodes_from} ({node_rank} of {nnodes})");
    let mut port_derived = false;
    let (host, port) = match &a.rdzv {
        Some(r) => host_port("--rdzv", r, None)?,
        None if nnodes == 1 => ("127.0.0.1".to_string(), 0),
        None => match torchrun_rdzv(&env)? {
            Some((host, port, from)) => {
                adopted.push(format!("--rdzv {host}:{port} ({from})"));
                (host, port)
            }
            None => {
                // the job step's nodes (an srun over part of the allocation), else the job's
                let (var, list) = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"]
                    .into_iter()
                    .find_map(|v| Some((v, env(v)?)))
                    .context("--rdzv HOST:PORT is needed with several nodes")?;
                let first = parse_nodelist(&list).with_context(|| var.to_string())?.into_iter().next();
                let first = first.with_context(|| format!("{var} is empty: expected the step's hosts"))?;
                let step = env("SLURM_STEP_ID");
                let derived = job_port(30000, env("SLURM_JOB_ID").as_deref(), step.as_deref())?;
                port_derived = derived.is_some();
                (first, derived.unwrap_or(29400))
            }
        },
    };
    // (port 0 binds any free port, which the other nodes cannot know)
    ensure!(
        port != 0 || nnodes == 1,
        "--rdzv {host}:0: port 0 is no port the other nodes can meet at; give one, such as 29400"
    );
    let token = match a.token.clone().or(env(vars::TOKEN)) {
        Some(t) => t,
        None if nnodes == 1 => format!("{:032x}", rand::random::<u128>()),
        None => bail!("several nodes need a shared token: --token or {} on every node", vars::TOKEN),
    };
    let (run_id, run_id_from) = if let Some(id) = a.run_id.clone() {
        (id, "--run-id")
    } else if let Some(id) = env("PET_RDZV_ID") {
        adopted.push(format!("--run-id {id} (PET_RDZV_ID)"));
        (id, "PET_RDZV_ID")
    } else if let Some(id) = slurm_run_id(env("SLURM_JOB_ID"), env("SLURM_STEP_ID").as_deref()) {
        (id, "SLURM_JOB_ID")
    } else if nnodes == 1 && elastic.is_none() {
        // one node on its own: a name of its own, so that two launches on a machine keep their logs
        // and store keys apart (torchrun's standalone mode draws one too); nodes of a group must agree
        (format!("run-{}-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"), std::process::id()), "--run-id")
    } else {
        // (nodes of a group must agree, so no name of its own can be drawn: a shared one, said)
        setup_warning.get_or_insert(format!(
            "no --run-id (nor SLURM_JOB_ID or PET_RDZV_ID): the {nnodes} nodes meet as run `run`, and jobs that share \
             --log-dir share its log folder (run/attempt_K); give each job its own --run-id on every node"
        ));
        ("run".into(), "--run-id")
    };
    // a folder name under --log-dir and a prefix of store keys
    ensure!(
        !run_id.is_empty()
            && !run_id.starts_with('.')
            && run_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{run_id_from} {run_id:?}: expected letters, digits, `.`, `_` or `-` (it names a folder under --log-dir)"
    );
    Ok(Plan {
        nnodes,
        elastic,
        node_rank,
        nproc_per_node,
        host,
        port,
        port_derived,
        run_id,
        token,
        adopted,
        set_aside,
        cpus: None,
        setup_warning,
    })
}

/// `HOST:PORT` of `what` (a flag or a variable), or, where `default_port` is given, a host alone (an
/// IPv6 one bracketed) with that port.
fn host_port(what: &str, v: &str, default_port: Option<u16>) -> Result<(String, u16)> {
    let v = v.trim();
    if let Some(p) = default_port.filter(|_| !v.is_empty() && (!v.contains(':') || v.ends_with(']'))) {
        check_host(what, v, v)?;
        return Ok((v.to_string(), p));
    }
    let (h, p) = v.rsplit_once(':').with_context(|| format!("{what} {v}: expected HOST:PORT"))?;
    ensure!(!h.is_empty(), "{what} {v}: expected HOST:PORT (no host given)");
    check_host(what, v, h)?;
    Ok((h.to_string(), p.parse().with_context(|| format!("{what} {v}: bad port"))?))
}

/// An error unless `h` (of `v`, given as `what`) is a host name, an IPv4 address or a bracketed IPv6
/// one: a malformed one would never resolve, and the agents would wait out the rendezvous timeout for
/// it (exit 1, which a scheduler retries) rather than stop at once as for a bad command line.
fn check_host(what: &str, v: &str, h: &str) -> Result<()> {
    if let Some(inner) = h.strip_prefix('[') {
        // (a link-local address may carry its zone: `[fe80::1%eth0]`)
        let address = |a: &str| a.split_once('%').map_or(a, |(a, _)| a).parse::<std::net::Ipv6Addr>().is_ok();
        let ok = inner.strip_suffix(']').is_some_and(address);
        ensure!(ok, "{what} {v}: `{h}` is no IPv6 address (written [ADDRESS]:PORT, as [fd00::1]:29400)");
        return Ok(());
    }
    ensure!(
        !h.contains(':'),
        "{what} {v}: an IPv6 address is written in brackets, [ADDRESS]:PORT (as [fd00::1]:29400)"
    );
    let bad = h.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    ensure!(bad.is_none(), "{what} {v}: `{h}` is no host name ({:?} in it)", bad.unwrap_or_default());
    Ok(())
}

/// The rendezvous torchrun's variables name: `PET_RDZV_ENDPOINT` (an elastic PyTorchJob's, c10d), else
/// `PET_MASTER_ADDR:PET_MASTER_PORT`; with the variables' names.
fn torchrun_rdzv(env: &impl Fn(&str) -> Option<String>) -> Result<Option<(String, u16, &'static str)>> {
    if let Some(e) = env("PET_RDZV_ENDPOINT") {
        // the agent's store is one of the nodes (as c10d's): an etcd endpoint is no place to meet
        if let Some(b) = env("PET_RDZV_BACKEND").filter(|b| !matches!(b.trim(), "c10d" | "static")) {
            bail!("PET_RDZV_BACKEND={b:?}: the agents meet at a store node 0 hosts; pass --rdzv HOST:PORT of a node");
        }
        let (h, p) = host_port("PET_RDZV_ENDPOINT", &e, Some(TORCHRUN_RDZV_PORT))?;
        return Ok(Some((h, p, "PET_RDZV_ENDPOINT")));
    }
    let Some(h) = env("PET_MASTER_ADDR") else { return Ok(None) };
    let port = match env("PET_MASTER_PORT") {
        Some(p) => p.trim().parse().with_context(|| format!("PET_MASTER_PORT={p:?}: expected a port"))?,
        None => TORCHRUN_MASTER_PORT,
    };
    // (an address alone, an IPv6 one unbracketed as torchrun takes it)
    let h = h.trim();
    let h = match h.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{h}]"),
        Err(_) => {
            check_host("PET_MASTER_ADDR", h, h)?;
            h.to_string()
        }
    };
    Ok(Some((h, port, "PET_MASTER_ADDR, PET_MASTER_PORT")))
}

/// With no node count given, `WORLD_SIZE` and `RANK` (a PyTorchJob's pod, a torchrun-style scheduler)
/// must not leave the agent training alone as node 0 of 1, beside agents that do the same in one run
/// folder. Nor can it take them: they count processes (one per pod, or a pod's `nprocPerNode` in
/// WORLD_SIZE) or nodes, whichever the job meant.
fn refuse_process_ranks(env: &impl Fn(&str) -> Option<String>) -> Result<()> {
    let (world, rank) = (env("WORLD_SIZE"), env("RANK"));
    let alone = |v: &Option<String>, one: &str| v.as_deref().is_none_or(|v| v.trim() == one);
    if alone(&world, "1") && alone(&rank, "0") {
        return Ok(());
    }
    let set: Vec<String> = [("WORLD_SIZE", &world), ("RANK", &rank)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    bail!(
        "{} set, but no --nnodes: they may count processes or nodes, so the agent takes neither. For one agent \
         per pod or node pass --nnodes N --node-rank R --rdzv MASTER_ADDR:MASTER_PORT (a PyTorchJob without \
         nprocPerNode: --nnodes $(WORLD_SIZE) --node-rank $(RANK)), or set PET_NNODES and PET_NODE_RANK (as \
         PyTorchJob's nprocPerNode does); to train on this node alone, unset WORLD_SIZE and RANK",
        set.join(" and ")
    )
}

/// An srun that started several tasks on a node would start several agents there, each binding node
/// 0's port or joining as that node; one task per node is the agent's layout.
fn one_task_per_node(slurm_num: &impl Fn(&str) -> Result<Option<usize>>) -> Result<()> {
    // (the counts decide; SLURM_NTASKS_PER_NODE may be the batch script's, inherited)
    let several = match (slurm_num("SLURM_NTASKS")?, slurm_num("SLURM_NNODES")?) {
        (Some(t), Some(n)) if t != n => format!("SLURM_NTASKS={t} on SLURM_NNODES={n}"),
        (Some(_), Some(_)) => return Ok(()),
        _ => match slurm_num("SLURM_NTASKS_PER_NODE")? {
            Some(p) if p != 1 => format!("SLURM_NTASKS_PER_NODE={p}"),
            _ => return Ok(()),
        },
    };
    bail!(
        "srun started more than one task per node ({several}): `infinity launch` is one agent per node, which \
         spawns that node's ranks; run `srun --ntasks-per-node=1 infinity launch --nproc-per-node G …` (G ranks \
         per node)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: LaunchArgs,
    }

    #[test]
    fn a_rendezvous_is_a_host_and_a_port_to_meet_at() {
        assert_eq!(host_port("--rdzv", "n1:29400", None).unwrap(), ("n1".to_string(), 29400));
        assert_eq!(host_port("PET_RDZV_ENDPOINT", "n1", Some(29400)).unwrap(), ("n1".to_string(), 29400));
        for (v, said) in [("n1", "expected HOST:PORT"), (":1", "no host given"), ("n1:x", "bad port")] {
            let e = host_port("--rdzv", v, None).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--rdzv {v}: ")) && e.contains(said), "{e}");
        }
        // hosts that could never resolve are refused at once, not waited for up to the timeout
        assert_eq!(host_port("--rdzv", "[::1]:29400", None).unwrap(), ("[::1]".to_string(), 29400));
        assert_eq!(host_port("E", "[fd00::1]", Some(29400)).unwrap(), ("[fd00::1]".to_string(), 29400));
        assert_eq!(host_port("--rdzv", "[fe80::1%2]:29400", None).unwrap().0, "[fe80::1%2]");
        assert_eq!(host_port("E", "pod-0.job_x.svc", Some(1)).unwrap().0, "pod-0.job_x.svc");
        for (v, said) in [
            ("::1", "an IPv6 address is written in brackets"),
            ("fd00::1:29400", "an IPv6 address is written in brackets"),
            ("[::1:29400", "`[::1` is no IPv6 address"),
            ("[pod0]:29400", "`[pod0]` is no IPv6 address"),
            ("a b:29400", "`a b` is no host name (' ' in it)"),
        ] {
            let e = host_port("PET_RDZV_ENDPOINT", v, Some(29400)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("PET_RDZV_ENDPOINT {v}: ")) && e.contains(said), "{e}");
        }
        // port 0 (any free one) is no place for several nodes to meet; one node may take it
        let plan_of = |args: &[&str]| {
            let a = Cli::parse_from(["launch", "--nproc-per-node", "1"].iter().chain(args).chain(&["--", "true"])).a;
            plan_with(&a, |k| (k == "INFINITY_RDZV_TOKEN").then(|| "t".to_string()))
        };
        let e = plan_of(&["--nnodes", "2", "--node-rank", "0", "--rdzv", "n1:0"]).err().unwrap().to_string();
        assert!(e.starts_with("--rdzv n1:0: port 0 is no port the other nodes can meet at"), "{e}");
        assert_eq!(plan_of(&["--rdzv", "127.0.0.1:0"]).unwrap().port, 0);
    }

    #[test]
    fn a_command_that_is_no_subcommand_nor_program_is_refused_with_the_nearest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trainer.sh"), "").unwrap();
        let path = std::ffi::OsString::from(dir.path());
        let env = |k: &str| (k == "PATH").then(|| path.clone());
        let cmd = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let e = check_command(&cmd(&["trian", "c.toml"]), &env).unwrap_err().to_string();
        assert!(
            e.starts_with("-- trian: neither an infinity subcommand (train, ") && e.ends_with("did you mean `train`?")
        );
        assert!(!check_command(&cmd(&["frobnicate"]), &env).unwrap_err().to_string().contains("did you mean"));
        for ok in [&["train"][..], &["trainer.sh"], &["./anything"], &["/bin/x"]] {
            assert!(check_command(&cmd(ok), &env).is_ok(), "{ok:?}");
        }
        // no PATH at all: left to the spawn (its default path)
        assert!(check_command(&cmd(&["python3"]), &|_| None).is_ok());
    }

    #[test]
    fn slurm_node_counts_apply_inside_a_job_step_only() {
        let a = Cli::parse_from(["launch", "--nproc-per-node", "1", "--", "true"]).a;
        let batch =
            [("SLURM_NNODES", "2"), ("SLURM_NODEID", "0"), ("SLURM_JOB_NODELIST", "n[1-2]"), ("SLURM_JOB_ID", "7")];
        let with = |extra: &[(&str, &str)]| {
            let vars: Vec<(&str, &str)> = batch.iter().chain(extra).copied().collect();
            plan_with(&a, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
        };
        // an sbatch script or an salloc shell: one node, this one, warned of (srun forgotten)
        let p = with(&[]).unwrap();
        assert_eq!((p.nnodes, p.node_rank, p.host.as_str()), (1, 0, "127.0.0.1"));
        let w = p.setup_warning.expect("a warning");
        assert!(w.starts_with("SLURM_NNODES=2 but no SLURM_STEP_ID") && w.contains("srun --ntasks-per-node=1"), "{w}");
        // an srun task: the step's nodes
        let p = with(&[("SLURM_STEP_ID", "0"), ("INFINITY_RDZV_TOKEN", "t")]).unwrap();
        assert_eq!((p.nnodes, p.node_rank, p.host.as_str(), p.port), (2, 0, "n1", 30007));
        assert!(p.setup_warning.is_none());
        // one node on purpose (--nnodes 1), or an allocation of one: nothing to say
        let one = Cli::parse_from(["launch", "--nnodes", "1", "--nproc-per-node", "1", "--", "true"]).a;
        assert!(plan_with(&one, |k| batch.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
            .unwrap()
            .setup_warning
            .is_none());
        let single = [("SLURM_NNODES", "1"), ("SLURM_JOB_ID", "7")];
        let p = plan_with(&a, |k| single.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap();
        assert!(p.setup_warning.is_none());
    }

    #[test]
    fn run_ids_default_to_the_job_or_a_name_of_their_own_on_one_node() {
        let plan_of = |args: &[&str], vars: &[(&str, &str)]| {
            let a = Cli::parse_from(["launch", "--nproc-per-node", "1"].iter().chain(args).chain(&["--", "true"])).a;
            plan_with(&a, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap().run_id
        };
        assert_eq!(plan_of(&[], &[("SLURM_JOB_ID", "7")]), "7");
        assert_eq!(plan_of(&["--run-id", "sweep-3"], &[("SLURM_JOB_ID", "7")]), "sweep-3");
        // two launches on one machine: their own log folders and store keys
        let own = plan_of(&[], &[]);
        let pid = format!("-{}", std::process::id());
        assert!(
            own.starts_with("run-20") && own.ends_with(&pid) && own.len() == "run-YYYYMMDD-HHMMSS".len() + pid.len()
        );
        // the nodes of a group must agree, with nothing to agree on but the default
        let group = ["--nnodes", "2", "--node-rank", "1", "--rdzv", "n1:29400"];
        assert_eq!(plan_of(&group, &[("INFINITY_RDZV_TOKEN", "t")]), "run");
        assert_eq!(plan_of(&["--nnodes", "1:2", "--rdzv", "n1:29400"], &[("INFINITY_RDZV_TOKEN", "t")]), "run");
        // … which jobs sharing a log folder would share too: warned of, unless a run id is given
        let warning = |args: &[&str]| {
            let a = Cli::parse_from(["launch", "--nproc-per-node", "1"].iter().chain(args).chain(&["--", "true"])).a;
            plan_with(&a, |k| (k == "INFINITY_RDZV_TOKEN").then(|| "t".to_string())).unwrap().setup_warning
        };
        let w = warning(&group).expect("a warning");
        assert!(w.starts_with("no --run-id (nor SLURM_JOB_ID or PET_RDZV_ID): the 2 nodes meet as run `run`"), "{w}");
        assert!(warning(&[&group[..], &["--run-id", "exp-4"]].concat()).is_none());
    }

    fn plan_of(args: &[&str], vars: &[(&str, &str)]) -> Result<Plan> {
        let a = Cli::parse_from(["launch"].iter().chain(args).chain(&["--", "true"])).a;
        plan_with(&a, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    fn err_of(args: &[&str], vars: &[(&str, &str)]) -> String {
        format!("{:#}", plan_of(args, vars).err().expect("an error"))
    }

    const TOKEN: (&str, &str) = ("INFINITY_RDZV_TOKEN", "t");

    /// A PyTorchJob pod running one agent: the operator's PET_* variables are torchrun's defaults for
    /// its flags, and the agent's too.
    #[test]
    fn torchrun_variables_of_a_pod_are_taken_as_its_flags() {
        let pod = [
            ("PET_NNODES", "2"),
            ("PET_NODE_RANK", "1"),
            ("PET_NPROC_PER_NODE", "8"),
            ("PET_MASTER_ADDR", "job-master-0"),
            ("PET_MASTER_PORT", "23456"),
            ("WORLD_SIZE", "16"),
            ("RANK", "1"),
            ("MASTER_ADDR", "job-master-0"),
            ("MASTER_PORT", "23456"),
            TOKEN,
        ];
        let eight = ["--nproc-per-node", "8"];
        let p = plan_of(&eight, &pod).unwrap();
        assert_eq!(
            (p.nnodes, p.node_rank, p.host.as_str(), p.port, p.run_id.as_str()),
            (2, 1, "job-master-0", 23456, "run")
        );
        assert_eq!(
            p.adopted,
            [
                "--nnodes 2 (PET_NNODES)",
                "--node-rank 1 (PET_NODE_RANK)",
                "--rdzv job-master-0:23456 (PET_MASTER_ADDR, PET_MASTER_PORT)"
            ]
        );
        // an IPv6 master address as torchrun takes it (bare); one that is no host, at once
        let with_addr = |addr: &'static str| -> Vec<(&str, &str)> {
            let mut v: Vec<_> = pod.iter().copied().filter(|(k, _)| *k != "PET_MASTER_ADDR").collect();
            v.push(("PET_MASTER_ADDR", addr));
            v
        };
        assert_eq!(plan_of(&eight, &with_addr("fd00::1")).unwrap().host, "[fd00::1]");
        assert!(
            err_of(&eight, &with_addr("job master")).contains("PET_MASTER_ADDR job master: `job master` is no host")
        );
        // the flags win
        let p = plan_of(&[&eight[..], &["--nnodes", "3", "--node-rank", "2", "--rdzv", "h:1"]].concat(), &pod).unwrap();
        assert_eq!((p.nnodes, p.node_rank, p.host.as_str(), p.port, p.adopted.len()), (3, 2, "h", 1, 0));
        // the pod's ranks per node are the flag's default, as torchrun takes them; a flag may not contradict them
        let p = plan_of(&[], &pod).unwrap();
        assert_eq!((p.nproc_per_node, p.adopted[2].as_str()), (8, "--nproc-per-node 8 (PET_NPROC_PER_NODE)"));
        assert!(err_of(&["--nproc-per-node", "2"], &pod)
            .contains("PET_NPROC_PER_NODE=8 but --nproc-per-node is 2: pass --nproc-per-node 8, or leave it out"));
        assert_eq!(plan_of(&[], &[]).unwrap().nproc_per_node, 1, "the default");
        // `gpu` counted as --nproc-per-node gpu counts it (the pod's GPUs)
        let gpu_pod = |visible: &'static str| {
            let mut vars: Vec<(&str, &str)> = pod.iter().copied().filter(|(k, _)| *k != "PET_NPROC_PER_NODE").collect();
            vars.extend([("PET_NPROC_PER_NODE", "gpu"), ("CUDA_VISIBLE_DEVICES", visible)]);
            vars
        };
        assert!(plan_of(&eight, &gpu_pod("0,1,2,3,4,5,6,7")).is_ok());
        let e = err_of(&eight, &gpu_pod("0,1"));
        assert!(e.contains("PET_NPROC_PER_NODE=2 but --nproc-per-node is 8"), "{e}");
        // every pod would be node 0
        let no_rank: Vec<_> = pod.iter().copied().filter(|(k, _)| *k != "PET_NODE_RANK").collect();
        assert!(err_of(&eight, &no_rank).contains("PET_NNODES=2 but PET_NODE_RANK is not set (nor an Indexed Job's"));
        // a Kubernetes Indexed Job's pod: its completion index is its node rank (of more than one node)
        let indexed = [&no_rank[..], &[("JOB_COMPLETION_INDEX", "1")]].concat();
        let p = plan_of(&eight, &indexed).unwrap();
        assert_eq!((p.node_rank, p.adopted[1].as_str()), (1, "--node-rank 1 (JOB_COMPLETION_INDEX)"));
        let one_node = [("JOB_COMPLETION_INDEX", "3"), TOKEN];
        assert_eq!(plan_of(&["--nnodes", "1"], &one_node).unwrap().node_rank, 0, "one node: its index is no rank");

        // an elastic PyTorchJob: c10d's endpoint, nodes numbered as they join
        let elastic = [
            ("PET_NNODES", "1:4"),
            ("PET_RDZV_BACKEND", "c10d"),
            ("PET_RDZV_ENDPOINT", "job-worker-0:23456"),
            ("PET_RDZV_ID", "job-7"),
            ("PET_NODE_RANK", "3"),
            TOKEN,
        ];
        let p = plan_of(&[], &elastic).unwrap();
        assert_eq!(
            (p.elastic, p.node_rank, p.host.as_str(), p.port, p.run_id.as_str()),
            (Some((1, 4)), 0, "job-worker-0", 23456, "job-7")
        );
        let no_port = [("PET_NNODES", "1:4"), ("PET_RDZV_ENDPOINT", "job-worker-0"), TOKEN];
        assert_eq!(plan_of(&[], &no_port).unwrap().port, 29400, "torchrun's default");
        let etcd = [("PET_NNODES", "1:4"), ("PET_RDZV_BACKEND", "etcd"), ("PET_RDZV_ENDPOINT", "etcd:2379"), TOKEN];
        assert!(err_of(&[], &etcd).contains("PET_RDZV_BACKEND=\"etcd\""));
        assert!(err_of(&[], &[("PET_NNODES", "two")]).contains("PET_NNODES=\"two\""));

        // inside a SLURM job step torchrun's variables win, and SLURM's that differ are set aside aloud
        let in_step = [&pod[..], &[("SLURM_STEP_ID", "0"), ("SLURM_NNODES", "4"), ("SLURM_NODEID", "1")]].concat();
        let p = plan_of(&eight, &in_step).unwrap();
        assert_eq!((p.nnodes, p.node_rank), (2, 1));
        assert_eq!(p.set_aside, ["SLURM_NNODES=4 (PET_NNODES=2 taken)"]);
        assert!(plan_of(&eight, &pod).unwrap().set_aside.is_empty());
        // an elastic range is quoted as given; SLURM's count at its most is no contradiction
        let elastic_step = [("PET_NNODES", "1:4"), ("PET_RDZV_ENDPOINT", "w0:1"), TOKEN, ("SLURM_STEP_ID", "0")];
        let with = |n: &'static str| [&elastic_step[..], &[("SLURM_NNODES", n)]].concat();
        assert!(plan_of(&[], &with("4")).unwrap().set_aside.is_empty());
        assert_eq!(plan_of(&[], &with("2")).unwrap().set_aside, ["SLURM_NNODES=2 (PET_NNODES=1:4 taken)"]);
        // an unparseable SLURM value is not this launch's concern
        assert!(plan_of(&eight, &[&pod[..], &[("SLURM_STEP_ID", "0"), ("SLURM_NODEID", "x")]].concat()).is_ok());
    }

    /// WORLD_SIZE and RANK may count processes or nodes: with no node count, the agent refuses them
    /// (each pod trained alone as node 0 of 1, into one run folder).
    #[test]
    fn process_ranks_without_a_node_count_are_refused() {
        let pod = [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29611"), ("WORLD_SIZE", "2"), ("RANK", "1")];
        let e = err_of(&[], &pod);
        assert!(e.starts_with("WORLD_SIZE=2 and RANK=1 set, but no --nnodes"), "{e}");
        assert!(e.contains("--nnodes $(WORLD_SIZE) --node-rank $(RANK)") && e.contains("PET_NNODES"), "{e}");
        assert!(err_of(&[], &[("RANK", "1")]).starts_with("RANK=1 set"));
        // a world of one is this node alone; a node count given, or SLURM's, says what they are not
        assert_eq!(plan_of(&[], &[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap().nnodes, 1);
        let given = plan_of(&["--nnodes", "2", "--node-rank", "1", "--rdzv", "h:1"], &[&pod[..], &[TOKEN]].concat());
        assert_eq!(given.unwrap().node_rank, 1);
        let srun =
            [("SLURM_STEP_ID", "0"), ("SLURM_NNODES", "2"), ("SLURM_NODEID", "1"), ("SLURM_JOB_NODELIST", "n[1-2]")];
        assert_eq!(plan_of(&[], &[&pod[..], &srun, &[TOKEN]].concat()).unwrap().node_rank, 1);
    }

    /// A second srun in one allocation meets at a port and under a run id of its own (it took the
    /// first's port, or joined its store).
    #[test]
    fn a_later_job_step_has_a_port_and_run_id_of_its_own() {
        let srun = |step| {
            let vars = [("SLURM_STEP_ID", step), ("SLURM_JOB_ID", "7"), ("SLURM_NNODES", "2"), ("SLURM_NODEID", "0")];
            let p = plan_of(&[], &[&vars[..], &[("SLURM_JOB_NODELIST", "n[1-2]"), TOKEN]].concat()).unwrap();
            (p.port, p.run_id)
        };
        assert_eq!(srun("0"), (30007, "7".to_string()));
        let (port, run_id) = srun("1");
        assert_eq!(run_id, "7.1");
        assert!(port != 30007 && (30000..40000).contains(&port), "{port}");
    }

    /// srun's task layout and numbers are checked, and errors name SLURM's variables.
    #[test]
    fn slurm_steps_run_one_agent_per_node() {
        let step = [("SLURM_STEP_ID", "0"), ("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "n[1-2]"), TOKEN];
        let with = |extra: &[(&'static str, &'static str)]| [&step[..], extra].concat();
        // srun --ntasks-per-node=2: two agents on a node
        let two = with(&[("SLURM_NNODES", "2"), ("SLURM_NTASKS", "4"), ("SLURM_NODEID", "1")]);
        let e = err_of(&[], &two);
        assert!(e.contains("(SLURM_NTASKS=4 on SLURM_NNODES=2)"), "{e}");
        assert!(e.contains("run `srun --ntasks-per-node=1 infinity launch --nproc-per-node G …`"), "{e}");
        let per_node = with(&[("SLURM_NNODES", "2"), ("SLURM_NTASKS_PER_NODE", "2"), ("SLURM_NODEID", "1")]);
        assert!(err_of(&[], &per_node).contains("(SLURM_NTASKS_PER_NODE=2)"));
        let one = with(&[
            ("SLURM_NNODES", "2"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_NTASKS_PER_NODE", "1"),
            ("SLURM_NODEID", "1"),
        ]);
        assert_eq!(plan_of(&[], &one).unwrap().node_rank, 1);
        // (an sbatch --ntasks-per-node=8 whose srun -n 2 runs one task a node)
        let inherited = with(&[("SLURM_NNODES", "2"), ("SLURM_NTASKS", "2"), ("SLURM_NTASKS_PER_NODE", "8")]);
        assert_eq!(plan_of(&[], &inherited).unwrap().nnodes, 2);
        // SLURM's numbers, named as SLURM's
        let e = err_of(&[], &with(&[("SLURM_NNODES", "2"), ("SLURM_NODEID", "2")]));
        assert!(e.contains("expected SLURM_NODEID below SLURM_NNODES (2 of 2)"), "{e}");
        assert!(err_of(&[], &with(&[("SLURM_NNODES", "x")])).contains("SLURM_NNODES=\"x\": expected a number"));
        assert!(err_of(&[], &with(&[("SLURM_NNODES", "2"), ("SLURM_NODEID", "-1")])).contains("SLURM_NODEID=\"-1\""));
        assert!(err_of(&["--node-rank", "3"], &[]).contains("expected --node-rank below --nnodes (3 of 1)"));
    }
}
