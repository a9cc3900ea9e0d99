//! Cross-crate integration tests: pyarrow interoperability in both directions and the `infinity data`
//! command line end to end. One test binary (as ripgrep does), modules by topic.

mod cli_data;
mod cli_export;
mod cli_train;
mod fine_tune;
mod golden_check;
mod pyarrow_interop;
mod tensorboard_reader;
mod torch_checkpoints;
mod weights_files;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (this package's manifest folder).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a Python tool from tools/ and fail with its output if it fails. Python with pyarrow, numpy and
/// crc32c is a test dependency (tools/requirements.txt; .ci/run installs it).
pub fn python(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    run_python(args, true)
}

/// Run a Python tool that must fail (a checker finding a fault); returns its output.
pub fn python_fails(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    run_python(args, false)
}

fn run_python(args: &[&dyn AsRef<std::ffi::OsStr>], succeed: bool) -> String {
    let py = std::env::var("INFINITY_PYTHON").unwrap_or_else(|_| "python3".into());
    let out =
        Command::new(&py).args(args.iter().map(|a| a.as_ref())).current_dir(repo()).output().unwrap_or_else(|e| {
            panic!("cannot run `{py}`: {e}; install Python 3 with `pip install -r tools/requirements.txt`")
        });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.success(),
        succeed,
        "`{py} {:?}` {}:\n{text}",
        args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>(),
        if succeed { "failed" } else { "succeeded where it must fail" }
    );
    text
}

/// Run `infinity ARGS…` in-process; returns whether it exited successfully.
pub fn infinity(args: &[&str]) -> bool {
    let code = infinity_trainer::cli::run(std::iter::once("infinity").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("infinity {args:?}: {e:#}"));
    format!("{code:?}") == format!("{:?}", std::process::ExitCode::SUCCESS)
}

/// The error of an `infinity` command that must fail, and the exit code it would give.
pub fn fails(args: &[&str]) -> (String, u8) {
    match infinity_trainer::cli::run(std::iter::once("infinity").chain(args.iter().copied())) {
        Ok(code) => panic!("infinity {args:?} succeeded ({code:?}); expected an error"),
        Err(e) => (format!("{e:#}"), infinity_trainer::cli::exit_code(&e)),
    }
}

/// [`fails`]'s error.
pub fn err(args: &[&str]) -> String {
    fails(args).0
}

/// What `infinity sample -o PNG --bits BITS` drew, apart from the record of what drew it (`made_by`,
/// which names the source): the grid's pixels, and the bits with the rest of their metadata.
pub fn drawn(png: &Path, bits: &Path) -> (Vec<u8>, Vec<u8>, serde_json::Value) {
    let pixels = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).into_rgb8().into_raw();
    let bytes = std::fs::read(bits).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut about: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["infinity_sample"]).unwrap();
    about.as_object_mut().unwrap().remove("made_by");
    (pixels, st.tensor("bits").unwrap().data().to_vec(), about)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
