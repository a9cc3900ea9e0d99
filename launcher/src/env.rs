//! Where a training process finds its place in the group: torchrun-style variables (set by our agent,
//! torchrun, or Kubernetes training operators), or SLURM's when `srun` starts one task per rank.

use anyhow::{bail, Context, Result};

/// Environment variables our agent sets besides the torchrun ones.
pub mod vars {
    /// The rendezvous token (required to join the store).
    pub const TOKEN: &str = "INFINITY_RDZV_TOKEN";
    pub const RUN_ID: &str = "INFINITY_RUN_ID";
    /// Restart attempt (0 first); a restarted group resumes from its newest checkpoint.
    pub const RESTART_COUNT: &str = "INFINITY_RESTART_COUNT";
    /// `1` when the agent hosts the store (otherwise rank 0 hosts it at MASTER_ADDR:MASTER_PORT).
    pub const AGENT_STORE: &str = "INFINITY_AGENT_STORE";
    /// The port rank 0 hosts the store at where our agent does not (default MASTER_PORT, or the next
    /// one under torchrun), alike on every rank.
    pub const STORE_PORT: &str = "INFINITY_STORE_PORT";
    /// `auto`: resume from the newest complete checkpoint (set by the agent on restarts).
    pub const RESUME: &str = "INFINITY_RESUME";
    /// `1` for every rank `infinity launch` starts: the agent reports how its ranks ended (a clean stop
    /// is exit 0 and a store mark, not an exit code of the rank's choosing).
    pub const UNDER_AGENT: &str = "INFINITY_UNDER_AGENT";
    /// The agent's process id: a rank the agent started through a wrapper (`sh -c`, a script), which the
    /// agent's parent-death signal does not reach, stops as on SIGTERM once the agent is gone.
    pub const AGENT_PID: &str = "INFINITY_AGENT_PID";
    /// An elastic group's (`--nnodes MIN:MAX`) range as `MIN:MAX:NPROC_PER_NODE`: the worlds it may
    /// regroup to, which a rank checks its batch splits over before the first step (a world that does
    /// not would stop the group, exit 2, when a node joins or leaves).
    pub const ELASTIC: &str = "INFINITY_ELASTIC";
}

/// The world sizes [`vars::ELASTIC`] allows (`None`: not set, or not `MIN:MAX:NPROC` of counts).
pub fn elastic_worlds() -> Option<(String, Vec<usize>)> {
    let v = std::env::var(vars::ELASTIC).ok()?;
    let n: Vec<usize> = v.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [min, max, per_node] = n[..] else { return None };
    (min >= 1 && min <= max && per_node >= 1)
        .then(|| (format!("{min}:{max}"), (min..=max).map(|k| k * per_node).collect()))
}

/// What torchrun tells the processes it starts (`torch.distributed.run`), read where ours are not set.
pub mod torchrun {
    /// `True` when torchrun's agent hosts its own store (c10d's protocol) at MASTER_PORT (its static
    /// rendezvous always, c10d's in recent releases): rank 0 hosts ours at the next port.
    pub const USE_AGENT_STORE: &str = "TORCHELASTIC_USE_AGENT_STORE";
    pub const RUN_ID: &str = "TORCHELASTIC_RUN_ID";
    /// The restart of its workers (0 first): a restarted group resumes from its newest checkpoint.
    pub const RESTART_COUNT: &str = "TORCHELASTIC_RESTART_COUNT";
}

/// Exit code of a training process whose command line or config is wrong (as clap's usage errors): a
/// restart would fail the same way, so the agent does not restart its group.
pub const EXIT_BAD_INVOCATION: i32 = 2;

/// Store key (under an attempt's prefix) the ranks set when a stop signal ended them before the run's
/// end, so their agents tell a checkpoint-and-stop from a finished run (both exit 0).
pub const STOPPED_EARLY: &str = "stopped-early";

/// Exit code of a training process that met a problem in its dataset's contents (a corrupt shard, a
/// row that fails its checks, a sample with non-finite values): a restarted group would read the same
/// rows in the same order and fail the same way, so the agent does not restart it. (EX_DATAERR of
/// sysexits.h.)
pub const EXIT_BAD_DATA: i32 = 65;

