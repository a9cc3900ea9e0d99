//! NCCL communicator for GPU ranks (feature `cuda`), through cudarc's raw NCCL bindings.
//!
//! - The unique id travels through the rendezvous store: rank 0 creates it, the others wait for it.
//! - Collectives are enqueued on the rank's stream and return at once (`*_device`); each one records an
//!   event that a watchdog thread watches. A collective that has not finished after the timeout, or an
//!   asynchronous NCCL error (a peer's link went away), aborts the communicator (`ncclCommAbort` frees
//!   every rank stuck in it) and, by default, exits the process with [`EXIT_COMM_TIMEOUT`]: a stuck
//!   GPU collective never becomes a silent hang. The launcher reports the code by name.
//! - The [`Communicator`] trait (host slices) is implemented by staging through a device buffer, a
//!   chunk ([`HOST_CHUNK`]) at a time, so the CPU-side loop and the tests use NCCL through the same
//!   calls as the TCP ring.
//!
//! We hold the raw `ncclComm_t` rather than cudarc's `Comm` because the watchdog must abort the
//! communicator from its own thread, and `Comm`'s drop panics when an abort fails.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop};
use cudarc::nccl::{result, sys, NcclType};

use super::flight::FlightRecorder;
use super::{CommError, CommResult, Communicator};
use crate::store::StoreClient;

mod watchdog;
use watchdog::{lock, watchdog, Handle, Held, Pending, Watch};

/// Whether the CUDA driver and NCCL libraries can be loaded (never panics).
pub fn nccl_available() -> bool {
    // SAFETY: both only try to open the shared libraries.
    unsafe { cudarc::driver::sys::is_culib_present() && sys::is_culib_present() }
}

/// One rank's NCCL communicator.
pub struct NcclComm {
    rank: usize,
    world: usize,
    stream: Arc<CudaStream>,
    handle: Arc<Handle>,
    watch: Arc<Watch>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
    /// Values a host collective ([`Communicator`]) stages on the device at a time ([`HOST_CHUNK`]).
    host_chunk: usize,
}

/// What a collective of host values ([`Communicator`]: the checkpoint's gathers of ZeRO-1 shards, the
/// initial broadcast of the weights) stages on the device at a time, in values: 128 MiB of f32 per
/// buffer, where a whole 8B model's gather would hold 33 GB beside the model.
pub const HOST_CHUNK: usize = 1 << 25;

fn nccl_err(op: &'static str, e: result::NcclError) -> CommError {
    CommError::Backend { op, detail: format!("NCCL {:?}", e.0) }
}

fn cuda_err(op: &'static str, e: cudarc::driver::DriverError) -> CommError {
    CommError::Backend { op, detail: format!("CUDA {e:?}") }
}

/// A communicator handle made on another thread ([`init_within`]).
struct InitDone(sys::ncclComm_t);
// SAFETY: an NCCL communicator may be used from any thread, one at a time; the making thread hands it
// over and never touches it again.
unsafe impl Send for InitDone {}

