//! Data parallelism for the training loop: join the group the environment describes (our agent,
//! torchrun-style schedulers, SLURM), and the collectives the loop needs. A single process gets the
//! identity communicator, so the loop has one code path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use infinity_launcher::comm::{Communicator, Solo, TcpRing};
use infinity_launcher::env::DistEnv;
use infinity_launcher::store::{StoreClient, StoreServer};

pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// Restart attempt of the launcher (0 outside one).
    pub attempt: u32,
    comm: Box<dyn Communicator>,
    /// The store, when this process hosts it (rank 0 without an agent).
    _server: Option<StoreServer>,
}

impl Dist {
    pub fn solo() -> Dist {
        Dist { rank: 0, world: 1, attempt: 0, comm: Box::new(Solo), _server: None }
    }

    /// Join the group of the process environment (or stay alone).
    pub fn join(rdzv_timeout: Duration, comm_timeout: Duration) -> Result<Dist> {
        match DistEnv::from_env()? {
            None => Ok(Dist::solo()),
            Some(env) => Self::join_env(&env, rdzv_timeout, comm_timeout),
        }
    }

    pub fn join_env(env: &DistEnv, rdzv_timeout: Duration, comm_timeout: Duration) -> Result<Dist> {
        let server = if env.rank == 0 && !env.agent_store {
            let addr = format!("0.0.0.0:{}", env.master_port).parse()?;
            Some(StoreServer::spawn(addr, env.token.clone()).context("rank 0 hosting the store")?)
        } else {
            None
        };
        let who = format!("rank {}", env.rank);
        let mut store = StoreClient::connect(&env.store_addr(), &env.token, &who, rdzv_timeout)?;
        let prefix = env.prefix();
        store.rendezvous(&format!("{prefix}/ranks"), env.rank, env.world, rdzv_timeout)?;
        let host = store.local_ip()?.to_string();
        let ring = TcpRing::connect(&mut store, &prefix, env.rank, env.world, &host, comm_timeout)
            .with_context(|| format!("rank {}: building the ring", env.rank))?;
        tracing::info!("rank {} of {} joined run {} (attempt {})", env.rank, env.world, env.run_id, env.attempt);
        Ok(Dist { rank: env.rank, world: env.world, attempt: env.attempt, comm: Box::new(ring), _server: server })
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Mean over ranks, in place (the same bytes on every rank).
    pub fn all_reduce_mean(&mut self, v: &mut [f32]) -> Result<()> {
        if self.world > 1 {
            self.comm.all_reduce_sum(v)?;
            let inv = 1.0 / self.world as f32;
            v.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(())
    }

    /// Mean over ranks of a few f64 metrics (travelling as f32: they are for logs only).
    pub fn mean_metrics(&mut self, v: &mut [f64]) -> Result<()> {
        if self.world > 1 {
            let mut f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            self.all_reduce_mean(&mut f)?;
            v.iter_mut().zip(&f).for_each(|(a, b)| *a = *b as f64);
        }
        Ok(())
    }

    pub fn broadcast(&mut self, v: &mut [f32]) -> Result<()> {
        Ok(self.comm.broadcast(v, 0)?)
    }

    pub fn barrier(&mut self) -> Result<()> {
        Ok(self.comm.barrier()?)
    }

    /// Whether any rank saw `flag` set: all ranks agree on the step at which to stop.
    pub fn any(&mut self, flag: bool) -> Result<bool> {
        let mut v = [flag as u8 as f32];
        self.comm.all_reduce_sum(&mut v)?;
        Ok(v[0] > 0.0)
    }
}

/// A flag set by SIGTERM, SIGINT or SIGUSR1 (preemption): the loop checkpoints and exits cleanly.
pub fn preemption_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}

pub fn is_set(flag: &Option<Arc<AtomicBool>>) -> bool {
    flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Test drill: `INFINITY_FAULT_KILL=RANK:STEP` makes that rank SIGKILL itself after that step, on the
/// first attempt only (so the restarted group runs through).
pub fn fault_drill(rank: usize, step: u64, attempt: u32) {
    let Ok(spec) = std::env::var("INFINITY_FAULT_KILL") else { return };
    let Some((r, s)) = spec.split_once(':') else { return };
    if attempt == 0 && r.parse() == Ok(rank) && s.parse() == Ok(step) {
        eprintln!("fault drill: rank {rank} kills itself after step {step}");
        // SAFETY: signalling our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
