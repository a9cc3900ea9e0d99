//! One CUDA device: its context, a stream, and the modules compiled for it (each source once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice,
    LaunchConfig, PushKernelArg,
};

use super::compile::{compile_ptx_with, target_arch, CompileError};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("not supported here: {0}")]
    Unsupported(String),
    #[error("out of GPU memory ({0})")]
    OutOfMemory(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return CudaError::OutOfMemory(memory_in_use());
        }
        CudaError::Driver(format!("{e:?}"))
    }
}

/// "X of Y GiB in use" (MiB below 1 GiB) on the current device, as the driver says, or that it cannot say.
pub fn memory_in_use() -> String {
    match cudarc::driver::result::mem_get_info() {
        Ok((free, total)) => {
            let (unit, scale) = if total >= 1 << 30 { ("GiB", (1u64 << 30) as f64) } else { ("MiB", 1048576.0) };
            format!("{:.2} of {:.2} {unit} in use", (total - free) as f64 / scale, total as f64 / scale)
        }
        Err(_) => "the driver does not say how much is in use".into(),
    }
}

/// Whether `e` is the device running out of memory (as a [`CudaError`] or as cudarc's own error).
pub fn out_of_memory(e: &(dyn std::error::Error + 'static)) -> bool {
    use cudarc::driver::{sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY, DriverError};
    matches!(e.downcast_ref::<CudaError>(), Some(CudaError::OutOfMemory(_)))
        || e.downcast_ref::<DriverError>().is_some_and(|d| d.0 == CUDA_ERROR_OUT_OF_MEMORY)
}

pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// The device's compute capability (major, minor).
    pub compute: (u32, u32),
    /// The NVRTC target, `compute_XY`: the device's own, or the newest this NVRTC knows when the device
    /// is newer (forward-compatible PTX; see [`target_arch`]).
    pub arch: &'static str,
    /// The driver's name for the device ("NVIDIA H200"; "Emulated CUDA device …" for kernels/emulator/device).
    pub name: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    /// Preprocessor definitions per source (see [`Device::set_defines`]).
    defines: Mutex<HashMap<&'static str, Vec<String>>>,
    /// While profiling: a pair of CUDA events around each launch and GEMM, by name (see [`Device::timed`]).
    profile: Mutex<Option<Vec<(String, CudaEvent, CudaEvent)>>>,
    /// f32 attention on attention.cu's kernels for every head dim (see [`Device::set_untiled_attention`]).
    untiled_attention: std::sync::atomic::AtomicBool,
}

/// GPU time of one kernel (or GEMM kind) over a profiled stretch.
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub name: String,
    pub calls: usize,
    pub ms: f64,
}

