//! NVRTC compilation of the embedded `.cu` sources. Our own headers (`#include "common.cuh"`) are
//! inlined before compiling, and the sources include no CUDA header (bf16 and f16 are handled as raw
//! bits in common.cuh), so NVRTC alone compiles them. The folders that exist of `INFINITY_CUDA_INCLUDE`,
//! `$CUDA_HOME/include`, the `nvidia/cu13/include` of the wheels under `INFINITY_CUDA_WHEELS` and
//! `/usr/local/cuda/include` are still passed as include paths, for a kernel that someday needs one.

use cudarc::nvrtc::{CompileOptions, Ptx};

/// Every kernel source, by file name.
pub const SOURCES: &[(&str, &str)] = &[
    ("act.cu", include_str!("../../cuda/act.cu")),
    ("adamw.cu", include_str!("../../cuda/adamw.cu")),
    ("adaln.cu", include_str!("../../cuda/adaln.cu")),
    ("attention.cu", include_str!("../../cuda/attention.cu")),
    ("attention_bf16.cu", include_str!("../../cuda/attention_bf16.cu")),
    ("attention_tiled.cu", include_str!("../../cuda/attention_tiled.cu")),
    ("bitwise_ce.cu", include_str!("../../cuda/bitwise_ce.cu")),
    ("bsq.cu", include_str!("../../cuda/bsq.cu")),
    ("embedding.cu", include_str!("../../cuda/embedding.cu")),
    ("head_ce.cu", include_str!("../../cuda/head_ce.cu")),
    ("head_ce_bf16.cu", include_str!("../../cuda/head_ce_bf16.cu")),
    ("linear.cu", include_str!("../../cuda/linear.cu")),
    ("norm.cu", include_str!("../../cuda/norm.cu")),
    ("qkv.cu", include_str!("../../cuda/qkv.cu")),
    ("rope.cu", include_str!("../../cuda/rope.cu")),
    ("util.cu", include_str!("../../cuda/util.cu")),
];

/// Headers the sources include by name.
const HEADERS: &[(&str, &str)] = &[
    ("attention.cuh", include_str!("../../cuda/attention.cuh")),
    ("common.cuh", include_str!("../../cuda/common.cuh")),
    ("mma.cuh", include_str!("../../cuda/mma.cuh")),
];

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("kernels/cuda/{file}: NVRTC failed:\n{log}")]
    Nvrtc { file: String, log: String },
    #[error("kernels/cuda/{0}: no such kernel source")]
    Unknown(String),
    #[error("NVRTC is not available: {0} (install the CUDA toolkit or `pip install nvidia-cuda-nvrtc`, and put its lib folder on LD_LIBRARY_PATH)")]
    Unavailable(String),
    #[error(
        "this GPU is compute capability {}.{}, older than anything NVRTC {nvrtc} compiles for (compute_{oldest} \
         to compute_{newest}): use an NVRTC that still targets it, e.g. CUDA 12's (`pip install \
         nvidia-cuda-nvrtc-cu12`, its lib folder first on LD_LIBRARY_PATH)",
        cc / 10,
        cc % 10
    )]
    GpuTooOld { cc: u32, nvrtc: String, oldest: u32, newest: u32 },
}

