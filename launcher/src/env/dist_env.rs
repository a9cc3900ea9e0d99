//! [`DistEnv`], a process's place in the group as its variables give it (torchrun-style or SLURM's), the
//! restart attempt they name, and what to warn of where they describe no group.

use anyhow::{bail, Context, Result};

use super::slurm::{job_port, parse_nodelist, slurm_run_id};
use super::{torchrun, vars};

/// One process's place in a distributed run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    /// `local_world` was given (`LOCAL_WORLD_SIZE`, SLURM's tasks per node); otherwise it is taken to be
    /// the whole world, which a group of one rank per pod or node without it is not.
    pub local_world_given: bool,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub token: String,
    pub run_id: String,
    pub attempt: u32,
    /// The store is hosted by an agent; otherwise rank 0 hosts it.
    pub agent_store: bool,
}

impl DistEnv {
    /// From the process environment; `None` for a single process.
    pub fn from_env() -> Result<Option<DistEnv>> {
        let get = |k: &str| std::env::var(k).ok();
        let env = Self::from_lookup(get)?;
        if env.is_none() {
            // (`infinity train` reads the environment twice: one warning)
            static SAID: std::sync::Once = std::sync::Once::new();
            let warnings: Vec<String> =
                [stray_master_vars(get), outside_srun_step(get)].into_iter().flatten().collect();
            SAID.call_once(|| warnings.iter().for_each(|w| tracing::warn!("{w}")));
        }
        Ok(env)
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        // SLURM's task variables describe a job step that srun started (SLURM_STEP_ID set), one task per
        // rank; the batch script and an salloc shell see SLURM_PROCID and SLURM_NTASKS too (the job's),
        // but run once, on one node: there they describe no rank (as the agent's SLURM_NNODES, agent/plan.rs)
        let in_step = get("SLURM_STEP_ID").is_some();
        let get = |k: &str| if k.starts_with("SLURM_") && k != "SLURM_JOB_ID" && !in_step { None } else { get(k) };
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| v.trim().parse::<usize>().with_context(|| format!("{k}={v:?}: expected a number")))
                .transpose()
        };
        // half a description is a mistake, not a single process: each pod or task would train alone as rank 0
        for (part, whole) in [("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")] {
            if get(part).is_some() && get(whole).is_none() && get("WORLD_SIZE").is_none() {
                bail!("{part} is set but {whole} is not: set both (or neither, for a single process)");
            }
        }
        let names = if get("WORLD_SIZE").is_some() { ("RANK", "WORLD_SIZE") } else { ("SLURM_PROCID", "SLURM_NTASKS") };
        // (the ranks per node, where given: else taken to be the whole world)
        let (rank, world, local_rank, local_world, node_rank, master_addr) = if get("WORLD_SIZE").is_some() {
            let world = num("WORLD_SIZE")?.unwrap();
            let rank = num("RANK")?.context("WORLD_SIZE is set but RANK is not")?;
            let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
            let local_world = num("LOCAL_WORLD_SIZE")?;
            let per_node = local_world.unwrap_or(world).max(1);
            let node_rank = num("NODE_RANK")?.or(num("GROUP_RANK")?).unwrap_or(rank / per_node);
            (rank, world, local_rank, local_world, node_rank, get("MASTER_ADDR"))
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            // srun with one task per rank
            // rank 0's host: MASTER_ADDR, else the node list's first (one process needs neither)
            let list = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"].into_iter().find_map(|v| Some((v, get(v)?)));
            let first = match list {
                Some((var, nodes)) => parse_nodelist(&nodes)
                    .with_context(|| var.to_string())?
                    .into_iter()
                    .next()
                    .with_context(|| format!("{var} is empty: expected the step's hosts (rank 0's first)"))?,
                None if world > 1 && get("MASTER_ADDR").is_none() => bail!(
                    "SLURM_PROCID and SLURM_NTASKS are set but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST \
                     (nor MASTER_ADDR) names rank 0's host"
                ),
                None => "127.0.0.1".into(),
            };
            // (`2(x3),1`: the first node's count, which a rank's local rank is below on every node but the
            // last of an uneven step)
            let per_node =
                ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"].into_iter().find_map(|v| Some((v, get(v)?)));
            let local_world = match per_node {
                Some((var, t)) => Some(
                    t.split(['(', ','])
                        .next()
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .filter(|&n| n > 0)
                        .with_context(|| {
                            format!("{var}={t:?}: expected the tasks per node, as SLURM writes them (`2(x3),1`)")
                        })?,
                ),
                None => None,
            };
            let (local_rank, node_rank) = (num("SLURM_LOCALID")?.unwrap_or(0), num("SLURM_NODEID")?.unwrap_or(0));
            if let Some(nodes) = num("SLURM_NNODES")?.filter(|&n| node_rank >= n) {
                bail!("SLURM_NODEID {node_rank} is outside SLURM_NNODES {nodes} (nodes are 0..{})", nodes.max(1) - 1);
            }
            if local_rank >= world {
                bail!("SLURM_LOCALID {local_rank} is outside SLURM_NTASKS {world}: expected a task's rank on its node");
            }
            let addr = get("MASTER_ADDR").unwrap_or(first);
            (rank, world, local_rank, local_world, node_rank, Some(addr))
        } else {
            return Ok(None);
        };
        let (rank_var, world_var) = names;
        if world == 0 {
            bail!("{world_var}=0: expected at least 1");
        }
        if rank >= world {
            bail!("{rank_var} {rank} is outside {world_var} {world} (ranks are 0..{})", world - 1);
        }
        if world == 1 {
            return Ok(None);
        }
        // a rank on another host than rank 0 would look for the store on its own (and fail as unreachable,
        // a retryable error); torch's env:// refuses too
        let Some(master_addr) = master_addr else {
            bail!(
                "WORLD_SIZE={world} but MASTER_ADDR is not set: every rank meets rank 0's store at \
                 MASTER_ADDR:MASTER_PORT; set MASTER_ADDR to rank 0's host (127.0.0.1 when all ranks run on \
                 this machine), or start the ranks with `infinity launch`"
            );
        };
        // (port 0 would have rank 0 listen at a port of the system's choosing, which no other rank knows)
        let port = |var: &str, p: &str| -> Result<u16> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => bail!("{var}={p:?}: expected a port from 1 to 65535"),
                Ok(port) => Ok(port),
            }
        };
        let master_port = match get("MASTER_PORT") {
            Some(p) => port("MASTER_PORT", &p)?,
            None => job_port(20000, get("SLURM_JOB_ID").as_deref(), get("SLURM_STEP_ID").as_deref())?.unwrap_or(29500),
        };
        // under torchrun its agent's store holds MASTER_PORT: ours takes the next one, or
        // INFINITY_STORE_PORT's (neither under our agent, whose ranks may inherit the variables from a
        // shell torchrun started)
        let agent_store = get(vars::AGENT_STORE).as_deref() == Some("1");
        let torchrun_store = get(torchrun::USE_AGENT_STORE).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let master_port = match (agent_store, get(vars::STORE_PORT)) {
            (false, Some(p)) => port(vars::STORE_PORT, &p)?,
            (false, None) if torchrun_store => master_port.checked_add(1).with_context(|| {
                format!(
                    "MASTER_PORT={master_port} under torchrun ({}): rank 0 hosts the store at the next port, and \
                     there is none; set {} (alike on every rank)",
                    torchrun::USE_AGENT_STORE,
                    vars::STORE_PORT
                )
            })?,
            _ => master_port,
        };
        let run_id = get(vars::RUN_ID)
            // (torchrun's default --rdzv-id is `none`)
            .or_else(|| get(torchrun::RUN_ID).filter(|id| !id.trim().is_empty() && id != "none"))
            .or_else(|| slurm_run_id(get("SLURM_JOB_ID"), get("SLURM_STEP_ID").as_deref()))
            .unwrap_or_else(|| "run".into());
        Ok(Some(DistEnv {
            rank,
            world,
            local_rank,
            local_world: local_world.unwrap_or(world),
            local_world_given: local_world.is_some(),
            node_rank,
            master_addr,
            master_port,
            // a scheduler without our agent may not set a token: then the (private) network is the trust boundary
            token: get(vars::TOKEN).unwrap_or_default(),
            run_id,
            attempt: restart_count(&get)?,
            agent_store,
        }))
    }

    /// Whether this rank, whose store connection left from `ip`, listens for its ring on every
    /// interface: on loopback (a master pod whose MASTER_ADDR is localhost), where ranks may be on other
    /// hosts, which reach it at the store's address: the group spans nodes, or its ranks per node are
    /// not given and MASTER_ADDR is a name (Kubeflow's `localhost`; a literal loopback address says
    /// that every rank runs on this host).
    pub fn ring_listens_everywhere(&self, ip: std::net::IpAddr) -> bool {
        let addr = self.master_addr.trim_start_matches('[').trim_end_matches(']');
        let on_this_host = addr.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
        ip.is_loopback() && (self.world > self.local_world || (!self.local_world_given && !on_this_host))
    }

    /// Whether this process belongs to a restarted group (ours, or torchrun's): it resumes from the run
    /// folder's newest checkpoint.
    pub fn restarted(&self) -> bool {
        self.attempt > 0
    }

    pub fn store_addr(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }

    /// Store key prefix of this run and attempt.
    pub fn prefix(&self) -> String {
        format!("{}/attempt-{}", self.run_id, self.attempt)
    }
}