/// Exit code of a training process whose run diverged (`optim.max_nonfinite` non-finite steps in a
/// row): a run is a pure function of its config, so a restarted group would resume from the last good
/// checkpoint and diverge at the same step; the agent does not restart it.
pub const EXIT_DIVERGED: i32 = 87;

/// Exit code of a training process that made no progress for `run.stall_timeout_s` (a hang outside a
/// collective) and ended itself: a restart may well succeed (EX_TEMPFAIL of sysexits.h), so the agent
/// restarts its group from the last checkpoint as for a crash.
pub const EXIT_STALLED: i32 = 75;

/// Exit code of a training process a stop signal ended during its setup (before its first step,
/// nothing trained, so nothing to checkpoint): 128 + SIGTERM, as the signal's default action reports.
/// After a signal the agent forwarded, a clean stop as a checkpointed one is.
pub const EXIT_STOPPED_BEFORE_START: i32 = 143;

/// This machine's name (`gethostname`: `$HOSTNAME` is a shell variable, often not exported); `None`
/// where it has none.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0)?;
    (rc == 0 && end > 0).then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Whether a rank's exit code says that a restart would fail the same way.
pub fn is_permanent_failure(code: Option<i32>) -> bool {
    matches!(code, Some(EXIT_BAD_INVOCATION | EXIT_BAD_DATA | EXIT_DIVERGED))
}

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
        // but run once, on one node: there they describe no rank (as the agent's SLURM_NNODES, mod.rs)
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

/// A store port of its own for SLURM job `job_id`'s step `step_id`: `base + (job + step × 6173) mod
/// 10000`, so two jobs sharing a node, or two sruns of one allocation, do not meet at one default port
/// (`None` outside SLURM). A requeued job's steps count from 0 again and find the same ports. A job id
/// that is not a number is an error naming it; a step named rather than numbered (as [`slurm_run_id`]
/// keeps it: `JOB.NAME`) counts as a hash of its name, so it keeps apart from step 0 too.
pub fn job_port(base: u16, job_id: Option<&str>, step_id: Option<&str>) -> Result<Option<u16>> {
    let Some(job_id) = job_id else { return Ok(None) };
    let job = (job_id.trim().parse::<u64>())
        .with_context(|| format!("SLURM_JOB_ID={job_id:?}: expected SLURM's job number"))?;
    let named = |s: &str| s.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let step = step_id.map(str::trim).map_or(0, |s| s.parse::<u64>().unwrap_or_else(|_| named(s)));
    // (coprime to 10000: a job's first 10000 steps take distinct ports; step 1 lands far from job + 1)
    const STEP_STRIDE: u64 = 6173;
    Ok(Some(base + ((job % 10_000 + (step % 10_000) * STEP_STRIDE) % 10_000) as u16))
}

/// The run id SLURM gives a job step: `JOB` for the first (step 0, or outside a step), `JOB.STEP` for a
/// later srun of the allocation, so that its store keys and log folders keep apart from the first's.
pub fn slurm_run_id(job_id: Option<String>, step_id: Option<&str>) -> Option<String> {
    let job = job_id?.trim().to_string();
    Some(match step_id.map(str::trim) {
        None | Some("0") => job,
        Some(step) => format!("{job}.{step}"),
    })
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

/// Expand a SLURM node list: `node[01-03,07],gpu5` → node01, node02, node03, node07, gpu5; a host
/// with several bracket groups takes every combination, the first group outermost (as `scontrol show
/// hostnames`): `r[1-2]-g[3-4]` → r1-g3, r1-g4, r2-g3, r2-g4.
pub fn parse_nodelist(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // one item: a host expression with any number of bracketed range lists, up to the next
        // top-level comma
        let end = {
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
                if !(0..=1).contains(&depth) {
                    bail!("node list {list:?}: unbalanced brackets");
                }
            }
            if depth != 0 {
                bail!("node list {list:?}: unbalanced brackets");
            }
            end
        };
        let item = &rest[..end];
        rest = rest[end..].trim_start_matches(',');
        // (each group is a level of expand_host's recursion)
        if item.matches('[').count() > MAX_GROUPS {
            let shown: String = item.chars().take(40).collect();
            bail!("node list of {} bytes: a host with more than {MAX_GROUPS} bracket groups (`{shown}…`)", list.len());
        }
        out.extend(expand_host(list, item)?);
        if out.len() > MAX_NODES {
            bail!("node list {list:?}: more than {MAX_NODES} hosts");
        }
    }
    Ok(out)
}