/// The source of `file` with our headers inlined.
pub fn source(file: &str) -> Result<String, CompileError> {
    let (_, src) = SOURCES.iter().find(|(n, _)| *n == file).ok_or_else(|| CompileError::Unknown(file.into()))?;
    let mut out = String::with_capacity(src.len() + 4096);
    for line in src.lines() {
        let included = line
            .trim()
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .and_then(|name| HEADERS.iter().find(|(n, _)| *n == name));
        match included {
            Some((_, header)) => out.push_str(header),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Folders to search for CUDA's own headers.
pub fn include_paths() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("INFINITY_CUDA_INCLUDE") {
        v.push(p);
    }
    if let Ok(h) = std::env::var("CUDA_HOME") {
        v.push(format!("{h}/include"));
    }
    if let Ok(w) = std::env::var("INFINITY_CUDA_WHEELS") {
        v.push(format!("{w}/nvidia/cu13/include"));
    }
    v.push("/usr/local/cuda/include".into());
    v.into_iter().filter(|p| std::path::Path::new(p).is_dir()).collect()
}

/// Compile `file` to PTX for `arch` (e.g. `compute_90`).
pub fn compile_ptx(file: &str, arch: &'static str) -> Result<Ptx, CompileError> {
    compile_ptx_with(file, arch, &[])
}

/// [`compile_ptx`] with preprocessor definitions (`NAME=VALUE`, as `-D`): the tuning knobs a source
/// declares with `#ifndef` defaults, for benchmarks that compare settings.
pub fn compile_ptx_with(file: &str, arch: &'static str, defines: &[String]) -> Result<Ptx, CompileError> {
    compile_source_with(file, &source(file)?, arch, defines)
}

/// Compile CUDA source `src` (named `file` in errors) to PTX for `arch`.
pub fn compile_source(file: &str, src: &str, arch: &'static str) -> Result<Ptx, CompileError> {
    compile_source_with(file, src, arch, &[])
}

fn compile_source_with(file: &str, src: &str, arch: &'static str, defines: &[String]) -> Result<Ptx, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::Unavailable("libnvrtc not found".into()));
    }
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths: include_paths(),
        // no contracted multiply-adds: kernels follow their CPU twins' rounding
        options: ["--std=c++17".to_string(), "--fmad=false".into()]
            .into_iter()
            .chain(defines.iter().map(|d| format!("-D{d}")))
            .collect(),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts)
        .map_err(|e| CompileError::Nvrtc { file: file.into(), log: format!("{e:?}") })
}

/// The compute capabilities (10·major + minor) this NVRTC compiles for, oldest first, and its version;
/// `None` when NVRTC is absent or cannot say.
pub fn nvrtc_targets() -> Option<&'static (Vec<u32>, String)> {
    static TARGETS: std::sync::OnceLock<Option<(Vec<u32>, String)>> = std::sync::OnceLock::new();
    TARGETS
        .get_or_init(|| {
            use cudarc::nvrtc::sys::{self, nvrtcResult::NVRTC_SUCCESS};
            if !nvrtc_present() {
                return None;
            }
            let (mut n, mut major, mut minor) = (0, 0, 0);
            // SAFETY: NVRTC fills `n`, then `n` ints; the version is two ints.
            unsafe {
                if sys::nvrtcGetNumSupportedArchs(&mut n) != NVRTC_SUCCESS || n <= 0 {
                    return None;
                }
                let mut archs = vec![0i32; n as usize];
                if sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) != NVRTC_SUCCESS
                    || sys::nvrtcVersion(&mut major, &mut minor) != NVRTC_SUCCESS
                {
                    return None;
                }
                let mut archs: Vec<u32> = archs.into_iter().map(|a| a as u32).collect();
                archs.sort_unstable();
                Some((archs, format!("{major}.{minor}")))
            }
        })
        .as_ref()
}

/// The NVRTC target (`compute_XY`) for a GPU of compute capability `cc` (10·major + minor): its own, or,
/// where the GPU is newer than this NVRTC, the newest target it has (PTX is forward-compatible: the
/// driver compiles it for the newer GPU). An error when the GPU is older than every target; the GPU's
/// own when NVRTC cannot say (compiling then reports what is wrong).
pub fn target_arch(cc: u32) -> Result<&'static str, CompileError> {
    let target = match nvrtc_targets() {
        Some((archs, nvrtc)) if !archs.contains(&cc) => match archs.iter().rev().find(|&&a| a < cc) {
            Some(&newest_below) => newest_below,
            None => {
                let (oldest, newest) = (archs[0], archs[archs.len() - 1]);
                return Err(CompileError::GpuTooOld { cc, nvrtc: nvrtc.clone(), oldest, newest });
            }
        },
        _ => cc,
    };
    // NVRTC wants a 'static arch string: one per target, kept for the process
    static NAMES: std::sync::Mutex<Vec<(u32, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap();
    if let Some(&(_, name)) = names.iter().find(|(t, _)| *t == target) {
        return Ok(name);
    }
    let name: &'static str = Box::leak(format!("compute_{target}").into_boxed_str());
    names.push((target, name));
    Ok(name)
}

/// Whether libnvrtc can be loaded (never panics).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library; it does not panic when the library is absent.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}
