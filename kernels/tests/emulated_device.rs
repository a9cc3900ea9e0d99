//! The emulated CUDA device's own checks (kernels/emulator/device), which CI relies on to catch host
//! bugs a GPU would: a launch a GPU refuses is refused, fresh memory reads as NaN, and a kernel writing
//! past its buffer, or past the dynamic shared memory its launch gave, stops the process naming the
//! kernel. Runs only on the emulated device (scripts/test.sh
//! puts it on the library path); says it skipped on a GPU or without a device.
#![cfg(feature = "cuda")]

use std::process::Command;

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};
use infinity_kernels::cuda::device::{device_present, Arg};
use infinity_kernels::cuda::Device;

/// The device address of `b`.
fn ptr<T>(dev: &Device, b: &CudaSlice<T>) -> u64 {
    b.device_ptr(&dev.stream).0
}

/// Set in the child process that makes the out-of-bounds write.
const FAULT_CHILD: &str = "INFINITY_EMULATED_FAULT_CHILD";

/// The emulated device, in the child process a fault drill runs in (none in the parent test run).
fn fault_child() -> Option<Device> {
    std::env::var_os(FAULT_CHILD).map(|_| emulated().expect("the emulated device"))
}

fn emulated() -> Option<Device> {
    if !device_present() {
        println!("skipped: no CUDA device (the emulated one: tools/emulated_device.py)");
        return None;
    }
    let dev = Device::open(0).expect("opening CUDA device 0");
    if !dev.name.starts_with("Emulated") {
        println!("skipped: {} is not the emulated device", dev.name);
        return None;
    }
    Some(dev)
}

