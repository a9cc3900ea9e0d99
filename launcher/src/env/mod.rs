//! Where a training process finds its place in the group: torchrun-style variables (set by our agent,
//! torchrun, or Kubernetes training operators), or SLURM's when `srun` starts one task per rank.

mod dist_env;
pub mod slurm;

pub use dist_env::{restart_attempt, DistEnv};

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
