//! Data parallelism for the training loop: join the group the environment describes (our agent,
//! torchrun-style schedulers, SLURM), and the collectives the loop needs. A single process gets the
//! identity communicator, so the loop has one code path.
//!
//! ZeRO-1's sharded optimiser and its gathers live in `zero1.rs`, stopping on a signal and the fault
//! drills in `stop.rs`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use infinity_launcher::comm::{Communicator, Solo, TcpRing};
use infinity_launcher::env::DistEnv;
use infinity_launcher::store::{StoreClient, StoreServer};

use super::config::{CommBackend, DistSection};
use super::rank_identity::{self, RankIdentity};
use super::stop::SetupGuard;

pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// Restart attempt of the launcher (0 outside one).
    pub attempt: u32,
    comm: Box<dyn Communicator>,
    /// The group's store and this attempt's key prefix (none alone).
    store: Option<(StoreClient, String)>,
    /// The store, when this process hosts it (rank 0 without an agent).
    _server: Option<StoreServer>,
    /// Every rank's host and build, from [`Dist::agree_on_config`] (none alone).
    identities: Vec<RankIdentity>,
    /// How long a collective waits for the other ranks (`dist.timeout_s`; alone: none).
    pub timeout: Duration,
}

impl Dist {
    pub fn solo() -> Dist {
        let identities = Vec::new();
        let timeout = Duration::MAX;
        Dist { rank: 0, world: 1, attempt: 0, comm: Box::new(Solo), store: None, _server: None, identities, timeout }
    }

    /// Join the group of the process environment (or stay alone). `gpu`: this rank computes on a GPU
    /// (with `dist.backend = "auto"`, NCCL when every rank does).
    /// `setup`: the guard that ends the process at a stop signal (nothing has trained), told that it
    /// waits for the group meanwhile.
    pub fn join(cfg: &DistSection, gpu: bool, setup: &SetupGuard) -> Result<Dist> {
        match DistEnv::from_env()? {
            // (a group of one the launcher restarts is on a later attempt too)
            None => Ok(Dist { attempt: infinity_launcher::env::restart_attempt()?, ..Dist::solo() }),
            Some(env) => {
                setup.waiting(Some("while waiting for the other ranks"));
                let dist = Self::join_env(&env, cfg, gpu)?;
                setup.waiting(None);
                if dist.world > 1 {
                    setup.grouped();
                }
                Ok(dist)
            }
        }
    }

    pub fn join_env(env: &DistEnv, cfg: &DistSection, gpu: bool) -> Result<Dist> {
        // before any rendezvous: every rank fails the same way, at once
        backend_available(cfg).map_err(|e| anyhow::anyhow!("rank {}: {e}", env.rank))?;
        let rdzv_timeout = Duration::from_secs_f64(cfg.rdzv_timeout_s);
        let comm_timeout = Duration::from_secs_f64(cfg.timeout_s);
        let server = if env.rank == 0 && !env.agent_store {
            let addr = format!("0.0.0.0:{}", env.master_port).parse()?;
            let how = format!(
                "rank 0 hosting the store at port {} (another, alike on every rank: {})",
                env.master_port,
                infinity_launcher::env::vars::STORE_PORT
            );
            Some(StoreServer::spawn(addr, env.token.clone()).context(how)?)
        } else {
            None
        };
        let who = format!("rank {}", env.rank);
        let mut store = StoreClient::connect(&env.store_addr(), &env.token, &who, rdzv_timeout)?;
        let prefix = env.prefix();
        store.rendezvous(&format!("{prefix}/ranks"), env.rank, env.world, rdzv_timeout)?;
        let backend = match cfg.backend {
            CommBackend::Auto => auto_backend(&mut store, &prefix, env, gpu, rdzv_timeout)?,
            chosen => chosen,
        };
        let comm: Box<dyn Communicator> = match backend {
            CommBackend::Auto | CommBackend::Ring => {
                // the address this rank's ring listener is reached at: the one its store connection left
                // from, unless INFINITY_RING_HOST names another
                let (host, listen_all) = match std::env::var("INFINITY_RING_HOST") {
                    Ok(h) if !h.is_empty() => (h, false),
                    _ => {
                        let ip = store.local_ip()?;
                        (ip.to_string(), env.ring_listens_everywhere(ip))
                    }
                };
                let (rank, world) = (env.rank, env.world);
                let ring = TcpRing::connect(&mut store, &prefix, rank, world, &host, listen_all, comm_timeout)
                    .with_context(|| format!("rank {}: building the ring", env.rank))?;
                Box::new(ring)
            }
            CommBackend::Nccl => nccl(&mut store, &prefix, env, comm_timeout)?,
        };
        let kind = if backend == CommBackend::Nccl { "NCCL" } else { "TCP ring" };
        tracing::info!(
            "rank {} of {} joined run `{}` (attempt {}, {kind})",
            env.rank,
            env.world,
            env.run_id,
            env.attempt
        );
        let store = Some((store, prefix));
        let (rank, world, attempt) = (env.rank, env.world, env.attempt);
        let timeout = comm_timeout;
        Ok(Dist { rank, world, attempt, comm, store, _server: server, identities: Vec::new(), timeout })
    }