/// Whether a CUDA driver and at least one device are present (never panics).
pub fn device_present() -> bool {
    // SAFETY: only tries to open libcuda; it does not panic when the library is absent.
    let lib = unsafe { cudarc::driver::sys::is_culib_present() };
    lib && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

impl Device {
    /// Open device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Device, CudaError> {
        if !device_present() {
            return Err(CudaError::Unavailable("no CUDA driver (libcuda) or no device".into()));
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let compute = (major as u32, minor as u32);
        let arch = target_arch(10 * compute.0 + compute.1)?;
        let name = ctx.name()?;
        let stream = ctx.default_stream();
        let (modules, functions, profile) = (Mutex::default(), Mutex::default(), Mutex::default());
        let (defines, untiled_attention) = (Mutex::default(), Default::default());
        Ok(Device { ctx, stream, compute, arch, name, modules, functions, defines, profile, untiled_attention })
    }

    /// The error, if any, of a driver call that could not return one when it failed (a buffer's free on
    /// drop, an event's record or wait as a slice is used: cudarc keeps the latest), named as found
    /// after `during` (a wait lost that way leaves the order it kept unkept). Cleared once read.
    pub fn check_deferred_errors(&self, during: &str) -> Result<(), CudaError> {
        self.ctx.check_err().map_err(|e| match CudaError::from(e) {
            CudaError::Driver(e) => CudaError::Driver(format!("{e} (a deferred error, found after {during})")),
            other => other,
        })
    }

    /// Start recording the GPU time of every launch (CUDA events around each; they serialise nothing,
    /// but add a little host time per launch). [`Device::profile_report`] ends the stretch.
    pub fn start_profile(&self) {
        *self.profile.lock().unwrap() = Some(Vec::new());
    }

    /// Stop profiling and return the time per kernel name, largest first (waits for the stream).
    pub fn profile_report(&self) -> Result<Vec<KernelTime>, CudaError> {
        let Some(events) = self.profile.lock().unwrap().take() else { return Ok(Vec::new()) };
        self.stream.synchronize()?;
        let mut by_name: HashMap<String, KernelTime> = HashMap::new();
        for (name, a, b) in events {
            let ms = a.elapsed_ms(&b)? as f64;
            let e = by_name.entry(name.clone()).or_insert(KernelTime { name, calls: 0, ms: 0.0 });
            e.calls += 1;
            e.ms += ms;
        }
        let mut out: Vec<KernelTime> = by_name.into_values().collect();
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(out)
    }

    /// Run `f` (work queued on the stream) under `name` when profiling.
    pub fn timed<R>(&self, name: &str, f: impl FnOnce() -> Result<R, CudaError>) -> Result<R, CudaError> {
        if self.profile.lock().unwrap().is_none() {
            return f();
        }
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.stream.record_event(flags)?;
        let r = f()?;
        let b = self.stream.record_event(flags)?;
        if let Some(v) = self.profile.lock().unwrap().as_mut() {
            v.push((name.to_string(), a, b));
        }
        Ok(r)
    }

    /// f32 attention on attention.cu's kernels (any head dim) instead of attention_tiled.cu's register-tiled
    /// ones where those apply: for benchmarks comparing the two, and for debugging.
    pub fn set_untiled_attention(&self, on: bool) {
        self.untiled_attention.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Device::set_untiled_attention`] is on.
    pub fn untiled_attention(&self) -> bool {
        self.untiled_attention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Compile `file` with these preprocessor definitions (`NAME=VALUE`) from now on: its tuning knobs,
    /// for benchmarks comparing settings (`&[]` restores the source's defaults). Kernels of `file`
    /// already loaded are dropped, so the next launch compiles it again.
    pub fn set_defines(&self, file: &'static str, defines: &[&str]) {
        self.defines.lock().unwrap().insert(file, defines.iter().map(|d| d.to_string()).collect());
        self.modules.lock().unwrap().remove(file);
        self.functions.lock().unwrap().retain(|(f, _), _| *f != file);
    }

    /// Kernel `name` of source `file`, compiling and loading the source on first use (both cached).
    pub fn function(&self, file: &'static str, name: &str) -> Result<CudaFunction, CudaError> {
        if let Some(f) = self.functions.lock().unwrap().get(&(file, name.to_string())) {
            return Ok(f.clone());
        }
        let module = {
            let mut m = self.modules.lock().unwrap();
            match m.get(file) {
                Some(module) => module.clone(),
                None => {
                    let defines = self.defines.lock().unwrap().get(file).cloned().unwrap_or_default();
                    let ptx = compile_ptx_with(file, self.arch, &defines)?;
                    let module = self.ctx.load_module(ptx).map_err(|e| module_error(file, e))?;
                    m.insert(file, module.clone());
                    module
                }
            }
        };
        let f = module.load_function(name)?;
        self.functions.lock().unwrap().insert((file, name.to_string()), f.clone());
        Ok(f)
    }

    /// [`Device::function`], allowed `dynamic` bytes of dynamic shared memory beside `fixed` static
    /// ones: opted in past the 48 KiB every GPU grants, and past this GPU's opt-in limit (64 KiB on a
    /// T4, 163 KiB on an A100, 227 KiB on an H100) an error naming the kernel and both sizes, not the
    /// driver's bare "invalid value" at launch.
    pub fn function_with_shared(
        &self,
        file: &'static str,
        name: &str,
        dynamic: usize,
        fixed: usize,
    ) -> Result<CudaFunction, CudaError> {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let f = self.function(file, name)?;
        let total = dynamic + fixed;
        if total > 48 * 1024 {
            let optin = self.ctx.attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
            if total > optin {
                return Err(CudaError::Unsupported(format!(
                    "kernel `{name}` (kernels/cuda/{file}) needs {total} bytes of shared memory per block; the \
                     {} allows {optin}",
                    self.name
                )));
            }
            f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic as i32)?;
        }
        Ok(f)
    }
}

/// Why the driver would not load `file`'s PTX: a driver older than NVRTC is the usual reason (pip's
/// NVRTC wheels follow the newest CUDA; cluster drivers lag), and says what to do.
fn module_error(file: &str, e: cudarc::driver::DriverError) -> CudaError {
    use cudarc::driver::sys::{cuDriverGetVersion, CUresult};
    if e.0 != CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
        return e.into();
    }
    let mut v = 0;
    // SAFETY: the driver writes one int.
    let driver = match unsafe { cuDriverGetVersion(&mut v) } {
        CUresult::CUDA_SUCCESS => format!("{}.{}", v / 1000, v % 1000 / 10),
        _ => "?".into(),
    };
    let nvrtc = super::compile::nvrtc_targets().map_or("?", |(_, version)| version.as_str());
    let wheel = match driver.starts_with("12.") {
        true => format!(" (`pip install \"nvidia-cuda-nvrtc-cu12=={driver}.*\"`)"),
        false => String::new(),
    };
    CudaError::Unsupported(format!(
        "the CUDA driver (CUDA {driver}) cannot load the PTX that NVRTC {nvrtc} made of kernels/cuda/{file}: \
         the driver is older than NVRTC. Update the driver, or put an NVRTC of CUDA {driver} or older first \
         on LD_LIBRARY_PATH{wheel}"
    ))
}

