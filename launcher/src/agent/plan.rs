//! What an agent's command line and environment (SLURM's job step, the launcher's variables) make of
//! the group: its node count, this node's rank, the rendezvous address, the shared token and the run id,
//! checked before anything starts.

use anyhow::{bail, ensure, Context, Result};

use super::{LaunchArgs, Nodes};
use crate::env::{job_port, parse_nodelist, vars};

/// Where this agent stands in its group.
pub(super) struct Plan {
    /// The number of nodes (the most, for an elastic group).
    pub(super) nnodes: usize,
    /// `--nnodes MIN:MAX`.
    pub(super) elastic: Option<(usize, usize)>,
    pub(super) node_rank: usize,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) run_id: String,
    pub(super) token: String,
}

pub(super) fn plan(a: &LaunchArgs) -> Result<Plan> {
    plan_with(a, |k| std::env::var(k).ok())
}

/// [`plan`] with the environment looked up by `env` (tests pass a map).
fn plan_with(a: &LaunchArgs, env: impl Fn(&str) -> Option<String>) -> Result<Plan> {
    // SLURM's node count and index describe the job step an srun started, one agent per node; the batch
    // script and an salloc shell see them too, but run on one node, where no other agent comes
    let in_step = env("SLURM_STEP_ID").is_some();
    let slurm_num = |k: &str| env(k).filter(|_| in_step).and_then(|v| v.parse::<usize>().ok());
    let nodes = a.nnodes.or(slurm_num("SLURM_NNODES").map(Nodes::Fixed)).unwrap_or(Nodes::Fixed(1));
    let (nnodes, elastic) = match nodes {
        Nodes::Fixed(n) => (n, None),
        Nodes::Elastic { min, max } => (max, Some((min, max))),
    };
    let node_rank = match elastic {
        Some(_) if a.node_rank.is_some() => {
            bail!("--node-rank: an elastic group (--nnodes MIN:MAX) numbers its nodes in the order they join")
        }
        Some(_) => 0,
        None => a.node_rank.or(slurm_num("SLURM_NODEID")).unwrap_or(0),
    };
    let secs =
        [("--grace-s", a.grace_s), ("--rdzv-timeout-s", a.rdzv_timeout_s), ("--rdzv-last-call-s", a.rdzv_last_call_s)];
    for (flag, v) in secs {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{flag} {v}: expected a number of seconds ≥ 0");
        }
    }
    if a.nproc_per_node == 0 || node_rank >= nnodes {
        bail!("--nproc-per-node must be positive and --node-rank below --nnodes ({node_rank} of {nnodes})");
    }
    let (host, port) = match &a.rdzv {
        Some(r) => {
            let (h, p) = r.rsplit_once(':').with_context(|| format!("--rdzv {r}: expected HOST:PORT"))?;
            ensure!(!h.is_empty(), "--rdzv {r}: expected HOST:PORT (no host given)");
            (h.to_string(), p.parse().with_context(|| format!("--rdzv {r}: bad port"))?)
        }
        None if nnodes == 1 => ("127.0.0.1".to_string(), 0),
        None => {
            // the job step's nodes (an srun over part of the allocation), else the job's
            let list = env("SLURM_STEP_NODELIST")
                .or(env("SLURM_JOB_NODELIST"))
                .context("--rdzv HOST:PORT is needed with several nodes")?;
            let first = parse_nodelist(&list)?.into_iter().next().context("empty SLURM node list")?;
            (first, job_port(30000, env("SLURM_JOB_ID").as_deref()).unwrap_or(29400))
        }
    };
    let token = match a.token.clone().or(env(vars::TOKEN)) {
        Some(t) => t,
        None if nnodes == 1 => format!("{:032x}", rand::random::<u128>()),
        None => bail!("several nodes need a shared token: --token or {} on every node", vars::TOKEN),
    };
    let run_id = match a.run_id.clone().or(env("SLURM_JOB_ID")) {
        Some(id) => id,
        // one node on its own: a name of its own, so that two launches on a machine keep their logs
        // and store keys apart (torchrun's standalone mode draws one too); nodes of a group must agree
        None if nnodes == 1 && elastic.is_none() => {
            format!("run-{}-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"), std::process::id())
        }
        None => "run".into(),
    };
    // a folder name under --log-dir and a prefix of store keys
    ensure!(
        !run_id.is_empty()
            && !run_id.starts_with('.')
            && run_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "--run-id {run_id:?}: expected letters, digits, `.`, `_` or `-` (it names a folder under --log-dir)"
    );
    Ok(Plan { nnodes, elastic, node_rank, host, port, run_id, token })
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
    fn slurm_node_counts_apply_inside_a_job_step_only() {
        let a = Cli::parse_from(["launch", "--nproc-per-node", "1", "--", "true"]).a;
        let batch =
            [("SLURM_NNODES", "2"), ("SLURM_NODEID", "0"), ("SLURM_JOB_NODELIST", "n[1-2]"), ("SLURM_JOB_ID", "7")];
        let with = |extra: &[(&str, &str)]| {
            let vars: Vec<(&str, &str)> = batch.iter().chain(extra).copied().collect();
            plan_with(&a, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
        };
        // an sbatch script or an salloc shell: one node, this one
        let p = with(&[]).unwrap();
        assert_eq!((p.nnodes, p.node_rank, p.host.as_str()), (1, 0, "127.0.0.1"));
        // an srun task: the step's nodes
        let p = with(&[("SLURM_STEP_ID", "0"), ("INFINITY_RDZV_TOKEN", "t")]).unwrap();
        assert_eq!((p.nnodes, p.node_rank, p.host.as_str(), p.port), (2, 0, "n1", 30007));
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
    }
}