/// `ncclCommInitRank` with a deadline. It blocks until every rank has called it and NCCL has connected
/// them, with no timeout of its own: a rank that failed after rank 0 published the id would leave the
/// others blocked until killed. So it runs on a thread of its own while this one waits `timeout`; each
/// rank marks `{prefix}/nccl-joining/{rank}` first, so a timeout names a rank that never came
/// ([`CommError::Timeout`], which the launcher blames), or says that all did and NCCL's own setup
/// stalled. (A timed-out init thread stays blocked until the process exits, as a rank then does.)
fn init_within(
    store: &mut StoreClient,
    prefix: &str,
    (rank, world): (usize, usize),
    id: sys::ncclUniqueId,
    stream: &Arc<CudaStream>,
    timeout: Duration,
) -> CommResult<sys::ncclComm_t> {
    const OP: &str = "nccl init";
    let joining = |r: usize| format!("{prefix}/nccl-joining/{r}");
    store.set(&joining(rank), b"1").map_err(|e| CommError::Usage { op: OP, detail: format!("{e:#}") })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ctx = stream.context().clone();
    std::thread::Builder::new()
        .name(format!("nccl-init-{rank}"))
        .spawn(move || {
            let made = ctx.bind_to_thread().map_err(|e| cuda_err(OP, e)).and_then(|()| {
                let mut comm = std::mem::MaybeUninit::uninit();
                // SAFETY: valid out pointer; world and rank are below i32::MAX (a group of that many
                // ranks never forms).
                unsafe {
                    result::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
                        .map_err(|e| nccl_err(OP, e))?;
                    Ok(InitDone(comm.assume_init()))
                }
            });
            let _ = tx.send(made);
        })
        .map_err(|e| CommError::Backend { op: OP, detail: format!("spawning the init thread: {e}") })?;
    let failed = |r: usize| format!("{prefix}/nccl-failed/{r}");
    match rx.recv_timeout(timeout) {
        Ok(Ok(InitDone(comm))) => Ok(comm),
        Ok(Err(e)) => {
            // (for the others, whose setup now waits for this rank until their timeout)
            let _ = store.set(&failed(rank), e.to_string().as_bytes());
            Err(e)
        }
        Err(_) => {
            let secs = timeout.as_secs_f64();
            let unknown = |e: anyhow::Error| CommError::Stalled {
                op: OP,
                detail: format!(
                    "ncclCommInitRank did not return within {secs:.0} s, and the store cannot say which ranks \
                     reached it: {e:#}"
                ),
            };
            let check = |store: &mut StoreClient, key: &dyn Fn(usize) -> String| {
                store.check(&(0..world).map(key).collect::<Vec<_>>())
            };
            let gave_up = check(store, &failed).map_err(unknown)?;
            if let Some(peer) = gave_up.iter().position(|&f| f) {
                let why =
                    store.get(&failed(peer), Duration::from_secs(1)).map(|b| String::from_utf8_lossy(&b).into_owned());
                let detail = format!("its NCCL setup failed: {}", why.unwrap_or_else(|e| format!("{e:#}")));
                return Err(CommError::Peer { op: OP, peer, detail });
            }
            let came = check(store, &joining).map_err(unknown)?;
            match came.iter().position(|&c| !c) {
                Some(peer) => Err(CommError::Timeout { op: OP, peer, secs }),
                None => Err(CommError::Stalled {
                    op: OP,
                    detail: format!(
                        "every rank called ncclCommInitRank, which did not return within {secs:.0} s: NCCL could \
                         not connect them (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, a firewall between the nodes; \
                         NCCL_DEBUG=INFO says more)"
                    ),
                }),
            }
        }
    }
}

