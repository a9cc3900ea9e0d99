//! Every `.cu` source compiles with NVRTC (no GPU needed); a broken source names its file and shows the
//! compiler log. CI installs NVRTC from the `nvidia-cuda-nvrtc` wheel and runs this with `--features
//! cuda` (scripts/test.sh); without NVRTC it fails under CI and says it skipped elsewhere.
//! `INFINITY_PTX_DIR=dir` keeps every PTX as `dir/{file}.{arch}.ptx`.
#![cfg(feature = "cuda")]

use infinity_kernels::cuda::compile::{
    compile_ptx, compile_ptx_with, compile_source, nvrtc_present, CompileError, SOURCES,
};

fn nvrtc_or_skip() -> bool {
    if nvrtc_present() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must compile the CUDA kernels, but libnvrtc was not found");
    println!("skipped: libnvrtc not found (pip install nvidia-cuda-nvrtc; LD_LIBRARY_PATH=.../nvidia/cu13/lib)");
    false
}

#[test]
fn every_kernel_source_compiles() {
    if !nvrtc_or_skip() {
        return;
    }
    for (file, _) in SOURCES {
        for arch in ["compute_80", "compute_90"] {
            let t0 = std::time::Instant::now();
            let ptx = compile_ptx(file, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.to_src().contains(".entry"), "{file}: no kernel entry in the PTX");
            // INFINITY_PTX_DIR keeps the PTX, e.g. for `ptxas -v` (registers, spills)
            if let Some(dir) = std::env::var_os("INFINITY_PTX_DIR") {
                keep_ptx(std::path::Path::new(&dir), &format!("{file}.{arch}.ptx"), &ptx.to_src());
            }
            println!("{file} for {arch}: {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
        }
    }
}

/// The tuning knobs the kernel bench compares (Device::set_defines) compile too, and change the code.
#[test]
fn tuning_knobs_compile() {
    if !nvrtc_or_skip() {
        return;
    }
    let (file, knob) = ("attention_bf16.cu", "FWD_BLOCKS_128=2");
    let ptx = compile_ptx_with(file, "compute_90", &[knob.to_string()]).unwrap_or_else(|e| panic!("{e}"));
    let default = compile_ptx(file, "compute_90").unwrap();
    assert!(ptx.to_src() != default.to_src(), "{file}: {knob} changes nothing");
    if let Some(dir) = std::env::var_os("INFINITY_PTX_DIR") {
        keep_ptx(std::path::Path::new(&dir), &format!("{file}.{knob}.compute_90.ptx"), &ptx.to_src());
    }
}

/// Writes `ptx` to `dir/name`, making `dir` when it is not there.
fn keep_ptx(dir: &std::path::Path, name: &str, ptx: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("INFINITY_PTX_DIR {}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, ptx).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[test]
fn a_compile_error_names_the_file_and_shows_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let e = compile_source("broken.cu", "extern \"C\" __global__ void k() { undefined_thing(); }", "compute_90")
        .unwrap_err();
    assert!(matches!(e, CompileError::Nvrtc { .. }));
    let text = e.to_string();
    assert!(text.contains("broken.cu") && text.contains("undefined_thing"), "{text}");
}
