//! `infinity launch [--nproc-per-node N …] -- train CONFIG …`: see `infinity_launcher::agent`.

use std::process::ExitCode;

use anyhow::Context;
use infinity_launcher::agent::{launch, LaunchArgs};

pub fn run(a: LaunchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the infinity binary")?;
    let code = launch(a, exe)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