/// The restart attempt this process's environment names ([`restart_count`]), also for a group of one
/// rank (which [`DistEnv::from_env`] leaves alone): its fault drills and its wait for the run folder's
/// lock act on the attempt, and a torchrun restart of it resumes. A count is read only beside its
/// launcher's run id (`INFINITY_RUN_ID`, `TORCHELASTIC_RUN_ID`): a count left in a shell that a
/// worker spawned would otherwise make a plain `infinity train` there resume.
pub fn restart_attempt() -> Result<u32> {
    let launched = [vars::RUN_ID, torchrun::RUN_ID].iter().any(|v| std::env::var_os(v).is_some());
    match launched {
        true => restart_count(&|v| std::env::var(v).ok()),
        false => Ok(0),
    }
}

/// The restart attempt the environment names (0 first): our agent's `INFINITY_RESTART_COUNT`, else
/// torchrun's `TORCHELASTIC_RESTART_COUNT`.
fn restart_count(get: &impl Fn(&str) -> Option<String>) -> Result<u32> {
    for var in [vars::RESTART_COUNT, torchrun::RESTART_COUNT] {
        if let Some(v) = get(var) {
            return v.trim().parse().with_context(|| format!("{var}={v:?}: expected a count of restarts"));
        }
    }
    Ok(0)
}