#[test]
fn launches_a_gpu_refuses_are_refused() {
    let Some(dev) = emulated() else { return };
    let s = &dev.stream;
    let (x, y) = (s.alloc_zeros::<f32>(64).unwrap(), s.alloc_zeros::<u16>(64).unwrap());
    let args = |x: u64, y: u64| [Arg::Ptr(x), Arg::Ptr(y), Arg::I64(64)];
    let (px, py) = (ptr(&dev, &x), ptr(&dev, &y));
    let ok = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (64, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: to_bf16(x, y, n) over 64 values of live buffers; the refused launches run nothing.
    unsafe {
        dev.launch("util.cu", "to_bf16", ok, &args(px, py)).expect("a valid launch");
        let refused = [
            ("over 1024 threads", LaunchConfig { block_dim: (2048, 1, 1), ..ok }),
            ("grid y over 65535", LaunchConfig { grid_dim: (1, 65536, 1), ..ok }),
            ("64 KiB of dynamic shared memory without the opt-in", LaunchConfig { shared_mem_bytes: 65536, ..ok }),
        ];
        for (what, cfg) in refused {
            assert!(dev.launch("util.cu", "to_bf16", cfg, &args(px, py)).is_err(), "{what}: launched");
        }
        assert!(dev.launch("util.cu", "no_such_kernel", ok, &args(px, py)).is_err(), "a kernel not in the PTX");
    }
}

#[test]
fn fresh_memory_reads_as_nan() {
    let Some(dev) = emulated() else { return };
    // SAFETY: read back without writing, on purpose: what an unzeroed accumulator would start from.
    let fresh = unsafe { dev.stream.alloc::<f32>(100) }.unwrap();
    let host = dev.stream.clone_dtoh(&fresh).unwrap();
    assert!(host.iter().all(|v| v.is_nan()), "fresh memory holds numbers: {:?}", &host[..4]);
}

/// Not a test on its own: the child process of `a_write_past_a_buffer_stops_naming_the_kernel`.
#[test]
#[ignore]
fn write_past_a_buffer() {
    let Some(dev) = fault_child() else { return };
    // y is 128 values (256 bytes, the allocation unit) short: the last writes land just past its end,
    // in the guard page, where nothing else would notice them
    let n = 4096;
    let (x, y) = (dev.stream.alloc_zeros::<f32>(n).unwrap(), dev.stream.alloc_zeros::<u16>(n - 128).unwrap());
    let cfg = LaunchConfig { grid_dim: (4, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: none, on purpose: to_bf16 writes n values into a buffer of n − 128 (host memory here).
    let _ = unsafe {
        dev.launch("util.cu", "to_bf16", cfg, &[Arg::Ptr(ptr(&dev, &x)), Arg::Ptr(ptr(&dev, &y)), Arg::I64(n as i64)])
    };
    println!("the write past the buffer did not fault");
}

/// Not a test on its own: the child process of `a_kernel_past_its_shared_memory_stops_naming_it`.
#[test]
#[ignore]
fn shared_memory_past_the_launch() {
    let Some(dev) = fault_child() else { return };
    let s = &dev.stream;
    // one plane through scales 1×1, 8×8, 16×16: its last region, the 8×8 scale's 64 codes, is left out
    // of the launch's shared memory, as a host formula that forgot it would
    let scales = [(1usize, 1usize), (8, 8), (16, 16)];
    let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
    let bytes = infinity_kernels::cuda::bsq::planes_smem_bytes(&scales) - 64;
    let latent = s.clone_htod(&[0.5f32; 256]).unwrap();
    let sched = s.clone_htod(&[1i32, 1, 8, 8, 16, 16]).unwrap();
    let keys = s.clone_htod(&[7u64]).unwrap();
    let (gt, x) = (s.alloc_zeros::<u8>(l).unwrap(), s.alloc_zeros::<f32>(l - 1).unwrap());
    let i = Arg::int;
    let args = [
        Arg::Ptr(ptr(&dev, &latent)),
        Arg::Ptr(ptr(&dev, &sched)),
        i(3),
        i(1),
        i(16),
        i(16),
        i(64),
        i(8),
        Arg::Ptr(ptr(&dev, &keys)),
        i(0),
        i(0),
        Arg::Ptr(ptr(&dev, &gt)),
        i(l),
        Arg::Ptr(ptr(&dev, &x)),
        i(1),
    ];
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: bytes as u32 };
    // SAFETY: none, on purpose: the kernel's layout needs 64 bytes more shared memory than it gets.
    let _ = unsafe { dev.launch("bsq.cu", "self_correct_planes_f32", cfg, &args) };
    println!("the access past the shared memory did not fault");
}

/// Runs the ignored child `name` of this test binary and checks it stopped naming `kernel`.
fn child_stops_naming(name: &str, kernel: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads", "1"])
        .env(FAULT_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child {name} finished: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains(&format!("kernel {kernel} touched")), "the fault does not name {kernel}: {stderr}");
}

#[test]
fn a_write_past_a_buffer_stops_naming_the_kernel() {
    if emulated().is_some() {
        child_stops_naming("write_past_a_buffer", "to_bf16");
    }
}

#[test]
fn a_kernel_past_its_shared_memory_stops_naming_it() {
    if emulated().is_some() {
        child_stops_naming("shared_memory_past_the_launch", "self_correct_planes_f32");
    }
}

/// Set in the child process that plays an older or newer GPU: its compute capability.
const COMPUTE_CHILD: &str = "INFINITY_EMULATED_COMPUTE";

/// Not a test on its own: the child process of `older_and_newer_gpus_get_an_error_or_compatible_ptx`
/// and `a_driver_older_than_nvrtc_is_named`, on an emulated device of compute capability
/// $INFINITY_EMULATED_COMPUTE. Prints what it saw.
#[test]
#[ignore]
fn gpu_of_another_generation() {
    if std::env::var_os(COMPUTE_CHILD).is_none() || !device_present() {
        return;
    }
    let dev = match Device::open(0) {
        Ok(dev) => dev,
        Err(e) => return println!("OPEN FAILED: {e}"),
    };
    println!("OPENED {:?} targeting {}", dev.compute, dev.arch);
    let s = &dev.stream;
    let (x, mut y) = (s.clone_htod(&[1.5f32; 64]).unwrap(), s.alloc_zeros::<u16>(64).unwrap());
    match infinity_kernels::cuda::linear::to_bf16_dev(&dev, &x, &mut y) {
        Ok(()) => println!("KERNEL RAN: {:#06x}", s.clone_dtoh(&y).unwrap()[0]),
        Err(e) => println!("KERNEL FAILED: {e}"),
    }
    for bf16 in [false, true] {
        match infinity_kernels::cuda::linear::Gemm::new(&dev, bf16) {
            Ok(_) => println!("GEMM bf16={bf16}: ok"),
            Err(e) => println!("GEMM bf16={bf16}: {e}"),
        }
    }
    // the f32 head for 64 bits takes 68 KiB of shared memory a block
    let (n, c, d) = (4, 8, 64);
    let (h, w, b) = (vec![0.1; n * c], vec![0.1; 2 * d * c], vec![0.0; 2 * d]);
    let math = infinity_kernels::cuda::Math::F32;
    let head = infinity_kernels::cuda::head_ce::head_bitwise_ce;
    match head(&dev, &h, &w, &b, &vec![0; n * d], &vec![1.0; n], 0.0, d, true, math, false) {
        Ok(_) => println!("HEAD d={d}: ok"),
        Err(e) => println!("HEAD d={d}: {e}"),
    }
}

/// A kernel that needs more shared memory than the GPU lets a block opt into (the f32 head for 64 bits,
/// 68 KiB, on a T4's 64 KiB) is an error naming the kernel and both sizes, not the driver's bare
/// "invalid value"; a GPU with the room runs it.
#[test]
fn a_kernel_past_the_gpus_shared_memory_is_named() {
    let Some(_) = emulated() else { return };
    let t4 = play_gpu(&[(COMPUTE_CHILD, "7.5".into()), ("INFINITY_EMULATED_OPTIN_SMEM", "65536".into())]);
    assert!(
        t4.contains(
            "HEAD d=64: not supported here: kernel `head_bitwise_ce_f32_l128` (kernels/cuda/head_ce.cu) needs \
             69632 bytes of shared memory per block; the Emulated"
        ) && t4.contains("allows 65536"),
        "{t4}"
    );
    let h200 = play_gpu(&[(COMPUTE_CHILD, "9.0".into())]);
    assert!(h200.contains("HEAD d=64: ok"), "{h200}");
}

/// A GPU newer than NVRTC gets NVRTC's newest target (forward-compatible PTX the driver compiles for
/// it) and runs; one older than every target is a clear error when opened, naming both; bf16 matmuls
/// on a GPU before compute capability 8.0 are refused, naming the GPU.
#[test]
fn older_and_newer_gpus_get_an_error_or_compatible_ptx() {
    let Some(_) = emulated() else { return };
    let Some((targets, _)) = infinity_kernels::cuda::compile::nvrtc_targets() else {
        return println!("skipped: NVRTC does not list its targets");
    };
    let (oldest, newest) = (targets[0], targets[targets.len() - 1]);
    let play = |cc: u32| play_gpu(&[(COMPUTE_CHILD, format!("{}.{}", cc / 10, cc % 10))]);
    // newer than NVRTC: its newest target, and kernels run
    let future = play(newest + 10);
    assert!(future.contains(&format!("targeting compute_{newest}")), "a newer GPU: {future}");
    assert!(future.contains("KERNEL RAN: 0x3fc0"), "a newer GPU runs the kernels: {future}");
    // older than every target: refused when opened, with both named
    let old = play(oldest - 5);
    let want = format!("compute capability {}.{}", (oldest - 5) / 10, (oldest - 5) % 10);
    assert!(old.contains("OPEN FAILED") && old.contains(&want), "an older GPU: {old}");
    assert!(old.contains(&format!("compute_{oldest}")), "the error names NVRTC's oldest target: {old}");
    // a GPU NVRTC targets but without bf16 tensor cores: f32 matmuls only
    if oldest < 80 {
        let turing = play(75);
        assert!(turing.contains("GEMM bf16=false: ok"), "f32 matmuls before 8.0: {turing}");
        assert!(
            turing.contains("GEMM bf16=true: not supported here: bf16 matmuls need") && turing.contains("is 7.5"),
            "bf16 matmuls before 8.0: {turing}"
        );
    }
}

/// The stdout of `gpu_of_another_generation` run with `env`.
fn play_gpu(env: &[(&str, String)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "gpu_of_another_generation", "--ignored", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A driver older than NVRTC (pip's wheels follow the newest CUDA, cluster drivers lag) cannot load
/// its PTX: the first kernel says so, naming both versions and what to install.
#[test]
fn a_driver_older_than_nvrtc_is_named() {
    let Some(_) = emulated() else { return };
    let Some((_, nvrtc)) = infinity_kernels::cuda::compile::nvrtc_targets() else {
        return println!("skipped: NVRTC does not say its version");
    };
    if !nvrtc.starts_with("13.") {
        return println!("skipped: the check is written for NVRTC 13 (here {nvrtc})");
    }
    let seen = play_gpu(&[(COMPUTE_CHILD, "9.0".into()), ("INFINITY_EMULATED_DRIVER", "12.2".into())]);
    assert!(
        seen.contains("KERNEL FAILED")
            && seen.contains("CUDA 12.2")
            && seen.contains(&format!("NVRTC {nvrtc}"))
            && seen.contains("nvidia-cuda-nvrtc-cu12==12.2.*"),
        "{seen}"
    );
    let current = play_gpu(&[(COMPUTE_CHILD, "9.0".into()), ("INFINITY_EMULATED_DRIVER", "13.0".into())]);
    assert!(current.contains("KERNEL RAN"), "a driver as new as NVRTC loads its PTX: {current}");
}
