//! The `infinity` command line. Everything lives in `infinity_trainer::cli`, so tests can run commands
//! in-process.

fn main() -> std::process::ExitCode {
    infinity_trainer::cli::main()
}
