//! `infinity launch`'s command line: the group's nodes and ranks, the rendezvous, restarts, logs, stops,
//! the ranks' CPUs and output, and what each rank runs.

use std::path::PathBuf;

use super::{nproc, LocalRanks, Nodes, NumaBinding};

#[derive(clap::Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Ranks on this node: a number, `gpu` (one per GPU the node shows: CUDA_VISIBLE_DEVICES's entries,
    /// else the driver's GPUs), `auto` (one per GPU, else one) or `cpu` (one per CPU the agent may
    /// use), as torchrun takes them (default 1, or PET_NPROC_PER_NODE as torchrun reads it).
    #[arg(long = "nproc-per-node", value_name = "NPROC_PER_NODE", value_parser = nproc::parse_nproc)]
    pub nproc_given: Option<usize>,
    /// The ranks on this node as planned: `--nproc-per-node`, PET_NPROC_PER_NODE or 1 (set by `launch`).
    #[arg(skip)]
    pub nproc_per_node: usize,
    /// Nodes in the job: N, or MIN:MAX for an elastic group that goes on with whichever nodes are up
    /// (default 1, PET_NNODES as torchrun reads it (Kubeflow's PyTorchJob), or SLURM_NNODES inside
    /// srun: a job step, not the batch script or salloc shell).
    #[arg(long)]
    pub nnodes: Option<Nodes>,
    /// This node's index (default 0, PET_NODE_RANK, or SLURM_NODEID inside srun); an elastic group
    /// numbers its nodes as they join.
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// HOST:PORT of node 0's store (default: a free local port on one node; PET_RDZV_ENDPOINT or
    /// PET_MASTER_ADDR:PET_MASTER_PORT; in SLURM, the step's first node at 30000 + (SLURM_JOB_ID +
    /// 6173·SLURM_STEP_ID) mod 10000).
    #[arg(long)]
    pub rdzv: Option<String>,
    /// Names the run in store keys and log folders (default PET_RDZV_ID, or SLURM_JOB_ID (JOB.STEP for
    /// a later job step); on one node outside SLURM `run-DATE-TIME-PID`, otherwise `run`).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Shared secret to join the store (default INFINITY_RDZV_TOKEN; random on one node).
    #[arg(long)]
    pub token: Option<String>,
    /// Restarts of the whole group after a failure.
    #[arg(long, default_value_t = 0)]
    pub max_restarts: u32,
    /// Per-rank logs: LOG_DIR/RUN_ID/attempt_K/rank_R.log.
    #[arg(long, default_value = "runs/launch-logs")]
    pub log_dir: PathBuf,
    /// Seconds between forwarding a signal (or stopping an elastic group to regroup) and SIGKILL: time
    /// for the ranks' step and stop checkpoint. A failed group's other ranks, which cannot checkpoint
    /// without the failed one, get at most 30 s of it.
    #[arg(long, default_value_t = 30.0, value_parser = crate::positive_seconds())]
    pub grace_s: f64,
    /// Seconds to wait for all agents to arrive (the ranks wait their config's `dist.rdzv_timeout_s`).
    #[arg(long, default_value_t = 300.0, value_parser = crate::positive_seconds())]
    pub rdzv_timeout_s: f64,
    /// Elastic groups: seconds without a new agent after which a round of at least MIN nodes starts.
    #[arg(long, default_value_t = 30.0, value_parser = crate::positive_seconds())]
    pub rdzv_last_call_s: f64,
    /// The agent's exit code when a signal stopped the group and the ranks stopped cleanly (checkpoint
    /// written): 0, or e.g. 143 where the scheduler must see a preempted pod as failed to run it again
    /// (a Kubernetes Job's podFailurePolicy, a PyTorchJob's `restartPolicy: ExitCode`).
    #[arg(long, value_name = "CODE", default_value_t = 0)]
    pub preempted_exit_code: u8,
    /// Stop the group as a SIGTERM does (each rank checkpoints after its step and exits) once this long
    /// has passed since the agent started, in sbatch's `--time` formats (`MM`, `HH:MM:SS`,
    /// `D-HH:MM:SS`): for schedulers that end a job at its limit without a warning signal. Leave a
    /// step, the checkpoint and `--grace-s` inside the job's own limit; the exit code is
    /// `--preempted-exit-code`'s.
    #[arg(long, value_name = "TIME", value_parser = crate::time_limit())]
    pub time_limit: Option<u64>,
    /// Copy only these local ranks' output to the console (`0`, `0,3`, `0-3`; torchrun's flag): every
    /// rank's output still goes to its log file, and a failed rank's last lines to the failure report.
    #[arg(long, value_name = "RANKS", value_parser = LocalRanks::parse)]
    pub local_ranks_filter: Option<LocalRanks>,
    /// Bind each rank to CPUs near its GPU (torchrun's flag): `node` (its GPU's NUMA node), `socket`,
    /// `exclusive` (a share of the node's physical cores of its own) or `core-complex` (an L3 cache
    /// domain of the node). Ranks without a GPU are spread over the nodes; only CPUs the agent may use
    /// are handed out.
    #[arg(long, value_enum, value_name = "MODE")]
    pub numa_binding: Option<NumaBinding>,
    /// What each rank runs: an `infinity` subcommand (`train CONFIG …`) or any program.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// The most a failed group's other ranks get between SIGTERM and SIGKILL (seconds): they cannot
/// checkpoint without the failed rank, and a long `--grace-s` would hold back each restart.
const FAILURE_GRACE_S: f64 = 30.0;

impl LaunchArgs {
    /// The grace a failed group's other ranks get (a lost store's too): `--grace-s`, at most
    /// [`FAILURE_GRACE_S`].
    pub fn failure_grace_s(&self) -> f64 {
        self.grace_s.min(FAILURE_GRACE_S)
    }
}