/// The most hosts a node list may expand to (a typo's range would otherwise allocate without bound).
const MAX_NODES: usize = 100_000;

/// The most bracket groups one host of a node list may have (`rack[1-4]-node[01-16]` has two).
const MAX_GROUPS: usize = 16;

/// Every host one expression of a node list names (`list` for errors); brackets are balanced.
fn expand_host(list: &str, item: &str) -> Result<Vec<String>> {
    let Some(open) = item.find('[') else { return Ok(vec![item.to_string()]) };
    let close = open + item[open..].find(']').with_context(|| format!("node list {list:?}: `{item}`"))?;
    let (prefix, ranges) = (&item[..open], &item[open + 1..close]);
    let suffixes = expand_host(list, &item[close + 1..])?;
    let mut out = Vec::new();
    for range in ranges.split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let width = a.len();
        let bad = || format!("node list {list:?}: range `{range}` in `{item}` (expected N or N-M, digits)");
        let (lo, hi): (u64, u64) = (a.parse().with_context(bad)?, b.parse().with_context(bad)?);
        if hi < lo {
            bail!("{}", bad());
        }
        // (counted before any host is made, the ranges of this group together)
        let hosts = (hi - lo).checked_add(1).and_then(|n| n.checked_mul(suffixes.len() as u64));
        if hosts.is_none_or(|n| n.saturating_add(out.len() as u64) > MAX_NODES as u64) {
            bail!("node list {list:?}: more than {MAX_NODES} hosts");
        }
        for i in lo..=hi {
            out.extend(suffixes.iter().map(|s| format!("{prefix}{i:0width$}{s}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn node_lists_expand() {
        assert_eq!(parse_nodelist("node[01-03,07],gpu5").unwrap(), ["node01", "node02", "node03", "node07", "gpu5"]);
        assert_eq!(parse_nodelist("a1").unwrap(), ["a1"]);
        assert_eq!(parse_nodelist("x[8-10]").unwrap(), ["x8", "x9", "x10"]);
        assert!(parse_nodelist("n[1-2").is_err());
        assert!(parse_nodelist("n[3-1]").is_err());
        // (a crafted list of 40,000 groups overflowed the stack)
        let e = parse_nodelist(&format!("a{}", "[1]".repeat(40_000))).unwrap_err().to_string();
        assert!(e.contains("a host with more than 16 bracket groups"), "{e}");
        assert_eq!(parse_nodelist(&format!("a{}", "[1]".repeat(16))).unwrap(), [format!("a{}", "1".repeat(16))]);
        // (a range's count near u64::MAX added to the hosts before it overflowed)
        let e = parse_nodelist("n[1,1-18446744073709551615]").unwrap_err().to_string();
        assert!(e.contains("more than 100000 hosts"), "{e}");
        // several bracket groups in one host: every combination, zero padding kept (scontrol's order)
        assert_eq!(
            parse_nodelist("rack1-[01-02]-gpu[3-4]").unwrap(),
            ["rack1-01-gpu3", "rack1-01-gpu4", "rack1-02-gpu3", "rack1-02-gpu4"]
        );
        assert_eq!(parse_nodelist("a[1,3]b[08-09],c").unwrap(), ["a1b08", "a1b09", "a3b08", "a3b09", "c"]);
        assert!(parse_nodelist("n[[1-2]]").is_err());
        assert!(parse_nodelist("n[1-2]x[a]").is_err());
        assert!(parse_nodelist("n[0-99999]m[0-99999]").is_err());
        // many ranges in one group, each within the bound, and a range at u64's end: refused, not made
        let many = format!("a[1-2]b[{}]", ["0-99999"; 8].join(","));
        assert!(parse_nodelist(&many).unwrap_err().to_string().contains("more than 100000 hosts"));
        assert!(parse_nodelist("n[0-18446744073709551615]").is_err());
    }

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