/// 256-thread blocks covering `n` elements (capped: the kernels loop with a grid stride).
pub fn elementwise(n: usize) -> LaunchConfig {
    let block = 256u32;
    let grid = n.div_ceil(block as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row of width `c` (a multiple of 32 threads, at most 1024).
pub fn per_row(n: usize, c: usize) -> LaunchConfig {
    let block = (c.div_ceil(32) * 32).clamp(32, 1024) as u32;
    LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// An f32 device buffer the kernels read: a [`cudarc::driver::CudaSlice`] or a view into one (a
/// parameter inside the flat parameter buffer, part `j` of a `[B, 6C]` row). Launches pass its address,
/// so one entry point serves whole buffers and views alike.
pub trait Buf {
    fn addr(&self, s: &CudaStream) -> u64;
    fn count(&self) -> usize;
    /// The address of a bf16 copy of the same values, when one is kept (bf16 GEMMs read it instead
    /// of rounding again).
    fn bf16_addr(&self, _s: &CudaStream) -> Option<u64> {
        None
    }
    /// Whether the values exist only in bf16 ([`Act::Bf16`]): readers take `bf16_addr`, never `addr`.
    fn bf16_only(&self) -> bool {
        false
    }
}

/// An f32 buffer together with a bf16 copy of its values kept on the device (the model's weights,
/// rounded once per optimizer step rather than at every GEMM).
pub struct WithBf16<'a> {
    pub values: &'a dyn Buf,
    /// Address of `values.count()` bf16 values.
    pub bf16: u64,
}

impl Buf for WithBf16<'_> {
    fn addr(&self, s: &CudaStream) -> u64 {
        self.values.addr(s)
    }
    fn count(&self) -> usize {
        self.values.count()
    }
    fn bf16_addr(&self, _s: &CudaStream) -> Option<u64> {
        Some(self.bf16)
    }
}

/// `count` bf16 values with no f32 copy on this device (a weight whose f32 master another ZeRO-1 rank
/// keeps): only bf16 products read it.
pub struct Bf16Only {
    pub bf16: u64,
    pub count: usize,
}

impl Buf for Bf16Only {
    fn addr(&self, _s: &CudaStream) -> u64 {
        // an internal invariant, not an input: only bf16 products take these weights
        panic!("a weight kept in bf16 alone was read as f32")
    }
    fn count(&self) -> usize {
        self.count
    }
    fn bf16_addr(&self, _s: &CudaStream) -> Option<u64> {
        Some(self.bf16)
    }
    fn bf16_only(&self) -> bool {
        true
    }
}

/// An activation kept in the precision its readers take: f32, or bf16 alone when every reader is a
/// bf16 product (with `run.precision = "bf16"`, the blocks' GEMM inputs h1, h2 and g: the forward's
/// product and the backward's weight gradient are all that read them). Half the bytes to write and
/// keep, and no rounding before each product.
pub enum Act {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

impl Buf for Act {
    fn addr(&self, s: &CudaStream) -> u64 {
        match self {
            Act::F32(v) => v.device_ptr(s).0,
            // an internal invariant, not an input: only bf16 products take a bf16 activation
            Act::Bf16(_) => panic!("a bf16-only activation was read as f32"),
        }
    }
    fn count(&self) -> usize {
        match self {
            Act::F32(v) => v.len(),
            Act::Bf16(v) => v.len(),
        }
    }
    fn bf16_addr(&self, s: &CudaStream) -> Option<u64> {
        match self {
            Act::F32(_) => None,
            Act::Bf16(v) => Some(v.device_ptr(s).0),
        }
    }
    fn bf16_only(&self) -> bool {
        matches!(self, Act::Bf16(_))
    }
}

impl Act {
    /// The address a kernel writes the values to (f32 or bf16, by the kernel's variant).
    pub fn out_addr(&mut self, s: &CudaStream) -> u64 {
        match self {
            Act::F32(v) => v.device_ptr_mut(s).0,
            Act::Bf16(v) => v.device_ptr_mut(s).0,
        }
    }
}

/// An f32 device buffer the kernels write.
pub trait BufMut: Buf {
    fn addr_mut(&mut self, s: &CudaStream) -> u64;
}

impl<T: DevicePtr<f32>> Buf for T {
    fn addr(&self, s: &CudaStream) -> u64 {
        self.device_ptr(s).0
    }
    fn count(&self) -> usize {
        DeviceSlice::len(self)
    }
}

impl<T: DevicePtr<f32> + DevicePtrMut<f32>> BufMut for T {
    fn addr_mut(&mut self, s: &CudaStream) -> u64 {
        self.device_ptr_mut(s).0
    }
}

/// The address of an optional input (0: the kernel's null).
pub fn addr_or_null(x: Option<&dyn Buf>, s: &CudaStream) -> u64 {
    x.map_or(0, |b| b.addr(s))
}

/// One block of up to 256 threads per 256 columns (the column-reduction kernels).
pub fn per_column(c: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (c.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// A kernel argument: a device address or a scalar.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
}

impl Arg {
    pub fn int(v: usize) -> Arg {
        Arg::I32(v as i32)
    }
    pub fn long(v: usize) -> Arg {
        Arg::I64(v as i64)
    }
}

impl Device {
    /// A buffer the kernel reads, as its argument.
    pub fn arg(&self, x: &dyn Buf) -> Arg {
        Arg::Ptr(x.addr(&self.stream))
    }

    /// A buffer the kernel writes, as its argument.
    pub fn arg_mut(&self, x: &mut dyn BufMut) -> Arg {
        Arg::Ptr(x.addr_mut(&self.stream))
    }

    /// Launch kernel `name` of `file` with `args` in the order of its declaration. A grid with no
    /// blocks (no rows, no columns) launches nothing: CUDA would reject it.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list, and every address must point at a live buffer
    /// large enough for what `cfg` and the scalars make the kernel touch.
    pub unsafe fn launch(
        &self,
        file: &'static str,
        name: &str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let (gx, gy, gz) = cfg.grid_dim;
        if gx == 0 || gy == 0 || gz == 0 {
            return Ok(());
        }
        let f = self.function(file, name)?;
        let mut lb = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(v) => lb.arg(v),
                Arg::I32(v) => lb.arg(v),
                Arg::I64(v) => lb.arg(v),
                Arg::F32(v) => lb.arg(v),
                Arg::F64(v) => lb.arg(v),
            };
        }
        // SAFETY: the caller's contract.
        self.timed(name, || unsafe { lb.launch(cfg) }.map(|_| ()).map_err(CudaError::from))
    }
}