    /// Tells the launcher that this group stopped on a signal before the run's end (every rank does:
    /// its agent sees its own ranks exit 0 and must not take that for a finished run).
    pub fn mark_stopped_early(&mut self, step: u64) {
        if let Some((store, prefix)) = self.store.as_mut() {
            let key = format!("{prefix}/{}", infinity_launcher::env::STOPPED_EARLY);
            if let Err(e) = store.set(&key, step.to_string().as_bytes()) {
                tracing::warn!("store: marking the stop: {e:#}");
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Every rank's host, by rank (empty alone, and before [`Dist::agree_on_config`]).
    pub fn hosts(&self) -> Vec<String> {
        self.identities.iter().map(|id| id.host.clone()).collect()
    }

    /// The next collective is for `what` (its line in the flight record: launcher/src/comm/flight.rs).
    pub fn tag(&self, what: &'static str) {
        if let Some(f) = self.comm.flight() {
            f.tag_next(what);
        }
    }

    /// The collectives from now on are of training step `step` (in the flight record).
    pub fn at_step(&self, step: u64) {
        if let Some(f) = self.comm.flight() {
            f.at_step(step);
        }
    }

    /// Sum over ranks, in place (the same bytes on every rank).
    pub fn all_reduce_sum(&mut self, v: &mut [f32]) -> Result<()> {
        Ok(self.comm.all_reduce_sum(v)?)
    }

    /// Mean over ranks, in place (the same bytes on every rank).
    pub fn all_reduce_mean(&mut self, v: &mut [f32]) -> Result<()> {
        if self.world > 1 {
            self.all_reduce_sum(v)?;
            let inv = 1.0 / self.world as f32;
            v.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(())
    }

    /// Mean over ranks of a few f64 metrics, travelling as f32: plenty for the logs and for what judges
    /// the means (the non-finite check, the spike guard, the divergence stop); one rank keeps its f64s.
    pub fn mean_metrics(&mut self, v: &mut [f64]) -> Result<()> {
        if self.world > 1 {
            let mut f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            self.tag("step metrics");
            self.all_reduce_mean(&mut f)?;
            v.iter_mut().zip(&f).for_each(|(a, b)| *a = *b as f64);
        }
        Ok(())
    }

    pub fn broadcast(&mut self, v: &mut [f32]) -> Result<()> {
        Ok(self.comm.broadcast(v, 0)?)
    }

    pub fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        Ok(self.comm.reduce_scatter_sum(send, recv)?)
    }

    pub fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        Ok(self.comm.all_gather(send, recv)?)
    }

    /// Rank r's `send` at `recv[r·n ..]` on rank 0 alone, the only rank that passes `recv`.
    pub fn gather_to_leader(&mut self, send: &[f32], recv: Option<&mut [f32]>) -> Result<()> {
        Ok(self.comm.gather(send, recv, 0)?)
    }

    /// The NCCL communicator, when this group runs over NCCL (device-buffer collectives).
    #[cfg(feature = "cuda")]
    pub fn nccl(&mut self) -> Option<&mut infinity_launcher::comm::NcclComm> {
        self.comm.nccl()
    }

    /// Whether this group runs over NCCL.
    pub fn has_nccl(&mut self) -> bool {
        #[cfg(feature = "cuda")]
        return self.nccl().is_some();
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// Every rank waits for the others here; `what` names the barrier in the flight record.
    pub fn barrier(&mut self, what: &'static str) -> Result<()> {
        self.tag(what);
        Ok(self.comm.barrier()?)
    }

    /// Rank 0's `step` on every rank (exact up to 2^48: two f32 halves carry it).
    pub fn broadcast_step(&mut self, step: u64) -> Result<u64> {
        let mut at = [(step >> 24) as f32, (step & 0xff_ffff) as f32];
        self.broadcast(&mut at)?;
        Ok(((at[0] as u64) << 24) | at[1] as u64)
    }

    /// Every rank continues from rank 0's checkpoint (`from`, whose state is `saved`; none: a fresh
    /// start), or every rank stops (exit 2: a restart finds the same) with an error naming the steps: a
    /// run.dir that is not one shared folder, or nodes given different `--resume` paths, would otherwise
    /// fail later in a collective, or silently train on with two states (each rank its own optimiser
    /// moments: the weights drift apart). Checkpoints of one step are told apart by their files'
    /// checksums.
    pub fn agree_on_start(&mut self, saved: Option<&super::checkpoint::TrainState>, from: Option<&Path>) -> Result<()> {
        let step = saved.map_or(0, |s| s.step);
        let files = saved.map_or(String::new(), |s| format!("{} {}", s.model_crc32c, s.optim_crc32c));
        let id = u64::from(crc32c::crc32c(files.as_bytes()));
        self.tag("resume step agreement");
        let (leader, leader_id) = (self.broadcast_step(step)?, self.broadcast_step(id)?);
        let differs = (leader, leader_id) != (step, id);
        self.tag("resume step agreement");
        if !self.any(differs)? {
            return Ok(());
        }
        let mine = from.map_or("a fresh start".to_string(), |p| p.display().to_string());
        let what = match (leader == step, leader_id == id) {
            (true, true) => format!(
                "rank {} starts from {mine} (step {leader}), another rank from another checkpoint (its log names it)",
                self.rank
            ),
            (true, false) => format!(
                "rank {} resumes from {mine}, a checkpoint of step {step} with other weights or optimiser state than \
                 rank 0's of that step",
                self.rank
            ),
            (false, _) => format!("rank {} starts from step {step} ({mine}), rank 0 from step {leader}", self.rank),
        };
        Err(super::unrecoverable(anyhow::anyhow!(
            "{what}: every rank must start from the same checkpoint: run.dir one folder every rank sees (a shared \
             file system), and the same --resume on every node"
        )))
    }

    /// Every rank trains rank 0's config ([`PER_NODE`] paths aside, where both are set) on the same data
    /// (`data`'s and `val`'s fingerprints): nodes started with
    /// different files or `--set`s would otherwise train on apart (each rank its own learning rate, the
    /// logged loss their mean) or stop at different steps. A rank whose settings differ names them (rank
    /// 0's value → its own); every rank stops, rank 0 naming the ranks (and hosts) that differ.
    ///
    /// The same collective gathers every rank's host and build ([`rank_identity`]): rank 0 warns of ranks
    /// that run another build than its own (a warning: the same source built twice may differ byte for
    /// byte).
    pub fn agree_on_config(&mut self, config_toml: &str, (data, val): (&str, Option<&str>)) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let mut mine = format!("{config_toml}\n[dataset]\nfingerprint = {data:?}\n");
        if let Some(val) = val {
            mine += &format!("val_fingerprint = {val:?}\n");
        }
        // rank 0's text, a byte per f32 (exact), its length first
        let mut len = [mine.len() as f32];
        self.tag("config agreement");
        self.broadcast(&mut len)?;
        let mut text: Vec<f32> = match self.is_leader() {
            true => mine.bytes().map(f32::from).collect(),
            false => vec![0.0; len[0] as usize],
        };
        self.tag("config agreement");
        self.broadcast(&mut text)?;
        let leader = String::from_utf8(text.iter().map(|&b| b as u8).collect()).context("rank 0's config")?;
        let differ = differences(&leader, &mine)?;
        let mut slots = rank_identity::slots(self.rank, self.world, !differ.is_empty(), rank_identity::this_rank());
        self.tag("config agreement");
        self.all_reduce_sum(&mut slots)?;
        let ranks = rank_identity::from_slots(&slots, self.world);
        let differing: Vec<usize> = (0..self.world).filter(|&r| ranks[r].0).collect();
        self.identities = ranks.into_iter().map(|(_, id)| id).collect();
        if let Some(w) = rank_identity::build_warning(&self.identities).filter(|_| self.is_leader()) {
            tracing::warn!("{w}");
        }
        if !differing.is_empty() {
            // rank 0 names the settings too, of the first rank that differs (its text summed in, the
            // others adding zeros: exact), so the console of the node it runs on says what to mend
            let first = differing[0];
            let theirs = if self.rank == first { differ.join("; ") } else { String::new() };
            let mut len = [theirs.len() as f32];
            self.tag("config agreement");
            self.all_reduce_sum(&mut len)?;
            let mut text = vec![0.0f32; len[0] as usize];
            text.iter_mut().zip(theirs.bytes()).for_each(|(t, b)| *t = f32::from(b));
            self.tag("config agreement");
            self.all_reduce_sum(&mut text)?;
            let named = String::from_utf8_lossy(&text.iter().map(|&b| b as u8).collect::<Vec<u8>>()).into_owned();
            let others = match differing.len() {
                1 => String::new(),
                2 => "; 1 more rank differs, its log names its settings".to_string(),
                n => format!("; {} more ranks differ, their logs name theirs", n - 1),
            };
            if differ.is_empty() {
                // the ranks whose config is rank 0's exit a moment after those that differ, so the launcher
                // takes a differing rank's failure, posted first, for the root cause (and its node)
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            // (a config that differs fails every restart alike: not one for the launcher to restart, where a
            // collective above that failed, a peer lost while the group forms, is)
            let why = match differ.is_empty() {
                true => format!(
                    "{}: config differs from rank 0's: rank {first}'s: {named} (rank 0's → rank {first}'s){others}; every \
                     rank must train one config (the same file and --set overrides on every node) on the same dataset",
                    rank_identity::name_ranks(&differing, &self.identities),
                ),
                false => format!(
                    "rank {}'s config differs from rank 0's: {} (rank 0's → this rank's); every rank must train one \
                     config (the same file and --set overrides on every node) on the same dataset",
                    self.rank,
                    differ.join("; ")
                ),
            };
            return Err(super::setup::unrecoverable(anyhow::anyhow!(why)));
        }
        Ok(())
    }

    /// Whether any rank saw `flag` set: all ranks agree on the step at which to stop.
    pub fn any(&mut self, flag: bool) -> Result<bool> {
        Ok(self.any_each([flag])?[0])
    }

    /// [`Dist::any`] of several flags in one collective.
    pub fn any_each<const N: usize>(&mut self, flags: [bool; N]) -> Result<[bool; N]> {
        let mut v = flags.map(|f| f as u8 as f32);
        self.all_reduce_sum(&mut v)?;
        Ok(v.map(|x| x > 0.0))
    }
}

/// Settings a node may choose for itself: where it finds the run folder, the data and a fine-tune's
/// source weights (mount points differ; the data's contents are compared by fingerprint, the ranks'
/// weights are rank 0's), and its loader threads. Set on every node
/// or on none. So may the folder of each dataset of a mix, `data.mix[i].dir`, and of each more
/// validation set, `val.sets[i].dir`.
pub const PER_NODE: [&str; 5] = ["run.dir", "data.dir", "val.dir", "model.init_from", "data.workers"];

/// Whether the change line `c` (`key: …`) is of a [`PER_NODE`] setting.
fn is_per_node(c: &str) -> bool {
    let key = c.split(':').next().unwrap_or("");
    let listed = |table: &str| {
        key.strip_prefix(table).and_then(|k| k.strip_suffix("].dir")).is_some_and(|i| i.parse::<usize>().is_ok())
    };
    PER_NODE.contains(&key) || listed("data.mix[") || listed("val.sets[")
}

/// The settings of `mine` that differ from rank 0's `leader` text, as `key: rank 0's → mine` lines:
/// [`PER_NODE`] paths only where one side lacks them (validation runs collectives: one node cannot
/// validate alone).
fn differences(leader: &str, mine: &str) -> Result<Vec<String>> {
    let per_node = |c: &String| is_per_node(c) && !c.contains("(unset)");
    // (a dataset's fingerprint says that it differs; its folders, which may differ anyway, say which)
    let data_dir = |text: &str| {
        let v: Option<toml::Value> = toml::from_str(text).ok();
        v.and_then(|v| Some(v.get("data")?.get("dir")?.as_str()?.to_string())).unwrap_or_else(|| "?".into())
    };
    let folders = |c: String| match c.starts_with("dataset.fingerprint:") {
        true => format!("{c} (data.dir: {} → {}; with data.mix, its datasets too)", data_dir(leader), data_dir(mine)),
        false => c,
    };
    Ok(super::rundir::config_changes(leader, mine)?.into_iter().filter(|c| !per_node(c)).map(folders).collect())
}

/// `dist.backend = "auto"`: NCCL when every rank computes on a GPU and finds the NCCL library (in a
/// build with CUDA), else the TCP ring. Every rank counts itself in the store and reads the same total,
/// so all choose alike.
fn auto_backend(
    store: &mut StoreClient,
    prefix: &str,
    env: &DistEnv,
    gpu: bool,
    timeout: Duration,
) -> Result<CommBackend> {
    let on_gpu = gpu && nccl_at_hand();
    store.add(&format!("{prefix}/backend/gpu_ranks"), on_gpu as i64)?;
    store.set(&format!("{prefix}/backend/voted/{}", env.rank), b"1")?;
    let keys: Vec<String> = (0..env.world).map(|r| format!("{prefix}/backend/voted/{r}")).collect();
    if let Err(missing) = store.wait(&keys, timeout)? {
        bail!("rank {}: choosing dist.backend = \"auto\": {} ranks never answered", env.rank, missing.len());
    }
    let gpus = store.add(&format!("{prefix}/backend/gpu_ranks"), 0)? as usize;
    if gpus == env.world {
        return Ok(CommBackend::Nccl);
    }
    if gpus > 0 && env.rank == 0 {
        tracing::warn!(
            "dist.backend = \"auto\": {gpus} of {} ranks compute on a GPU with NCCL at hand, the others do not; \
             the TCP ring sums their gradients (through the host)",
            env.world
        );
    }
    Ok(CommBackend::Ring)
}

/// Whether this build and machine can build an NCCL communicator (the libraries load).
fn nccl_at_hand() -> bool {
    #[cfg(feature = "cuda")]
    return infinity_launcher::comm::nccl_available();
    #[cfg(not(feature = "cuda"))]
    false
}

/// The NCCL communicator on this rank's GPU, the model's ([`super::compute::device_ordinal`]).
#[cfg(feature = "cuda")]
fn nccl(store: &mut StoreClient, prefix: &str, env: &DistEnv, timeout: Duration) -> Result<Box<dyn Communicator>> {
    use infinity_launcher::comm::NcclComm;
    if !infinity_kernels::cuda::device::device_present() {
        bail!("dist.backend = \"nccl\" but rank {} finds no CUDA driver or device", env.rank);
    }
    let count = cudarc::driver::CudaContext::device_count().context("counting CUDA devices")? as usize;
    let ordinal = super::compute::device_ordinal(env.local_rank, count)
        .and_then(|o| o.context("no CUDA device is visible"))
        .with_context(|| format!("rank {}", env.rank))?;
    let ctx = cudarc::driver::CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
    // a stream of its own, so that collectives run beside the model's kernels (the gradients' buckets
    // during the backward); whoever hands it a device buffer orders the two streams (NcclComm::after)
    // SAFETY: cudarc's own ordering of buffers between streams is not relied on (it would order whole
    // buffers, making the backward wait for every bucket in flight); each use orders them by hand
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().with_context(|| format!("a stream for NCCL on CUDA device {ordinal}"))?;
    let comm = NcclComm::connect(store, prefix, env.rank, env.world, stream, timeout, true)
        .with_context(|| format!("rank {}: building the NCCL communicator", env.rank))?;
    Ok(Box::new(comm))
}

#[cfg(not(feature = "cuda"))]
fn nccl(_: &mut StoreClient, _: &str, env: &DistEnv, _: Duration) -> Result<Box<dyn Communicator>> {
    // (join_env refuses dist.backend = "nccl" in this build, and "auto" never chooses it)
    bail!("rank {}: this build has no NCCL (the `cuda` feature)", env.rank)
}

/// `dist.backend = "nccl"` needs a build with the `cuda` feature (checked by the command line before a
/// run, and by every rank before it joins its group).
pub fn backend_available(cfg: &DistSection) -> Result<()> {
    if cfg.backend == CommBackend::Nccl && !cfg!(feature = "cuda") {
        bail!(
            "dist.backend = \"nccl\" needs a build with the `cuda` feature (cargo build --release --features \
             cuda); use dist.backend = \"ring\" otherwise"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_may_differ_in_their_paths_but_not_in_having_them() {
        let leader = "[data]\ndir = \"/a\"\nworkers = 2\n[optim]\nlr = 0.002\n[val]\ndir = \"/v\"\n";
        let mounts = "[data]\ndir = \"/b\"\nworkers = 4\n[optim]\nlr = 0.002\n[val]\ndir = \"/w\"\n";
        assert!(differences(leader, mounts).unwrap().is_empty());
        let other = "[data]\ndir = \"/a\"\nworkers = 2\n[optim]\nlr = 0.001\n";
        assert_eq!(differences(leader, other).unwrap(), ["optim.lr: 0.002 → 0.001", "val.dir: \"/v\" → (unset)"]);
        // a mix's folders may differ too, its weights not
        let mix = |dir: &str, weight: f64| format!("{leader}[[data.mix]]\ndir = \"{dir}\"\nweight = {weight}\n");
        assert!(differences(&mix("/m", 0.5), &mix("/n", 0.5)).unwrap().is_empty());
        assert_eq!(differences(&mix("/m", 0.5), &mix("/m", 0.2)).unwrap(), ["data.mix[0].weight: 0.5 → 0.2"]);
        assert_eq!(differences(&mix("/m", 0.5), leader).unwrap().len(), 2, "a mix on one node alone");
        // another dataset: its fingerprint, and the folders of both
        let data = |text: &str, print: &str| format!("{text}[dataset]\nfingerprint = \"{print}\"\n");
        assert_eq!(
            differences(&data(leader, "f1"), &data(mounts, "f2")).unwrap(),
            ["dataset.fingerprint: \"f1\" → \"f2\" (data.dir: /a → /b; with data.mix, its datasets too)"]
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn nccl_without_the_cuda_feature_is_a_clear_error() {
        let env = DistEnv {
            rank: 1,
            world: 2,
            local_rank: 1,
            local_world: 2,
            local_world_given: true,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            token: "t".into(),
            run_id: "r".into(),
            attempt: 0,
            agent_store: true,
        };
        let cfg = DistSection { backend: CommBackend::Nccl, ..Default::default() };
        let e = Dist::join_env(&env, &cfg, true).err().expect("must fail").to_string();
        assert!(e.contains("rank 1") && e.contains("`cuda` feature"), "{e}");
    }
}
