//! The `infinity` command line. Everything lives in `infinity_trainer::cli`, so tests can run commands
//! in-process.

/// mimalloc keeps freed pages for reuse: a training step frees and re-allocates the same large buffers,
/// and with the system allocator each of them came back as fresh pages (a page fault per 4 KiB, about
/// 10 % of a CPU step in `infinity model bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    infinity_trainer::cli::main()
}