impl NcclComm {
    /// Build the communicator of `world` ranks on `stream`'s device. Rank 0 puts the NCCL unique id
    /// in the store under `{prefix}/nccl-id`; the others read it. `exit_on_stall` makes the watchdog
    /// exit the process (code [`EXIT_COMM_TIMEOUT`]) instead of only failing later calls.
    pub fn connect(
        store: &mut StoreClient,
        prefix: &str,
        rank: usize,
        world: usize,
        stream: Arc<CudaStream>,
        timeout: Duration,
        exit_on_stall: bool,
    ) -> CommResult<NcclComm> {
        const OP: &str = "nccl init";
        if !nccl_available() {
            return Err(CommError::Backend {
                op: OP,
                detail: "libcuda or libnccl cannot be loaded (is NCCL on LD_LIBRARY_PATH as libnccl.so?)".into(),
            });
        }
        let key = format!("{prefix}/nccl-id");
        let id = if rank == 0 {
            let id = result::get_uniqueid().map_err(|e| nccl_err(OP, e))?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            store.set(&key, &bytes).map_err(|e| CommError::Usage { op: OP, detail: format!("{e:#}") })?;
            id
        } else {
            let bytes = store.get(&key, timeout).map_err(|e| CommError::Usage { op: OP, detail: format!("{e:#}") })?;
            let mut id = sys::ncclUniqueId { internal: [0; 128] };
            if bytes.len() != id.internal.len() {
                return Err(CommError::Peer {
                    op: OP,
                    peer: 0,
                    detail: format!("the NCCL id in the store has {} bytes, expected 128", bytes.len()),
                });
            }
            for (d, &b) in id.internal.iter_mut().zip(&bytes) {
                *d = b as _;
            }
            id
        };
        stream.context().bind_to_thread().map_err(|e| cuda_err(OP, e))?;
        let comm = init_within(store, prefix, (rank, world), id, &stream, timeout)?;
        let handle = Arc::new(Handle { comm, aborted: AtomicBool::new(false), use_lock: RwLock::new(()) });
        let watch = Arc::new(Watch {
            pending: Mutex::new(VecDeque::new()),
            in_call: Mutex::new(None),
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
            flight: FlightRecorder::from_env(rank, world, "nccl"),
        });
        let thread = {
            let (h, w, s) = (handle.clone(), watch.clone(), stream.clone());
            std::thread::Builder::new()
                .name(format!("nccl-watchdog-{rank}"))
                .spawn(move || watchdog(h, w, s, rank, timeout, exit_on_stall))
                .map_err(|e| CommError::Backend { op: OP, detail: format!("spawning the watchdog: {e}") })?
        };
        let mut comm =
            NcclComm { rank, world, stream, handle, watch, thread: Some(thread), timeout, host_chunk: HOST_CHUNK };
        // NCCL connects peers lazily, inside the first collective: do that now, while every rank is
        // here, under the watchdog
        let mut probe = comm.stream.alloc_zeros::<f32>(1).map_err(|e| cuda_err(OP, e))?;
        comm.all_reduce_sum_device(&mut probe)?;
        comm.wait(OP)?;
        Ok(comm)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Hold the communicator for an NCCL call: fails once it was aborted.
    fn hold(&self, op: &'static str) -> CommResult<Held<'_>> {
        let guard = self.handle.use_lock.read().unwrap_or_else(|p| p.into_inner());
        self.check(op)?;
        *lock(&self.watch.in_call) = Some((op, Instant::now()));
        Ok(Held { _guard: guard, watch: &self.watch })
    }

    /// Fail if the watchdog aborted the communicator.
    fn check(&self, op: &'static str) -> CommResult<()> {
        if let Some(why) = lock(&self.watch.failure).clone() {
            return Err(CommError::Stalled { op, detail: why });
        }
        if self.handle.aborted.load(Ordering::SeqCst) {
            return Err(CommError::Stalled { op, detail: "the communicator was aborted".into() });
        }
        Ok(())
    }

    /// Hand an enqueued collective (number `seq` in the flight record) to the watchdog.
    fn track(&self, op: &'static str, seq: u64) -> CommResult<()> {
        let done = self.stream.record_event(None).map_err(|e| cuda_err(op, e))?;
        lock(&self.watch.pending).push_back(Pending { op, seq, since: Instant::now(), done });
        Ok(())
    }

    /// Make an NCCL call `op` of `count` elements under the communicator's protocol: recorded in the
    /// flight record, held against aborts and timed while inside NCCL, then handed to the watchdog
    /// once enqueued (which marks it finished in the record when its event completes).
    fn enqueue(
        &self,
        op: &'static str,
        count: usize,
        call: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<result::NcclStatus, result::NcclError>,
    ) -> CommResult<()> {
        let flight = &self.watch.flight;
        let seq = flight.begin(op, count);
        let enqueued = self.hold(op).and_then(|_held| {
            call(self.handle.comm, self.stream.cu_stream() as _).map_err(|e| nccl_err(op, e))?;
            self.track(op, seq)
        });
        if let Err(e) = &enqueued {
            flight.end(seq, false);
            flight.dump_saying(&e.to_string());
        }
        enqueued
    }

    /// The collectives enqueued from now on start after the work queued on `other` so far (the
    /// communicator has a stream of its own: a buffer another stream writes must be ordered by hand).
    pub fn after(&self, other: &CudaStream) -> CommResult<()> {
        self.stream.join(other).map_err(|e| cuda_err("ordering after a stream", e))
    }

    /// The work queued on `other` from now on starts after the collectives enqueued so far.
    pub fn before(&self, other: &CudaStream) -> CommResult<()> {
        other.join(&self.stream).map_err(|e| cuda_err("ordering before a stream", e))
    }

    /// Element-wise sum over ranks, in place, enqueued on the stream.
    pub fn all_reduce_sum_device<T: NcclType + DeviceRepr>(&mut self, buf: &mut CudaSlice<T>) -> CommResult<()> {
        let n = buf.len();
        self.all_reduce_sum_part(buf, 0..n)
    }

    /// Element-wise sum over ranks of `buf[part]`, in place, enqueued on the stream (one bucket of the
    /// gradients while the backward goes on).
    pub fn all_reduce_sum_part<T: NcclType + DeviceRepr>(
        &mut self,
        buf: &mut CudaSlice<T>,
        part: Range<usize>,
    ) -> CommResult<()> {
        let (p, n, _sync) = self.part_ptr("all_reduce", buf, part)?;
        // SAFETY: in-place all-reduce of `n` elements inside a live device buffer (part_ptr), on our
        // stream.
        self.enqueue("all_reduce", n, |comm, st| unsafe {
            result::all_reduce(p as *const _, p as *mut _, n, T::as_nccl_type(), sys::ncclRedOp_t::ncclSum, comm, st)
        })
    }

    /// Element-wise sum over ranks of `buf[part]`, in place at `root` alone (the other ranks' buffers
    /// keep their values), enqueued on the stream: a bucket's piece of a ZeRO-1 shard, to its owner.
    pub fn reduce_sum_part<T: NcclType + DeviceRepr>(
        &mut self,
        buf: &mut CudaSlice<T>,
        part: Range<usize>,
        root: usize,
    ) -> CommResult<()> {
        self.root_in_world("reduce", root)?;
        let (p, n, _sync) = self.part_ptr("reduce", buf, part)?;
        // SAFETY: in-place reduce of `n` elements inside a live device buffer (part_ptr), on our stream.
        self.enqueue("reduce", n, |comm, st| unsafe {
            let sum = sys::ncclRedOp_t::ncclSum;
            result::reduce(p as *const _, p as *mut _, n, T::as_nccl_type(), sum, root as i32, comm, st)
        })
    }

    /// `root`'s buffer to every rank, in place, enqueued on the stream.
    pub fn broadcast_device<T: NcclType + DeviceRepr>(
        &mut self,
        buf: &mut CudaSlice<T>,
        root: usize,
    ) -> CommResult<()> {
        let n = buf.len();
        self.broadcast_part(buf, 0..n, root)
    }

    /// `root`'s `buf[part]` to every rank's, in place, enqueued on the stream (a ZeRO-1 shard's pieces
    /// of the tensors the kernels read in f32, from their owner).
    pub fn broadcast_part<T: NcclType + DeviceRepr>(
        &mut self,
        buf: &mut CudaSlice<T>,
        part: Range<usize>,
        root: usize,
    ) -> CommResult<()> {
        self.root_in_world("broadcast", root)?;
        let (p, n, _sync) = self.part_ptr("broadcast", buf, part)?;
        // SAFETY: in-place broadcast of `n` elements inside a live device buffer (part_ptr), on our
        // stream.
        self.enqueue("broadcast", n, |comm, st| unsafe {
            result::broadcast(p as *const _, p as *mut _, n, T::as_nccl_type(), root as i32, comm, st)
        })
    }

    /// Rank r's `send` lands at `recv[r·n ..]`, enqueued on the stream.
    pub fn all_gather_device<T: NcclType + DeviceRepr>(
        &mut self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
    ) -> CommResult<()> {
        self.sizes("all_gather", send.len(), recv.len())?;
        let n = send.len();
        let (s, _s) = send.device_ptr(&self.stream);
        let (r, _r) = recv.device_ptr_mut(&self.stream);
        // SAFETY: sizes checked above; both buffers live on our stream's device.
        self.enqueue("all_gather", n, |comm, st| unsafe {
            result::all_gather(s as _, r as _, n, T::as_nccl_type(), comm, st)
        })
    }

    /// In place: `buf` holds `world` equal parts and rank r's part r goes to every rank, enqueued on
    /// the stream (ZeRO-1's parameters, with no second buffer of their size).
    pub fn all_gather_in_place_device<T: NcclType + DeviceRepr>(&mut self, buf: &mut CudaSlice<T>) -> CommResult<()> {
        let n = buf.len() / self.world;
        self.sizes("all_gather", n, buf.len())?;
        let offset = (self.rank * n * std::mem::size_of::<T>()) as u64;
        let (p, _sync) = buf.device_ptr_mut(&self.stream);
        // SAFETY: sizes checked above; NCCL's in-place all-gather reads rank r's part where it lands
        // (send = recv + r·n).
        self.enqueue("all_gather", n, |comm, st| unsafe {
            result::all_gather((p + offset) as _, p as _, n, T::as_nccl_type(), comm, st)
        })
    }

    /// [`NcclComm::all_gather_in_place_device`] of values NCCL need not know the type of (a gather adds
    /// nothing): moved as bytes, such as the bf16 weights kept as `u16`. The flight record counts
    /// bytes.
    pub fn all_gather_in_place_bytes<T: DeviceRepr>(&mut self, buf: &mut CudaSlice<T>) -> CommResult<()> {
        let n = buf.len() / self.world;
        self.sizes("all_gather", n, buf.len())?;
        let bytes = n * std::mem::size_of::<T>();
        let (p, _sync) = buf.device_ptr_mut(&self.stream);
        let offset = (self.rank * bytes) as u64;
        // SAFETY: as all_gather_in_place_device, with each part `bytes` bytes long.
        self.enqueue("all_gather", bytes, |comm, st| unsafe {
            result::all_gather((p + offset) as _, p as _, bytes, sys::ncclDataType_t::ncclUint8, comm, st)
        })
    }

    /// Sum over ranks of `send`; rank r keeps part r in `recv`, enqueued on the stream.
    pub fn reduce_scatter_sum_device<T: NcclType + DeviceRepr>(
        &mut self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
    ) -> CommResult<()> {
        self.sizes("reduce_scatter", recv.len(), send.len())?;
        let n = recv.len();
        let (s, _s) = send.device_ptr(&self.stream);
        let (r, _r) = recv.device_ptr_mut(&self.stream);
        // SAFETY: sizes checked above; both buffers live on our stream's device.
        self.enqueue("reduce_scatter", n, |comm, st| unsafe {
            result::reduce_scatter(s as _, r as _, n, T::as_nccl_type(), sys::ncclRedOp_t::ncclSum, comm, st)
        })
    }

    /// The device address and length of `buf[part]`, checked to lie inside `buf`, with the guard that
    /// keeps `buf` borrowed while a call uses it.
    fn part_ptr<'b, T: DeviceRepr>(
        &'b self,
        op: &'static str,
        buf: &'b mut CudaSlice<T>,
        part: Range<usize>,
    ) -> CommResult<(u64, usize, SyncOnDrop<'b>)> {
        if part.start > part.end || part.end > buf.len() {
            return Err(CommError::Usage {
                op,
                detail: format!("part {part:?} of a buffer of {} elements", buf.len()),
            });
        }
        let (p, sync) = buf.device_ptr_mut(&self.stream);
        Ok((p + (part.start * std::mem::size_of::<T>()) as u64, part.len(), sync))
    }

    fn root_in_world(&self, op: &'static str, root: usize) -> CommResult<()> {
        if root >= self.world {
            return Err(CommError::Usage { op, detail: format!("root {root} in a world of {}", self.world) });
        }
        Ok(())
    }

    fn sizes(&self, op: &'static str, part: usize, whole: usize) -> CommResult<()> {
        if part * self.world != whole {
            return Err(CommError::Usage {
                op,
                detail: format!("{whole} elements is not world ({}) × {part}", self.world),
            });
        }
        Ok(())
    }

    /// Wait until every enqueued collective finished, or fail once the watchdog saw a stall (the host
    /// never blocks inside CUDA, so a stall cannot hang this call; the abort is the watchdog's).
    pub fn wait(&mut self, op: &'static str) -> CommResult<()> {
        let deadline = Instant::now() + self.timeout + Duration::from_secs(1);
        let idle = self.stream.record_event(None).map_err(|e| cuda_err(op, e))?;
        loop {
            self.check(op)?;
            let empty = lock(&self.watch.pending).is_empty();
            if empty || idle.try_is_complete().map_err(|e| cuda_err(op, e))? {
                // the watchdog's abort completes the stream too (the cancelled collective ends): it
                // records why before it aborts, so a second look tells a cancelled collective from
                // a finished one; an asynchronous error NCCL met since the watchdog's last tick
                // fails the call here rather than at the next one
                self.check(op)?;
                if let Some(e) = self.handle.async_error() {
                    return Err(CommError::Stalled { op, detail: format!("NCCL reported an asynchronous error: {e}") });
                }
                // (all of them done: the record says so now, not at the watchdog's next look)
                self.watch.mark_done();
                return Ok(());
            }
            if Instant::now() > deadline {
                let e = CommError::Stalled { op, detail: format!("no progress for {:?}", self.timeout) };
                self.watch.mark_done();
                self.watch.flight.dump_saying(&e.to_string());
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Stage host collectives through the device `values` at a time (at least 1; [`HOST_CHUNK`] unless
    /// set). Every rank of a group must use the same value: it sets how many collectives one takes.
    pub fn set_host_chunk(&mut self, values: usize) {
        self.host_chunk = values.max(1);
    }

    /// A host collective's chunk gets the tag its caller gave the whole (its line in the record).
    fn tag_chunk(&self, tag: Option<&'static str>) {
        if let Some(t) = tag {
            self.watch.flight.tag_next(t);
        }
    }

    fn upload(&self, op: &'static str, v: &[f32]) -> CommResult<CudaSlice<f32>> {
        self.stream.clone_htod(v).map_err(|e| cuda_err(op, e))
    }

    /// Wait for the collectives, then copy `d` to the host.
    fn download(&mut self, op: &'static str, d: &CudaSlice<f32>, out: &mut [f32]) -> CommResult<()> {
        self.wait(op)?;
        self.stream.memcpy_dtoh(d, out).map_err(|e| cuda_err(op, e))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        self.watch.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // a collective still in flight would make ncclCommDestroy wait for it: abort instead
        let pending = lock(&self.watch.pending);
        if pending.iter().any(|p| !p.done.try_is_complete().unwrap_or(false)) {
            self.handle.abort();
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    // Host values travel through the device a chunk at a time ([`HOST_CHUNK`]): a chunk per collective,
    // the same chunks on every rank (the lengths agree), none for empty buffers.

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> CommResult<()> {
        let tag = self.watch.flight.take_tag();
        for part in buf.chunks_mut(self.host_chunk) {
            self.tag_chunk(tag);
            let mut d = self.upload("all_reduce", part)?;
            self.all_reduce_sum_device(&mut d)?;
            self.download("all_reduce", &d, part)?;
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> CommResult<()> {
        let tag = self.watch.flight.take_tag();
        for part in buf.chunks_mut(self.host_chunk) {
            self.tag_chunk(tag);
            let mut d = self.upload("broadcast", part)?;
            self.broadcast_device(&mut d, root)?;
            self.download("broadcast", &d, part)?;
        }
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let (n, world) = (send.len(), self.world);
        self.sizes("all_gather", n, recv.len())?;
        let (step, tag) = ((self.host_chunk / world).max(1), self.watch.flight.take_tag());
        for at in (0..n).step_by(step) {
            let len = step.min(n - at);
            self.tag_chunk(tag);
            let s = self.upload("all_gather", &send[at..at + len])?;
            let mut r = self.stream.alloc_zeros(len * world).map_err(|e| cuda_err("all_gather", e))?;
            self.all_gather_device(&s, &mut r)?;
            let mut gathered = vec![0.0; len * world];
            self.download("all_gather", &r, &mut gathered)?;
            for (q, piece) in gathered.chunks_exact(len).enumerate() {
                recv[q * n + at..q * n + at + len].copy_from_slice(piece);
            }
        }
        Ok(())
    }

    fn nccl(&mut self) -> Option<&mut NcclComm> {
        Some(self)
    }

    fn flight(&self) -> Option<&FlightRecorder> {
        Some(&self.watch.flight)
    }

    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> CommResult<()> {
        let (n, world) = (recv.len(), self.world);
        self.sizes("reduce_scatter", n, send.len())?;
        let (step, tag) = ((self.host_chunk / world).max(1), self.watch.flight.take_tag());
        for at in (0..n).step_by(step) {
            let len = step.min(n - at);
            self.tag_chunk(tag);
            let staged: Vec<f32> = (0..world).flat_map(|q| &send[q * n + at..q * n + at + len]).copied().collect();
            let s = self.upload("reduce_scatter", &staged)?;
            let mut r = self.stream.alloc_zeros(len).map_err(|e| cuda_err("reduce_scatter", e))?;
            self.reduce_scatter_sum_device(&s, &mut r)?;
            self.download("reduce_scatter", &r, &mut recv[at..at + len])?;
        }
        Ok(())
    }
}
