//! `infinity launch [--nproc-per-node N …] -- train CONFIG …`: see `infinity_launcher::agent`.

use std::process::ExitCode;

use anyhow::Context;
use infinity_launcher::agent::{check_args, launch, LaunchArgs};

use super::Permanent;

pub fn run(a: LaunchArgs) -> anyhow::Result<ExitCode> {
    check_args(&a).map_err(Permanent::Invocation)?;
    let exe = std::env::current_exe().context("locating the infinity binary")?;
    let code = launch(a, exe)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
