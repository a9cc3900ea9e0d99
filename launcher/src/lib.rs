//! Scale-out without the model: the `infinity launch` agent (`agent`), the rendezvous store (`store`),
//! the process's place in the group from the environment (`env`), and communicators (`comm`: a TCP ring
//! for CPU ranks; NCCL for GPUs with issue 6).

/// `println!` that ignores a closed stdout: a log pipe that died (a launcher killed, `| head`) must
/// not stop a run mid-way, nor turn its exit code into a panic's. (The trainer's `#[macro_use]`s them.)
#[macro_export]
macro_rules! console {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr (as [`console!`]).
#[macro_export]
macro_rules! console_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout (as [`console!`]).
#[macro_export]
macro_rules! console_text {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// A count a command line takes that must be at least 1 (ranks, iterations, a batch, a world size), for
/// clap's `value_parser`.
pub fn positive() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

pub mod agent;
pub mod bench;
pub mod comm;
pub mod env;
pub mod store;
