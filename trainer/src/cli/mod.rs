//! `infinity <subcommand>`: `main` parses, `run` dispatches and returns an exit code, errors print once.

mod comm;
mod data;
mod eval;
mod export;
mod golden;
mod launch;
mod model;
mod sample;
mod sweep;
mod train;
mod weights_file;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "infinity", version, about = "Train bitwise visual autoregressive (Infinity) models", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make, pack, inspect, verify and measure datasets of pre-tokenized bits.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Compare the model or bitwise self-correction with reference golden folders.
    #[command(subcommand)]
    Golden(golden::GoldenCommand),
    /// Train a model from a TOML config (on the CPU, or a CUDA GPU with `run.device`).
    Train(train::TrainArgs),
    /// Start and supervise data-parallel ranks on this node (torchrun-like): `launch -- train CONFIG`.
    Launch(infinity_launcher::agent::LaunchArgs),
    /// Communicator benchmarks (all-reduce bus bandwidth, rendezvous time) and the ranks' flight records.
    #[command(subcommand)]
    Comm(comm::CommCommand),
    /// Sample images (or bits) from a checkpoint, an export or a weights file, with classifier-free guidance.
    Sample(sample::SampleArgs),
    /// Export inference weights (upstream names, f32 or bf16) and config.json, of a checkpoint, export or weights file.
    Export(export::ExportArgs),
    /// Validation loss of a run's checkpoints (or one), as training measures it, on its validation sets or another dataset.
    Eval(eval::EvalArgs),
    /// Expand a sweep (base config × axes) into runs and run them, print them, or write a SLURM array.
    Sweep(sweep::SweepArgs),
    /// Fit scaling laws over a folder of runs; write tables and plots.
    Scaling(sweep::ScalingArgs),
    /// Model sizes, FLOPs and training throughput (CPU, or GPU with `--device cuda`).
    #[command(subcommand)]
    Model(model::ModelCommand),
}

/// Parse `args` (including the program name) and run the command.
pub fn run<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Golden(cmd) => golden::run(cmd),
        Command::Model(cmd) => model::run(cmd),
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Launch(a) => launch::run(a),
        Command::Sweep(a) => sweep::run_sweep(a),
        Command::Scaling(a) => sweep::run_scaling(a),
        Command::Comm(cmd) => comm::run(cmd),
        Command::Export(a) => export::run(a),
        Command::Eval(a) => eval::run(a),
    }
}

/// An error that a restart would repeat: the process exits with a code `infinity launch` does not
/// restart (`exit_code`).
#[derive(Debug)]
pub enum Permanent {
    /// The command line or the config is wrong (not the data, the run or the machine).
    Invocation(anyhow::Error),
    /// The dataset's contents are: a corrupt shard, a row that fails its checks, a non-finite sample.
    Data(anyhow::Error),
    /// The run diverged, or resuming it as it is would diverge again.
    Diverged(anyhow::Error),
}

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Permanent::Invocation(e) | Permanent::Data(e) | Permanent::Diverged(e)) = self;
        write!(f, "{e:#}")
    }
}

impl std::error::Error for Permanent {}

pub(crate) use infinity_launcher::{plural, positive, positive_of};

/// The process exit code for an error of `run`: `EXIT_BAD_INVOCATION`, `EXIT_BAD_DATA` or
/// `EXIT_DIVERGED` for a `Permanent` one, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use infinity_launcher::env::{EXIT_BAD_DATA, EXIT_BAD_INVOCATION, EXIT_DIVERGED};
    match e.downcast_ref::<Permanent>() {
        Some(Permanent::Invocation(_)) => EXIT_BAD_INVOCATION as u8,
        Some(Permanent::Data(_)) => EXIT_BAD_DATA as u8,
        Some(Permanent::Diverged(_)) => EXIT_DIVERGED as u8,
        None => 1,
    }
}

/// stderr for log events, a closed one taken as written: tracing reports a failed write with
/// `eprintln!`, which panics on the same closed pipe.
struct ClosedPipeOk;

impl std::io::Write for ClosedPipeOk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Log events as the console's own lines read: `warning: …`, `error: …` (as a failed command's last
/// line), and information as it is, without the timestamps and levels of tracing's default format that
/// set a few lines apart from all the others (the step lines, the summaries).
struct AsConsole;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for AsConsole
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prefix = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            _ => "",
        };
        // (the time, as the console's other lines, with INFINITY_LOG_TIME=1)
        w.write_str(&infinity_launcher::time_prefix().unwrap_or_default())?;
        w.write_str(prefix)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The least level logged: `INFINITY_LOG` (`error`, `warn`, `info`, `debug` or `trace`), `info` by
/// default (the debug lines, such as each of a ring's connection retries, are for debugging).
fn log_level() -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match std::env::var("INFINITY_LOG").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Ok("error") => LevelFilter::ERROR,
        Ok("warn") => LevelFilter::WARN,
        Ok("debug") => LevelFilter::DEBUG,
        Ok("trace") => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    }
}

pub fn main() -> ExitCode {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    // (no colour codes in fields written to a pipe or a file)
    let ansi = std::io::stderr().is_terminal();
    let layer = tracing_subscriber::fmt::layer().event_format(AsConsole).with_ansi(ansi).with_writer(|| ClosedPipeOk);
    tracing_subscriber::registry().with(layer.with_filter(log_level())).init();
    match run(std::env::args_os()) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<clap::Error>() {
            Some(c) => {
                let _ = c.print();
                ExitCode::from(if c.use_stderr() { 2 } else { 0 })
            }
            None => {
                console_err!("error: {e:#}");
                ExitCode::from(exit_code(&e))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer, for the subscriber under test.
    #[derive(Clone)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `infinity launch -- SUBCOMMAND` runs this binary for every subcommand but `launch` itself.
    #[test]
    fn the_launcher_knows_every_subcommand() {
        use clap::CommandFactory;
        let known = infinity_launcher::agent::OWN_SUBCOMMANDS;
        for sub in super::Cli::command().get_subcommands().map(|c| c.get_name()).filter(|&n| n != "launch") {
            assert!(known.contains(&sub), "`infinity {sub}` is missing from the launcher's OWN_SUBCOMMANDS");
        }
    }

    #[test]
    fn log_events_read_as_the_consoles_own_lines() {
        let buf = Buffer(Arc::new(Mutex::new(Vec::new())));
        let out = buf.clone();
        let sub = tracing_subscriber::fmt().event_format(super::AsConsole).with_writer(move || out.clone()).finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!("step {}: update skipped", 7);
            tracing::info!("first step done");
            tracing::error!("writing summary.json: disk full");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "warning: step 7: update skipped\nfirst step done\nerror: writing summary.json: disk full\n");
    }
}