/// What to warn of when the environment describes no group but names a rank 0 (`MASTER_ADDR`,
/// `MASTER_PORT` without `WORLD_SIZE`): a process meant for a group that would train alone.
fn stray_master_vars(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    if get("WORLD_SIZE").is_some() {
        return None;
    }
    let set: Vec<&str> = ["MASTER_ADDR", "MASTER_PORT"].into_iter().filter(|k| get(k).is_some()).collect();
    (!set.is_empty()).then(|| {
        format!(
            "{} {} set but WORLD_SIZE and RANK are not: training as a single process (set WORLD_SIZE and RANK \
             on every rank to train as a group)",
            set.join(" and "),
            if set.len() == 1 { "is" } else { "are" }
        )
    })
}

/// What to warn of when a single process runs in a SLURM allocation of several tasks outside a job step
/// (the batch script, an salloc shell): it trains alone on this node, not as the allocation's group.
fn outside_srun_step(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    if get("WORLD_SIZE").is_some() || get("SLURM_STEP_ID").is_some() {
        return None;
    }
    let count =
        |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 1).map(|n| format!("{k}={n}"));
    let several: Vec<String> = ["SLURM_NTASKS", "SLURM_NNODES"].into_iter().filter_map(count).collect();
    (!several.is_empty()).then(|| {
        format!(
            "{} but no SLURM_STEP_ID: this process runs outside an srun job step (in the batch script) and trains \
             alone on this node; start the ranks with `srun infinity train …` (one task per rank) or `srun \
             --ntasks-per-node=1 infinity launch …` (one agent per node)",
            several.join(" and ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|k| m.get(k).cloned())
    }

    /// A rank that reached the store over loopback listens on every interface where ranks may be on other
    /// hosts: the group spans nodes, or its ranks per node are not given and MASTER_ADDR is a name (a
    /// Kubeflow master pod: `localhost`, no LOCAL_WORLD_SIZE); on loopback alone where every rank is on
    /// this host (MASTER_ADDR 127.0.0.1, or LOCAL_WORLD_SIZE the whole world).
    #[test]
    fn a_loopback_rank_listens_everywhere_unless_the_group_is_on_its_host() {
        use std::net::IpAddr;
        let (lo, lan) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let listens = |addr: &str, local: Option<&str>, ip| {
            let mut vars = vec![("WORLD_SIZE", "4"), ("RANK", "0"), ("MASTER_ADDR", addr)];
            vars.extend(local.map(|l| ("LOCAL_WORLD_SIZE", l)));
            env(&vars).unwrap().unwrap().ring_listens_everywhere(ip)
        };
        assert!(listens("localhost", None, lo), "Kubeflow's master pod");
        assert!(listens("127.0.0.1", Some("1"), lo), "one node of several");
        assert!(!listens("127.0.0.1", None, lo), "every rank on this host");
        assert!(!listens("localhost", Some("4"), lo), "every rank on this host");
        assert!(!listens("localhost", None, lan), "an address the others reach already");
        // srun gives its tasks per node; a wrapper's WORLD_SIZE without LOCAL_WORLD_SIZE under srun does not
        let slurm =
            [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NODELIST", "n[1-2]"), ("SLURM_STEP_ID", "0")];
        let with_tasks = [&slurm[..], &[("SLURM_TASKS_PER_NODE", "2(x2)")]].concat();
        assert!(env(&with_tasks).unwrap().unwrap().local_world_given);
        assert!(!env(&slurm).unwrap().unwrap().local_world_given);
        let wrapped = [&with_tasks[..], &[("WORLD_SIZE", "4"), ("RANK", "0"), ("MASTER_ADDR", "n1")]].concat();
        assert!(!env(&wrapped).unwrap().unwrap().local_world_given);
    }

    #[test]
    fn torchrun_kubernetes_and_slurm_variables() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
        let k8s = env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("MASTER_ADDR", "job-master-0"), ("MASTER_PORT", "23456")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (k8s.rank, k8s.world, k8s.store_addr().as_str(), k8s.agent_store),
            (3, 4, "job-master-0:23456", false)
        );
        assert!(!k8s.local_world_given, "no LOCAL_WORLD_SIZE: the ranks per node are a guess");
        // port 0 would be a port of the system's choosing, which no other rank knows
        for (var, value) in [("MASTER_PORT", "0"), ("INFINITY_STORE_PORT", "0"), ("MASTER_PORT", "x")] {
            let vars = [("WORLD_SIZE", "4"), ("RANK", "3"), ("MASTER_ADDR", "m"), ("MASTER_PORT", "1"), (var, value)];
            let e = env(&vars).unwrap_err().to_string();
            assert!(e.contains(&format!("{var}=\"{value}\": expected a port from 1 to 65535")), "{e}");
        }
        let slurm = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[10-13]"),
            ("SLURM_TASKS_PER_NODE", "2(x4)"),
            ("SLURM_JOB_ID", "991"),
            ("SLURM_STEP_ID", "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((slurm.rank, slurm.world, slurm.local_rank, slurm.local_world, slurm.node_rank), (5, 8, 1, 2, 2));
        assert_eq!((slurm.master_addr.as_str(), slurm.run_id.as_str()), ("gpu10", "991"));
        assert!(format!("{:#}", env(&[("WORLD_SIZE", "2")]).unwrap_err()).contains("RANK"));
        assert!(format!("{:#}", env(&[("WORLD_SIZE", "2"), ("RANK", "x")]).unwrap_err()).contains("RANK=\"x\""));
        assert!(format!("{:#}", env(&[("WORLD_SIZE", "2"), ("RANK", "2")]).unwrap_err()).contains("outside"));
        assert_eq!(slurm.master_port, 20991, "a SLURM job's own default port");

        // half or inconsistent descriptions are errors, not a silent single process
        let err = |pairs: &[(&str, &str)]| format!("{:#}", env(pairs).unwrap_err());
        assert!(err(&[("RANK", "1")]).contains("RANK is set but WORLD_SIZE is not"));
        let step = ("SLURM_STEP_ID", "0");
        assert!(err(&[("SLURM_PROCID", "1"), step]).contains("SLURM_PROCID is set but SLURM_NTASKS is not"));
        assert!(err(&[("WORLD_SIZE", "1"), ("RANK", "3")]).contains("RANK 3 is outside WORLD_SIZE 1"));
        assert!(err(&[("WORLD_SIZE", "0"), ("RANK", "0")]).contains("WORLD_SIZE=0"));
        let out_of_range = [("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NODELIST", "n1"), step];
        assert!(err(&out_of_range).contains("SLURM_PROCID 4 is outside SLURM_NTASKS 4"));
        // rank 0's host named by no variable, or by a node list that does not parse: named
        let ranks = [("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), step];
        assert!(err(&ranks).contains("neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST"), "{}", err(&ranks));
        let bad = err(&[&ranks[..], &[("SLURM_STEP_NODELIST", "node[01-")]].concat());
        assert!(bad.starts_with("SLURM_STEP_NODELIST: node list \"node[01-\": unbalanced brackets"), "{bad}");
    }

    /// An sbatch script (or an salloc shell) sees the job's SLURM_PROCID and SLURM_NTASKS outside any
    /// job step: `infinity train` there is one process, not rank 0 of 4 waiting for three others.
    #[test]
    fn slurm_task_variables_count_inside_a_job_step_only() {
        let batch =
            [("SLURM_JOB_ID", "77"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NODELIST", "localhost")];
        assert_eq!(env(&batch).unwrap(), None);
        // (nor is half a description there an error)
        assert_eq!(env(&[("SLURM_PROCID", "1")]).unwrap(), None);
        let step: Vec<_> = batch.iter().copied().chain([("SLURM_STEP_ID", "0")]).collect();
        let e = env(&step).unwrap().unwrap();
        assert_eq!(
            (e.rank, e.world, e.master_addr.as_str(), e.master_port, e.run_id.as_str()),
            (0, 4, "localhost", 20077, "77")
        );
        // a step's numbers that do not parse, or lie outside the step, are named (also for one task)
        let with = |extra: (&str, &str)| {
            let vars: Vec<_> = step.iter().copied().chain([("SLURM_NNODES", "2"), extra]).collect();
            env(&vars).map(|e| e.map(|e| (e.local_rank, e.local_world, e.node_rank))).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(with(("SLURM_STEP_TASKS_PER_NODE", "2(x2)")), Ok(Some((0, 2, 0))));
        let e = with(("SLURM_STEP_TASKS_PER_NODE", "x(x2)")).unwrap_err();
        assert!(e.contains("SLURM_STEP_TASKS_PER_NODE=\"x(x2)\": expected the tasks per node"), "{e}");
        let e = with(("SLURM_NODEID", "2")).unwrap_err();
        assert!(e.contains("SLURM_NODEID 2 is outside SLURM_NNODES 2"), "{e}");
        let e = with(("SLURM_LOCALID", "4")).unwrap_err();
        assert!(e.contains("SLURM_LOCALID 4 is outside SLURM_NTASKS 4"), "{e}");
        // torchrun-style variables need no job step
        let torchrun = env(&[("SLURM_JOB_ID", "77"), ("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "n1")]);
        let torchrun = torchrun.unwrap().unwrap();
        assert_eq!((torchrun.rank, torchrun.master_port, torchrun.run_id.as_str()), (1, 20077, "77"));
    }

    /// Two sruns in one allocation: the second step's ranks meet at a port and under a run id of their own.
    #[test]
    fn a_later_job_step_has_a_port_and_run_id_of_its_own() {
        let step = |id: &str| {
            let vars = [("SLURM_JOB_ID", "77"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_STEP_ID", id)];
            let e = env(&[&vars[..], &[("SLURM_JOB_NODELIST", "n1")]].concat()).unwrap().unwrap();
            (e.master_port, e.run_id)
        };
        assert_eq!(step("0"), (20077, "77".to_string()));
        let (port, run_id) = step("1");
        assert_eq!(run_id, "77.1");
        assert!(port != 20077 && (20000..30000).contains(&port), "{port}");
        assert_eq!(step("1"), (port, run_id), "a requeued job's step finds the same port");
        // the steps of a job, and the first steps of neighbouring jobs, keep apart
        let ports: std::collections::HashSet<u16> = (0..10)
            .flat_map(|s| (70..90).map(move |j| (j, s)))
            .map(|(j, s)| job_port(20000, Some(&j.to_string()), Some(&s.to_string())).unwrap().unwrap())
            .collect();
        assert_eq!(ports.len(), 200);
        // a job id that is not a number is named; a named step keeps apart from step 0
        let e = job_port(20000, Some("abc"), None).unwrap_err().to_string();
        assert!(e.contains("SLURM_JOB_ID=\"abc\": expected SLURM's job number"), "{e}");
        assert_ne!(job_port(20000, Some("77"), Some("x")).unwrap(), job_port(20000, Some("77"), Some("0")).unwrap());
    }

    /// Under torchrun, whose agent hosts its own store at MASTER_PORT, rank 0 hosts ours at the next
    /// port; the run id and the restart count are torchrun's where ours are not set.
    #[test]
    fn torchrun_s_store_run_id_and_restarts_are_taken() {
        let base = [("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "n1"), ("MASTER_PORT", "29500")];
        let with = |extra: &[(&str, &str)]| env(&[&base[..], extra].concat()).unwrap().unwrap();
        let plain = with(&[]);
        assert_eq!(
            (plain.master_port, plain.run_id.as_str(), plain.attempt, plain.restarted()),
            (29500, "run", 0, false)
        );
        let torchrun = [
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RUN_ID", "job-7"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ];
        let t = with(&torchrun);
        assert_eq!((t.master_port, t.run_id.as_str(), t.attempt, t.restarted()), (29501, "job-7", 2, true));
        assert_eq!(with(&[("TORCHELASTIC_USE_AGENT_STORE", "False")]).master_port, 29500);
        // a port of its own where the next is taken; under our agent, its store's
        assert_eq!(with(&[&torchrun[..], &[("INFINITY_STORE_PORT", "31000")]].concat()).master_port, 31000);
        let agent = with(&[&torchrun[..], &[("INFINITY_AGENT_STORE", "1"), ("INFINITY_STORE_PORT", "31000")]].concat());
        assert_eq!(agent.master_port, 29500);
        // (torchrun's default run id says none)
        assert_eq!(with(&[("TORCHELASTIC_RUN_ID", "none")]).run_id, "run");
        // ours win where both are set (our agent's ranks)
        let ours = with(&[&torchrun[..], &[("INFINITY_RUN_ID", "r"), ("INFINITY_RESTART_COUNT", "0")]].concat());
        assert_eq!((ours.run_id.as_str(), ours.attempt), ("r", 0));
        let e = format!("{:#}", env(&[&base[..], &[("TORCHELASTIC_RESTART_COUNT", "x")]].concat()).unwrap_err());
        assert!(e.contains("TORCHELASTIC_RESTART_COUNT=\"x\": expected a count of restarts"), "{e}");
        let top = [("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "n1"), ("MASTER_PORT", "65535")];
        let e = format!("{:#}", env(&[&top[..], &torchrun[..1]].concat()).unwrap_err());
        assert!(e.contains("rank 0 hosts the store at the next port, and there is none"), "{e}");
    }

    /// A rank of a group that names no rank 0 host refuses (an error `infinity train` exits 2 with),
    /// rather than look for the store on its own host until a retryable timeout.
    #[test]
    fn a_group_without_master_addr_is_refused() {
        let e = format!("{:#}", env(&[("WORLD_SIZE", "2"), ("RANK", "1")]).unwrap_err());
        assert!(e.contains("WORLD_SIZE=2 but MASTER_ADDR is not set"), "{e}");
        assert_eq!(env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None, "one process needs no store");
        let e = env(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1")]).unwrap().unwrap();
        assert_eq!(e.store_addr(), "127.0.0.1:29500");
    }

    #[test]
    fn a_rank_zero_address_without_a_world_is_warned_of() {
        let warn = |pairs: &[(&str, &str)]| {
            let m: HashMap<&str, &str> = pairs.iter().copied().collect();
            stray_master_vars(|k| m.get(k).map(|v| v.to_string()))
        };
        let w = warn(&[("MASTER_ADDR", "job-master-0"), ("MASTER_PORT", "23456")]).unwrap();
        assert!(w.starts_with("MASTER_ADDR and MASTER_PORT are set but WORLD_SIZE and RANK are not"), "{w}");
        assert!(warn(&[("MASTER_PORT", "1")]).unwrap().starts_with("MASTER_PORT is set"));
        assert_eq!(warn(&[]), None);
        // the agent's one rank: a group of one, said so
        assert_eq!(warn(&[("MASTER_ADDR", "127.0.0.1"), ("WORLD_SIZE", "1"), ("RANK", "0")]), None);
    }

    #[test]
    fn a_single_process_in_a_batch_script_of_several_tasks_is_warned_of() {
        let warn = |pairs: &[(&str, &str)]| {
            let m: HashMap<&str, &str> = pairs.iter().copied().collect();
            assert_eq!(env(pairs).unwrap(), None, "outside a step SLURM's task variables describe no rank");
            outside_srun_step(|k| m.get(k).map(|v| v.to_string()))
        };
        let batch = [("SLURM_JOB_ID", "7"), ("SLURM_NTASKS", "8"), ("SLURM_NNODES", "2"), ("SLURM_PROCID", "0")];
        let w = warn(&batch).unwrap();
        assert!(
            w.starts_with("SLURM_NTASKS=8 and SLURM_NNODES=2 but no SLURM_STEP_ID: this process runs outside"),
            "{w}"
        );
        assert!(warn(&[("SLURM_NNODES", "2")]).unwrap().starts_with("SLURM_NNODES=2 but"));
        // one task, a job step, or a group the environment describes: nothing to say
        assert_eq!(warn(&[("SLURM_JOB_ID", "7"), ("SLURM_NTASKS", "1"), ("SLURM_NNODES", "1")]), None);
        let m: HashMap<&str, &str> = [("SLURM_NTASKS", "8"), ("WORLD_SIZE", "1")].into_iter().collect();
        assert_eq!(outside_srun_step(|k| m.get(k).map(|v| v.to_string())), None);
        let m: HashMap<&str, &str> = [("SLURM_NTASKS", "1"), ("SLURM_STEP_ID", "0")].into_iter().collect();
        assert_eq!(outside_srun_step(|k| m.get(k).map(|v| v.to_string())), None);
    }
}
