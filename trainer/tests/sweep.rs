//! A mini scaling sweep end to end on the CPU: three tiny models with validation, `infinity sweep` runs
//! them, a second invocation skips them, `infinity scaling` writes the table, fits and figures, and
//! TensorBoard's HParams plugin reads each run's hyperparameters. A diverging run is listed as failed.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_infinity");

fn infinity(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).output().unwrap()
}

/// `infinity` with `INF__…` variables in its environment.
fn infinity_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).envs(env.iter().copied()).output().unwrap()
}

fn refused(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "expected a refusal:\n{text}");
    text
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "failed ({:?}):\n{text}", out.status);
    text
}

fn python(args: &[&str]) -> String {
    let py = std::env::var("INFINITY_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(&py).args(args).current_dir(root).output().expect("python3 (tools/requirements.txt)");
    ok(out)
}

const BASE: &str = r#"
[run]
dir = "unused"
seed = 5
steps = 30
log_every = 1000
[model]
preset = "tiny"
conditioning = "class"
[data]
dir = "data"
global_batch = 8
micro_batch = 8
[optim]
lr = 3e-3
warmup_steps = 3
[checkpoint]
every = 0
keep_last = 1
[val]
dir = "val"
every = 10
max_rows = 48
"#;

#[test]
fn a_mini_sweep_runs_resumes_and_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let demo = ["--rows", "256", "--fit-rows", "64", "--budget", "demo4"];
    ok(infinity(&[&["data", "synth", "--out", "data", "--seed", "1"][..], &demo[..]].concat(), t));
    // the validation split shares the training data's tokenizer; a different one is refused
    let tok = t.join("data/tokenizer.safetensors");
    let val = ["data", "synth", "--out", "val", "--seed", "2", "--tokenizer", tok.to_str().unwrap()];
    ok(infinity(&[&val[..], &demo[..]].concat(), t));
    std::fs::write(t.join("base.toml"), BASE).unwrap();
    std::fs::write(
        t.join("sweep.toml"),
        "base = \"base.toml\"\nout = \"sweep\"\n[axes]\n\"model.embed_dim\" = [64, 128, 192]\n\"model.num_heads\" = [2]\n",
    )
    .unwrap();

    let plan = ok(infinity(&["sweep", "sweep.toml", "--dry-run"], t));
    assert!(plan.contains("embed-dim-64_num-heads-2") && plan.contains("3 runs"), "{plan}");
    // runs that would share a folder, and settings the sweep makes itself, are refused before any run
    for (axes, want) in [
        ("\"optim.lr\" = [1e-3, 0.001]", "(optim.lr = 0.001) is listed twice: give each value of an axis"),
        ("\"data.dir\" = [\"data/x\", \"data-x\"]", "(data.dir = \"data/x\") and (data.dir = \"data-x\") would share"),
        ("\"run.dir\" = [\"a\", \"b\"]", "`run.dir` is the sweep's to set"),
        ("tokens = [1e5]\n\"run.steps\" = [3]", "`run.steps` beside a `tokens` axis"),
        ("tokens = [-5]", "a token budget of -5: expected a positive, finite budget"),
        ("tokens = [0, 1e5]", "a token budget of 0: expected a positive, finite budget"),
        // a number in quotes is refused as in a config file (it was taken as the number)
        (
            "\"model.embed_dim\" = [\"64\", 96]",
            "[axes] model.embed_dim: expected a number as TOML writes one (0.001, 1e-3; not in quotes), found \"64\"",
        ),
        ("tokens = [1e30]", "expected a positive budget of at most 1e12 steps"),
        // under one step (it rounded up to 1 step), and budgets that come to the same whole steps
        ("tokens = [100]", "run tokens-100: a token budget of 100 is less than one step of"),
        ("tokens = [1e5, 1.00001e5]", "the runs tokens-1e5 and tokens-1.00001e5 would train the same config"),
        ("\"model.mlp_ratio\" = [4, 4.0]", "mlp-ratio-4 and mlp-ratio-4.0 would train the same config; their axis"),
        // an entry of a list the base config does not have
        ("\"data.mix[0].weight\" = [1, 2]", "which the base config must hold: put the `[[data.mix]]` tables"),
        // a whole number written as a float: the config takes it, the run's name would keep the `.0`
        (
            "\"model.depth\" = [2, 1.0]",
            "axis `model.depth` = 1.0: `model.depth` is a whole number: write 1, not 1.0 (runs are named",
        ),
        // a validation set that is not there fails at plan time, not in every run
        ("\"val.dir\" = [\"no-such-val\"]", "run dir-no-such-val: val.dir"),
        // a global batch no bucket of the 256 rows fills, as the run's loader refuses at start
        (
            "\"data.global_batch\" = [512]",
            "data.global_batch = 512: no bucket (schedule) of its data has a full global batch (largest: ",
        ),
    ] {
        std::fs::write(t.join("clash.toml"), format!("base = \"base.toml\"\nout = \"clash\"\n[axes]\n{axes}\n"))
            .unwrap();
        let out = infinity(&["sweep", "clash.toml", "--dry-run"], t);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains(want), "{axes}: {text}");
    }
    assert!(!t.join("clash").exists());
    let clash = |axes: &str, set: &str| {
        let text = format!("base = \"base.toml\"\nout = \"clash\"\n[set]\n{set}\n[axes]\n{axes}\n");
        std::fs::write(t.join("clash.toml"), text).unwrap();
    };
    // a missing base file is the sweep file's error, named by its key
    std::fs::write(t.join("clash.toml"), "base = \"no-base.toml\"\nout = \"clash\"\n[axes]\n\"optim.lr\" = [1e-3]\n")
        .unwrap();
    let text = refused(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    assert!(
        text.contains("clash.toml: `base` = \"no-base.toml\": no config file at") && !text.contains("run "),
        "{text}"
    );
    // a validation set is checked against each run's model: its text width matters to the text model alone
    let wide = ["data", "synth", "--out", "val-48", "--text-width", "48", "--tokenizer", tok.to_str().unwrap()];
    ok(infinity(&[&wide[..], &["--rows", "32", "--fit-rows", "32", "--budget", "demo4"][..]].concat(), t));
    clash("\"model.conditioning\" = [\"class\", \"text\"]", "\"val.dir\" = \"val-48\"");
    let text = refused(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    assert!(text.contains("run conditioning-text: val.dir") && text.contains("text features of width 48"), "{text}");
    // the missing validation set's message says what to do
    clash("\"model.num_heads\" = [2]", "\"val.dir\" = \"no-such-val\"");
    let text = refused(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    assert!(text.contains("no-such-val") && text.contains("make it with `infinity data synth --tokenizer"), "{text}");
    // a budget of 1.5 steps: 2 whole steps, 33 % over it, and fewer steps than the warm-up (3)
    clash("tokens = [1e6]", "");
    let plan = ok(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    let row: Vec<&str> = plan.lines().find(|l| l.starts_with("tokens-1e6")).unwrap().split_whitespace().collect();
    let per_step = row[3].parse::<f64>().unwrap() / row[2].parse::<f64>().unwrap();
    assert!(!plan.contains("warning:"), "a budget of many steps is met within 5 %:\n{plan}");
    clash(&format!("tokens = [{}]", (per_step * 1.5).round()), "");
    let plan = ok(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    assert!(plan.contains("warning: run tokens-") && plan.contains("% over its budget"), "{plan}");
    assert!(plan.contains("optim.warmup_steps (3) is not below run.steps (2, from its token budget"), "{plan}");
    // without a budget, each run's likely mistakes are said once, naming it
    clash("\"run.steps\" = [2, 4]", "");
    let plan = ok(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    let warned =
        |steps: u32| format!("warning: run steps-{steps}: optim.warmup_steps (3) is not below run.steps ({steps}):");
    assert!(plan.contains(&warned(2)) && !plan.contains(&warned(4)), "{plan}");
    assert_eq!(plan.matches("is not below run.steps").count(), 1, "{plan}");
    // a compute budget (an IsoFLOP design) sets the steps as a token budget does: 2.5 steps' FLOPs are 3
    let flops_per_step = row[4].parse::<f64>().unwrap() / row[2].parse::<f64>().unwrap();
    clash(&format!("compute = [{:e}]", flops_per_step * 2.5), "");
    let plan = ok(infinity(&["sweep", "clash.toml", "--dry-run"], t));
    let row: Vec<&str> = plan.lines().find(|l| l.starts_with("compute-")).unwrap().split_whitespace().collect();
    assert_eq!(row[2], "3", "{plan}");
    assert!(plan.contains("FLOPs, 20 % over its budget") && plan.contains("from its compute budget"), "{plan}");
    for (axes, want) in [
        ("compute = [1e15]\ntokens = [1e6]", "axes `tokens` and `compute`: a run's steps spend one budget"),
        ("compute = [1e15]\n\"run.steps\" = [3]", "`run.steps` beside a `compute` axis"),
        ("compute = [1]", "a compute budget of 1 is less than one step of"),
    ] {
        clash(axes, "");
        let text = refused(infinity(&["sweep", "clash.toml", "--dry-run"], t));
        assert!(text.contains(want), "{axes}: {text}");
    }
    assert!(!t.join("clash").exists());
    let out = ok(infinity(&["sweep", "sweep.toml"], t));
    assert!(out.contains("sweep done: 3 runs"), "{out}");
    let again = ok(infinity(&["sweep", "sweep.toml"], t));
    assert_eq!(again.matches("finished, skipped").count(), 3, "{again}");
    let printed = ok(infinity(&["sweep", "sweep.toml", "--print"], t));
    assert!(!printed.contains(" train "), "finished runs are not printed:\n{printed}");
    // the plan says what is done, and checks the slots of -j (here 2 on the CPU) as the real run would
    let plan = ok(infinity(&["sweep", "sweep.toml", "--dry-run", "-j", "2"], t));
    assert!(plan.contains("already: 3 finished; nothing left to train here"), "{plan}");
    let text = refused(infinity(&["sweep", "sweep.toml", "--dry-run", "-j", "2", "--devices", ","], t));
    assert!(text.contains("names an empty GPU id"), "{text}");
    let out = infinity(&["sweep", "sweep.toml", "--slurm", "done.sbatch"], t);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("the sweep's 3 runs finished: nothing to submit"), "{said}");
    assert!(!t.join("done.sbatch").exists(), "no script for no runs");
    // a run whose config an earlier build wrote with relative paths has the same settings: it is kept,
    // its paths made absolute
    let run64 = t.join("sweep/embed-dim-64_num-heads-2");
    let cfg64 = std::fs::read_to_string(run64.join("config.toml")).unwrap();
    let relative = cfg64.replace(&format!("\"{}/", t.display()), "\"");
    assert!(relative.contains("dir = \"data\"") && relative.contains("dir = \"val\""), "{relative}");
    std::fs::write(run64.join("config.toml"), &relative).unwrap();
    let again = ok(infinity(&["sweep", "sweep.toml"], t));
    assert_eq!(again.matches("finished, skipped").count(), 3, "{again}");
    assert_eq!(std::fs::read_to_string(run64.join("config.toml")).unwrap(), cfg64);
    // the sweep file changed since: the runs keep the configs they trained with, and it is refused
    let axes = "[axes]\n\"model.embed_dim\" = [64, 128, 192]\n\"model.num_heads\" = [2]\n";
    std::fs::write(
        t.join("changed.toml"),
        format!("base = \"base.toml\"\nout = \"sweep\"\n[set]\n\"optim.lr\" = 0.01\n{axes}"),
    )
    .unwrap();
    let out = infinity(&["sweep", "changed.toml"], t);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("3 runs trained with other settings") && text.contains("optim.lr"),
        "{text}"
    );
    assert!(std::fs::read_to_string(run64.join("config.toml")).unwrap().contains("lr = 0.003"));
    // what the runs log and checkpoint may change (a stopped run resumes with it): the finished ones
    // are skipped, keeping their configs
    let logging = "[set]\n\"run.log_every\" = 1\n\"checkpoint.every\" = 2\n\"val.every\" = 3\n";
    std::fs::write(t.join("logging.toml"), format!("base = \"base.toml\"\nout = \"sweep\"\n{logging}{axes}")).unwrap();
    // (its paths made absolute all the same, where an earlier build wrote them relative)
    std::fs::write(run64.join("config.toml"), &relative).unwrap();
    let again = ok(infinity(&["sweep", "logging.toml"], t));
    assert_eq!(again.matches("finished, skipped").count(), 3, "{again}");
    let kept: toml::Table = std::fs::read_to_string(run64.join("config.toml")).unwrap().parse().unwrap();
    assert_eq!(kept, cfg64.parse::<toml::Table>().unwrap());
    // a run's config holds absolute paths: it trains (here: checks) from any working folder
    ok(infinity(
        &["train", run64.join("config.toml").to_str().unwrap(), "--check", "--resume", "auto"],
        Path::new("/"),
    ));

    // validation ran every 10 steps on every run
    let val_lines = std::fs::read_to_string(t.join("sweep/embed-dim-128_num-heads-2/val.jsonl")).unwrap();
    assert_eq!(val_lines.lines().count(), 3, "{val_lines}");

    let report = ok(infinity(&["scaling", "sweep", "--budget", "1e13,1e15"], t));
    println!("{report}");
    assert!(report.contains("L = a·C^(−b)") && report.contains("Pearson r"), "{report}");
    let dir = t.join("sweep/scaling");
    // the budgets: L(C) predicts a loss at each; 3 runs cannot fit L(N, D), so no N* and D*
    let fits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fits.json")).unwrap()).unwrap();
    let budgets = fits["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2, "{fits}");
    assert!(budgets.iter().all(|b| b["loss_power"].as_f64().is_some_and(|l| l > 0.0) && b["optimal"].is_null()));
    assert!(budgets[1]["loss_power"].as_f64() < budgets[0]["loss_power"].as_f64(), "more compute, lower loss");
    assert!(report.contains("## Budgets") && report.contains("L(N, D) was not fitted"), "{report}");
    for f in [
        "runs.csv",
        "runs.md",
        "fits.md",
        "fits.json",
        "loss_vs_compute.png",
        "loss_vs_compute.svg",
        "loss_curves.png",
        "loss_curves.svg",
    ] {
        let len = std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    assert!(image::open(dir.join("loss_vs_compute.png")).is_ok());
    let csv = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let order: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(order, ["embed-dim-64_num-heads-2", "embed-dim-128_num-heads-2", "embed-dim-192_num-heads-2"]);
    // each run's shape, learning rate, batch and throughput, for a table that needs no name parsing
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let cell = |row: usize, name: &str| -> String {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}: {csv}"));
        csv.lines().nth(row + 1).unwrap().split(',').nth(i).unwrap().to_string()
    };
    let shape = ["depth", "embed_dim", "num_heads", "lr", "global_batch"].map(|c| cell(2, c));
    assert_eq!(shape, ["2", "192", "2", "0.003", "8"], "{csv}");
    assert!(cell(0, "tokens_per_s").parse::<f64>().is_ok_and(|t| t > 0.0), "{csv}");
    assert_eq!(cell(0, "mfu"), "", "no peak on the CPU: {csv}");
    // N less the embeddings (class table, level and start positions, the bits' input embedding), as
    // derived.json records it
    let derived: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("sweep/embed-dim-192_num-heads-2/derived.json")).unwrap())
            .unwrap();
    let (all, core) = (cell(2, "parameters"), cell(2, "non_embedding_parameters"));
    assert_eq!(core, derived["parameters_non_embedding"].to_string(), "{csv}");
    assert!(core.parse::<u64>().unwrap() < all.parse::<u64>().unwrap(), "{csv}");
    // fitted with that N instead: beside the plain analysis, its points at the non-embedding counts
    let report = ok(infinity(&["scaling", "sweep", "--parameters", "non-embedding"], t));
    assert!(report.contains("N counts the parameters outside the embeddings"), "{report}");
    let fits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("sweep/scaling-non-embedding/fits.json")).unwrap())
            .unwrap();
    assert_eq!(fits["parameters"], "non-embedding");
    let sizes: Vec<String> = fits["points"].as_array().unwrap().iter().map(|p| p["params"].to_string()).collect();
    assert!(sizes.contains(&format!("{}.0", core)), "{sizes:?} holds no {core}");
    assert!(dir.join("fits.json").is_file(), "the plain analysis stays");

    // TensorBoard's HParams plugin reads the run's hyperparameters
    let tb = python(&["tools/read_tensorboard.py", t.join("sweep/embed-dim-192_num-heads-2/tb").to_str().unwrap()]);
    let tb: serde_json::Value = serde_json::from_str(tb.lines().last().unwrap()).unwrap();
    assert_eq!(tb["hparams"]["model.embed_dim"], 192.0, "{tb}");
    // (no group name: each run is a group of its own, named after its folder; a name would merge runs
    // of one name, an abandoned history's copy or another sweep's, and average their metrics)
    assert_eq!(tb["hparams_group"], "", "{tb}");
    assert_eq!(tb["hparams"]["model.conditioning"], "class", "{tb}");
    let point = std::fs::read_to_string(t.join("sweep/embed-dim-192_num-heads-2/sweep-point.json")).unwrap();
    let point: serde_json::Value = serde_json::from_str(&point).unwrap();
    assert_eq!(point, serde_json::json!({"model.embed_dim": 192, "model.num_heads": 2}));
    assert!(tb["scalars"]["val/loss"].as_array().is_some_and(|v| v.len() == 3), "{tb}");

    // a job-array script for a fresh sweep; a diverging run is listed as failed
    std::fs::write(
        t.join("bad.toml"),
        "base = \"base.toml\"\nout = \"bad\"\n[set]\n\"optim.max_nonfinite\" = 2\n\"optim.warmup_steps\" = 0\n\
         [axes]\n\"optim.lr\" = [1e30]\n[slurm]\npartition = \"gpu\"\nmax_parallel = 4\n",
    )
    .unwrap();
    ok(infinity(&["sweep", "bad.toml", "--slurm", "bad.sbatch"], t));
    let script = std::fs::read_to_string(t.join("bad.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-0%4") && script.contains("--partition=gpu"), "{script}");
    assert!(script.contains("scontrol requeue") && script.contains("--log-dir \"$RUN/logs\""), "{script}");

    // paths with spaces stay one word: the array task finds its run's config (bash reads the script)
    std::fs::write(
        t.join("spaced.toml"),
        "base = \"base.toml\"\nout = \"my sweep\"\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]\n",
    )
    .unwrap();
    ok(infinity(&["sweep", "spaced.toml", "--slurm", "spaced.sbatch"], t));
    let script = std::fs::read_to_string(t.join("spaced.sbatch")).unwrap();
    let runs = script.split("RUNS=(").nth(1).unwrap().split("\nRUN=").next().unwrap();
    for task in 0..2 {
        let line =
            format!("RUNS=({runs}\nSLURM_ARRAY_TASK_ID={task}\nRUN=${{RUNS[$SLURM_ARRAY_TASK_ID]}}\necho \"$RUN\"");
        let out = Command::new("bash").args(["-c", &line]).output().unwrap();
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            Path::new(&dir).join("config.toml").is_file() && dir.contains("my sweep/lr-"),
            "task {task}: {dir:?}\n{script}"
        );
    }
    // an array task requeues its run when it stopped cleanly short of the end: checkpointed (summary.json
    // says not finished), or stopped before it trained (no summary.json); not a finished run or a failure
    // (srun and scontrol stand-ins: srun exits with $RC)
    let bin = t.join("stubs");
    std::fs::create_dir_all(&bin).unwrap();
    // (srun writes the summary.json the run would, if any: after the task's skip check, as a run does)
    let srun = "#!/bin/sh\n[ -n \"$WRITE\" ] && printf %s \"$WRITE\" > \"$SUMMARY\"\nexit $RC\n";
    std::fs::write(bin.join("srun"), srun).unwrap();
    std::fs::write(bin.join("scontrol"), "#!/bin/sh\necho \"$@\" > \"$REQUEUED\"\n").unwrap();
    for stub in ["srun", "scontrol"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join(stub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let summary = t.join("my sweep/lr-0.002/summary.json");
    for (rc, written, requeued) in [
        ("0", "", true),
        ("0", "{\"finished\": false, \"preempted\": true}", true),
        ("0", "{\"finished\": true}", false),
        ("1", "", false),
    ] {
        let _ = std::fs::remove_file(&summary);
        let marker = t.join("requeued");
        let _ = std::fs::remove_file(&marker);
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("bash")
            .arg(t.join("spaced.sbatch"))
            .envs([("PATH", path.as_str()), ("RC", rc), ("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_JOB_ID", "7")])
            .envs([("WRITE", written)])
            .env("REQUEUED", &marker)
            .env("SUMMARY", &summary)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(rc.parse().unwrap()), "{}", String::from_utf8_lossy(&out.stderr));
        let said = std::fs::read_to_string(&marker).unwrap_or_default();
        assert_eq!(said.contains("requeue 7_1"), requeued, "rc {rc}, summary {written:?}: {said:?}");
    }
    let _ = std::fs::remove_file(&summary);
    // a run that a job trains now (its folder's lock is held) is left to that job: not printed, not in a
    // script, and its config not rewritten
    let busy = t.join("my sweep/lr-0.001");
    let lock = infinity_trainer::train::run_lock::RunLock::acquire(&busy).unwrap();
    let out = infinity(&["sweep", "spaced.toml", "--print"], t);
    let (said, printed) = (String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success() && said.contains("run lr-0.001 is training now (its lock is held): left to that job"));
    assert!(printed.lines().count() == 1 && printed.contains("lr-0.002"), "{printed}\n{said}");
    ok(infinity(&["sweep", "spaced.toml", "--slurm", "busy.sbatch"], t));
    let script = std::fs::read_to_string(t.join("busy.sbatch")).unwrap();
    assert!(script.contains("--array=0-0\n") && !script.contains("lr-0.001"), "{script}");
    // a run that has written metrics (no checkpoint yet) keeps its config too, as does the busy one
    std::fs::write(t.join("my sweep/lr-0.002/metrics.jsonl"), "{\"step\":1,\"loss\":0.7}\n").unwrap();
    std::fs::write(
        t.join("spaced2.toml"),
        "base = \"base.toml\"\nout = \"my sweep\"\n[set]\n\"optim.clip\" = 0.5\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]\n",
    )
    .unwrap();
    let text = refused(infinity(&["sweep", "spaced2.toml", "--print"], t));
    assert!(text.contains("2 runs trained with other settings") && text.contains("lr-0.002: optim.clip"), "{text}");
    drop(lock);
    std::fs::remove_file(t.join("my sweep/lr-0.002/metrics.jsonl")).unwrap();
    ok(infinity(&["sweep", "spaced2.toml", "--print"], t));

    // INF__ variables go into every run's config at plan time, under the sweep's own settings, and are
    // not applied again by the runs it starts (here, the commands it prints, or the SLURM tasks)
    std::fs::write(
        t.join("env.toml"),
        "base = \"base.toml\"\nout = \"env\"\n[set]\n\"run.steps\" = 2\n\"run.log_every\" = 1\n\"val.every\" = 0\n\
         \"optim.warmup_steps\" = 0\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]\n",
    )
    .unwrap();
    let env = [("INF__RUN__STEPS", "1"), ("INF__OPTIM__LR", "0.5"), ("INF__OPTIM__CLIP", "0.25")];
    // (the command lines are for a shell to run: never with the time in front, as log lines get it)
    let timed = [&env[..], &[("INFINITY_LOG_TIME", "1")]].concat();
    let out = infinity_env(&["sweep", "env.toml", "--print"], t, &timed);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.lines().all(|l| l.starts_with("env -u INF__OPTIM__CLIP -u INF__OPTIM__LR -u INF__RUN__STEPS ")));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("INF__OPTIM__LR=0.5: ignored, the sweep sets `optim.lr` itself"), "{said}");
    assert!(said.contains("INF__RUN__STEPS=1: ignored, the sweep sets `run.steps` itself"), "{said}");
    assert!(said.contains("INF__OPTIM__CLIP=0.25: written into every run's config.toml"), "{said}");
    ok(infinity_env(&["sweep", "env.toml"], t, &env));
    for (run, lr) in [("lr-0.001", 1e-3), ("lr-0.002", 2e-3)] {
        let dir = t.join("env").join(run);
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(config.contains("clip = 0.25\n") && config.contains(&format!("lr = {lr}\n")), "{config}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(v["step"], 2, "{run}: trained the steps of its config, not INF__RUN__STEPS");
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        for line in metrics.lines() {
            let m: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(m["lr"].as_f64().is_some_and(|l| l <= lr * 1.0001), "{run}: {line}");
        }
    }
    ok(infinity_env(&["sweep", "env.toml", "--slurm", "env.sbatch"], t, &[("INF__OPTIM__CLIP", "0.25")]));
    // (both finished: no script) a fresh one's tasks unset the submitting shell's INF__ variables
    assert!(!t.join("env.sbatch").exists());
    let script = std::fs::read_to_string(t.join("spaced.sbatch")).unwrap();
    let unset = script.lines().find(|l| l.contains("compgen -e")).expect("the unset line");
    let out = Command::new("bash").args(["-c", &format!("{unset}\nenv")]).env("INF__OPTIM__LR", "0.5").output();
    let out = String::from_utf8_lossy(&out.unwrap().stdout).to_string();
    assert!(!out.contains("INF__") && out.contains("PATH="), "{out}");

    // a run that diverges is a result, not a failure: listed, and skipped by the next invocation
    let text = ok(infinity(&["sweep", "bad.toml"], t));
    assert!(text.contains("1 run diverged (final results") && text.contains("lr-1e30"), "{text}");
    let again = ok(infinity(&["sweep", "bad.toml"], t));
    assert!(again.contains("lr-1e30: diverged (summary.json), skipped"), "{again}");
    let out = infinity(&["sweep", "bad.toml", "--print"], t);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && out.stdout.is_empty() && said.contains("run lr-1e30 diverged"), "{said}");
    // the diverged run says so in its summary (it had none, and `infinity scaling` did not see it)
    let summary = std::fs::read_to_string(t.join("bad/lr-1e30/summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(v["diverged"] == true && v["finished"] == false && v["loss"].is_null(), "{summary}");

    // a run whose loss ended NaN (JSON null), diverged, is listed and left out of the fits, not an error
    // (a finished run whose last step alone was skipped keeps its smoothed loss: src/scaling/tests.rs)
    let diverged = t.join("sweep/zz-diverged");
    let copy = Command::new("cp").arg("-r").arg(t.join("sweep/embed-dim-192_num-heads-2")).arg(&diverged).status();
    assert!(copy.unwrap().success());
    let summary = std::fs::read_to_string(diverged.join("summary.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    (v["loss"], v["diverged"], v["finished"]) = (serde_json::Value::Null, true.into(), false.into());
    std::fs::write(diverged.join("summary.json"), v.to_string()).unwrap();
    std::fs::remove_file(diverged.join("val.jsonl")).unwrap();
    // and a run folder that never wrote a summary (it failed before its first checkpoint: its log says why)
    // is named, as is one never started (its config alone: no log to point at)
    for run in ["zz-silent", "zz-planned"] {
        std::fs::create_dir(t.join("sweep").join(run)).unwrap();
        std::fs::copy(diverged.join("config.toml"), t.join("sweep").join(run).join("config.toml")).unwrap();
    }
    std::fs::write(t.join("sweep/zz-silent/train.log"), "error: reading the dataset\n").unwrap();
    let report = ok(infinity(&["scaling", "sweep"], t));
    let fits = std::fs::read_to_string(t.join("sweep/scaling/fits.md")).unwrap();
    assert!(fits.contains("left out of the fits") && fits.contains("zz-diverged"), "{report}\n{fits}");
    assert!(
        fits.contains(
            "left out (no summary.json: stopped before their first checkpoint, failed or killed; their logs say what \
             they can): zz-silent\n"
        ),
        "{report}\n{fits}"
    );
    assert!(fits.contains("left out (not started: a config.toml alone, no log): zz-planned\n"), "{report}\n{fits}");
    for run in ["zz-silent", "zz-planned"] {
        std::fs::remove_dir_all(t.join("sweep").join(run)).unwrap();
    }
    // so is a run stopped before its end (its loss is of a schedule it did not finish)
    let stopped = t.join("sweep/zz-stopped");
    let copy = Command::new("cp").arg("-r").arg(t.join("sweep/embed-dim-128_num-heads-2")).arg(&stopped).status();
    assert!(copy.unwrap().success());
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.join("summary.json")).unwrap()).unwrap();
    v["finished"] = false.into();
    std::fs::write(stopped.join("summary.json"), v.to_string()).unwrap();
    ok(infinity(&["scaling", "sweep"], t));
    let fits = std::fs::read_to_string(t.join("sweep/scaling/fits.md")).unwrap();
    assert!(fits.contains("left out of the fits (not finished") && fits.contains("zz-stopped"), "{fits}");
    // one that diverged after finite validation losses is a final result, not a run to resume
    v["diverged"] = true.into();
    std::fs::write(stopped.join("summary.json"), v.to_string()).unwrap();
    ok(infinity(&["scaling", "sweep"], t));
    let fits = std::fs::read_to_string(t.join("sweep/scaling/fits.md")).unwrap();
    let line = fits.lines().find(|l| l.contains("zz-stopped")).unwrap_or_default();
    assert!(line.contains("(diverged: a final result"), "{fits}");
    std::fs::remove_dir_all(&stopped).unwrap();
    assert!(!dir.join("lr_sweep.md").exists(), "no run differs in its learning rate yet");

    // a run of width 64 at another learning rate (its config says so) makes a learning-rate sweep
    let other = t.join("sweep/zz-lr");
    let copy = Command::new("cp").arg("-r").arg(t.join("sweep/embed-dim-64_num-heads-2")).arg(&other).status();
    assert!(copy.unwrap().success());
    let config = std::fs::read_to_string(other.join("config.toml")).unwrap();
    assert!(config.contains("lr = 0.003\n"), "{config}");
    std::fs::write(other.join("config.toml"), config.replace("lr = 0.003\n", "lr = 0.01\n")).unwrap();
    ok(infinity(&["scaling", "sweep"], t));
    let table = std::fs::read_to_string(dir.join("lr_sweep.md")).unwrap();
    assert!(table.contains("| width 64, depth 2, standard, 30 steps | ") && table.contains("| lr 0.01 |"), "{table}");
    assert!(image::open(dir.join("loss_vs_lr.png")).is_ok());
    // the fits take each group's best rate (equal losses: the first, lr 0.003)
    let fits = std::fs::read_to_string(dir.join("fits.md")).unwrap();
    assert!(fits.contains("learning-rate groups (lr_sweep.md); left out at other rates: zz-lr"), "{fits}");
    // the figure names a rate whose run diverged (no point) and marks a run not finished
    for (name, lr, summary) in [
        ("zz-lr-wild", "1.0", serde_json::json!({ "step": 3, "loss": null, "finished": false, "diverged": true })),
        ("zz-lr-open", "0.02", serde_json::json!({ "step": 10, "loss": 0.7, "finished": false })),
    ] {
        let run = t.join("sweep").join(name);
        assert!(Command::new("cp").arg("-r").arg(&other).arg(&run).status().unwrap().success());
        std::fs::write(run.join("config.toml"), config.replace("lr = 0.003\n", &format!("lr = {lr}\n"))).unwrap();
        std::fs::write(run.join("summary.json"), summary.to_string()).unwrap();
    }
    ok(infinity(&["scaling", "sweep"], t));
    let svg = std::fs::read_to_string(dir.join("loss_vs_lr.svg")).unwrap();
    assert!(svg.contains("loss vs learning rate (×: a run not finished); diverged at learning rate, not drawn: 1"));
}

/// A folder with a dataset and `base.toml` (BASE without validation, its `data.dir` absolute, so that
/// the sweep plans from any working folder).
fn plan_fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    ok(infinity(
        &["data", "synth", "--out", "data", "--seed", "1", "--rows", "64", "--fit-rows", "64", "--budget", "demo4"],
        t,
    ));
    let base = BASE.split("[val]").next().unwrap().replace("dir = \"data\"", &format!("dir = {:?}", t.join("data")));
    std::fs::write(t.join("base.toml"), base).unwrap();
    tmp
}

/// The sweep file `name` in `t`: `base.toml`, `out`, then `rest` (sections and keys).
fn sweep_file(t: &Path, name: &str, out: &str, rest: &str) {
    std::fs::write(t.join(name), format!("base = \"base.toml\"\nout = \"{out}\"\n{rest}\n")).unwrap();
}

#[test]
fn the_plan_checks_the_batch_split_and_names_sweep_keys() {
    let tmp = plan_fixture();
    let t = tmp.path();
    // the batch must split over the ranks a run trains on (nproc_per_node × [slurm] nodes), as
    // `infinity train` checks at start: every mode refuses before writing
    let axes = "[axes]\n\"model.num_heads\" = [2]";
    for (head, slurm) in [("nproc_per_node = 2\n", ""), ("", "[slurm]\nnodes = 2\n")] {
        sweep_file(t, "ranks.toml", "ranks", &format!("{head}{axes}\n{slurm}"));
        for mode in [&["--dry-run"][..], &["--print"], &["--slurm", "ranks.sbatch"]] {
            let text = refused(infinity(&[&["sweep", "ranks.toml"][..], mode].concat(), t));
            assert!(text.contains("data.global_batch 8 must split into 2 ranks × whole micro-batches of 8"), "{text}");
        }
    }
    assert!(!t.join("ranks").exists() && !t.join("ranks.sbatch").exists());
    // runs on CUDA with a build without it would each start and fail: refused, warned of in a script
    if !cfg!(feature = "cuda") {
        sweep_file(t, "cuda.toml", "cuda", &format!("[set]\n\"run.device\" = \"cuda\"\n{axes}"));
        let text = refused(infinity(&["sweep", "cuda.toml"], t));
        assert!(text.contains("run.device = \"cuda\", and this build has no CUDA support"), "{text}");
        // (a plan may be for another build: said, not refused)
        let planned = infinity(&["sweep", "cuda.toml", "--dry-run"], t);
        let said = String::from_utf8_lossy(&planned.stderr).into_owned();
        assert!(said.contains("no CUDA support") && said.contains("without --dry-run refuses it"), "{said}");
        ok(planned);
        // (a script for GPU nodes is said to name this binary; the commands printed are the caller's)
        let said = String::from_utf8_lossy(&infinity(&["sweep", "cuda.toml", "--slurm", "cuda.sbatch"], t).stderr)
            .into_owned();
        assert!(said.contains("no CUDA support") && said.contains("the script runs this binary"), "{said}");
        ok(infinity(&["sweep", "cuda.toml", "--print"], t));
    }
    sweep_file(t, "ranks.toml", "ranks", &format!("nproc_per_node = 2\n[set]\n\"data.micro_batch\" = 4\n{axes}"));
    ok(infinity(&["sweep", "ranks.toml", "--dry-run"], t));

    // a global batch that some buckets do not fill: the plan names the run and the rows it never draws
    // (the fixture's 0.666 bucket holds 9 of the 64 rows)
    sweep_file(
        t,
        "undrawn.toml",
        "undrawn",
        "[set]\n\"data.micro_batch\" = 4\n[axes]\n\"data.global_batch\" = [8, 16]",
    );
    let said = ok(infinity(&["sweep", "undrawn.toml", "--dry-run"], t));
    let warned: Vec<&str> = said.lines().filter(|l| l.contains("never trained on")).collect();
    assert_eq!(warned.len(), 1, "{said}");
    assert!(warned[0].starts_with("warning: run global-batch-16: 9 of 64 rows (14.1 %)"), "{said}");
    assert!(warned[0].contains("0.666/demo4 (9 rows)"), "{said}");

    // a mix's datasets are checked as `infinity train` checks them, and written with absolute folders
    let base = std::fs::read_to_string(t.join("base.toml")).unwrap();
    std::fs::write(t.join("mixbase.toml"), format!("{base}\n[[data.mix]]\ndir = \"mixed\"\n")).unwrap();
    let mixed = |tokenizer: &[&str]| {
        let synth = ["data", "synth", "--out", "mixed", "--seed", "2", "--rows", "64", "--fit-rows", "64"];
        ok(infinity(&[&synth[..], &["--budget", "demo4", "--overwrite"], tokenizer].concat(), t));
    };
    mixed(&[]);
    std::fs::write(t.join("mix.toml"), "base = \"mixbase.toml\"\nout = \"mix\"\n[axes]\n\"model.num_heads\" = [2]\n")
        .unwrap();
    let text = refused(infinity(&["sweep", "mix.toml", "--dry-run"], t));
    assert!(text.contains("data.mix[0].dir") && text.contains("tokenized with a different tokenizer"), "{text}");
    mixed(&["--tokenizer", "data/tokenizer.safetensors"]);
    ok(infinity(&["sweep", "mix.toml", "--print"], t));
    let written = std::fs::read_to_string(t.join("mix/num-heads-2/config.toml")).unwrap();
    assert!(written.contains(&format!("dir = {:?}", t.join("mixed"))), "{written}");

    // a key the config does not have is named as the sweep file's section and key, with the valid keys
    for (rest, want) in [
        ("[axes]\n\"model.embed_dims\" = [64]", "[axes] model.embed_dims: unknown key `embed_dims`, expected one of"),
        ("[set]\n\"val.evry\" = 3\n[axes]\n\"model.num_heads\" = [2]", "[set] val.evry: unknown key `evry`"),
        // a one-word axis may also be a budget
        (
            "[axes]\ntoken = [1e6]",
            "[axes] token: unknown key `token`, expected one of `run`, `model`, `data`, `optim`, \
             `bsc`, `loss`, `checkpoint`, `sample`, `dist`, `val`, `tokens`, `compute`",
        ),
    ] {
        sweep_file(t, "keys.toml", "keys", rest);
        let text = refused(infinity(&["sweep", "keys.toml", "--dry-run"], t));
        assert!(text.contains(want) && !text.contains("--set"), "{text}");
    }

    // the table's columns are as wide as their widest entry: every line of it as long
    let long = "[axes]\n\"optim.max_nonfinite\" = [3]\n\"optim.spike_window\" = [50]\n\"run.seed\" = [5, 6]\n\
                \"model.num_heads\" = [2]\n\"optim.lr\" = [1e-3]";
    sweep_file(t, "long.toml", "long", long);
    let plan = ok(infinity(&["sweep", "long.toml", "--dry-run"], t));
    let table: Vec<&str> = plan.lines().take(3).collect();
    assert!(table[1].starts_with("num-heads-2_lr-0.001_max-nonfinite-3_spike-window-50_seed-5 "), "{plan}");
    assert!(table.iter().all(|l| l.chars().count() == table[0].chars().count()), "{plan}");
    assert!(plan.contains(&format!("run folders: {}/NAME", t.join("long").display())), "{plan}");
}

#[test]
fn the_plan_tells_of_runs_already_in_out() {
    let tmp = plan_fixture();
    let t = tmp.path();
    sweep_file(t, "one.toml", "s", "[axes]\n\"model.num_heads\" = [2]");
    ok(infinity(&["sweep", "one.toml", "--print"], t));
    assert!(t.join("s/num-heads-2/config.toml").is_file());

    // an axis added: every run is named anew, and the old folder trains the first one's config
    sweep_file(t, "seeds.toml", "s", "[axes]\n\"model.num_heads\" = [2]\n\"run.seed\" = [5, 6]");
    let plan = ok(infinity(&["sweep", "seeds.toml", "--dry-run"], t));
    assert!(
        plan.contains(
            "warning: the folder num-heads-2 in out trains the same config as the planned run num-heads-2_seed-5"
        ) && plan.contains("rename num-heads-2 to num-heads-2_seed-5"),
        "{plan}"
    );
    assert_eq!(plan.matches("warning: the folder").count(), 1, "seed 6 is another config:\n{plan}");
    // with both folders there, it says to drop one
    ok(infinity(&["sweep", "seeds.toml", "--print"], t));
    let plan = ok(infinity(&["sweep", "seeds.toml", "--dry-run"], t));
    assert!(plan.contains("remove one of them or move num-heads-2 out of"), "{plan}");

    // another sweep into the same out: told of the folders it does not plan, by --status too
    sweep_file(t, "other.toml", "s", "[axes]\n\"model.num_heads\" = [4]");
    for args in [&["sweep", "other.toml", "--dry-run"][..], &["sweep", "other.toml", "--status"]] {
        let text = ok(infinity(args, t));
        let said = "also holds 3 run folders this sweep does not plan (num-heads-2, num-heads-2_seed-5, \
                    num-heads-2_seed-6: another sweep's";
        assert!(text.contains(said) && text.contains("give a new sweep an out of its own"), "{args:?}:\n{text}");
    }

    // `out` is resolved from the current directory: from another one the plan says where the runs are
    std::fs::create_dir(t.join("elsewhere")).unwrap();
    let plan = ok(infinity(&["sweep", "../one.toml", "--dry-run"], &t.join("elsewhere")));
    let (new, old) = (t.join("elsewhere/s"), t.join("s"));
    assert!(plan.contains(&format!("run folders: {}/NAME", new.display())), "{plan}");
    assert!(
        plan.contains("out = \"s\" is resolved from the current directory")
            && plan.contains(&format!("but {} holds 3 run folders", old.display())),
        "{plan}"
    );
    let status = ok(infinity(&["sweep", "../one.toml", "--status"], &t.join("elsewhere")));
    assert!(status.contains("out = \"s\" is resolved from the current directory"), "{status}");
    assert!(!new.exists());

    // a run that trained with other settings: --dry-run refuses it as the real run does
    std::fs::write(t.join("s/num-heads-2/metrics.jsonl"), "{\"step\":1,\"loss\":0.7}\n").unwrap();
    sweep_file(t, "lr.toml", "s", "[set]\n\"optim.lr\" = 0.01\n[axes]\n\"model.num_heads\" = [2]");
    let text = refused(infinity(&["sweep", "lr.toml", "--dry-run"], t));
    assert!(text.contains("1 run trained with other settings") && text.contains("num-heads-2: optim.lr"), "{text}");
    assert!(text.contains("num-heads-2 "), "the plan is printed first:\n{text}");
}

#[test]
fn slurm_scripts_match_the_runs_gpus_and_skip_settled_runs() {
    let tmp = plan_fixture();
    let t = tmp.path();
    // GPUs requested that the runs would not use
    let axes = "[axes]\n\"model.num_heads\" = [2]\n[slurm]\ngpus_per_node = 4\n";
    sweep_file(t, "gpu.toml", "gpu", axes);
    let plan = ok(infinity(&["sweep", "gpu.toml", "--dry-run"], t));
    assert!(plan.contains("gpus_per_node = 4, but every run trains with run.device = \"cpu\""), "{plan}");
    sweep_file(t, "gpu.toml", "gpu", &format!("[set]\n\"run.device\" = \"cuda\"\n{axes}"));
    let plan = ok(infinity(&["sweep", "gpu.toml", "--dry-run"], t));
    assert!(plan.contains("nproc_per_node = 1: each rank uses one GPU, so 3 of each node's GPUs would sit idle"));
    sweep_file(
        t,
        "gpu.toml",
        "gpu",
        &format!("nproc_per_node = 4\n[set]\n\"run.device\" = \"cuda\"\n\"data.micro_batch\" = 2\n{axes}"),
    );
    // (a build without CUDA warns that it would not run them: the only warning)
    let plan = ok(infinity(&["sweep", "gpu.toml", "--dry-run"], t));
    assert!(plan.lines().all(|l| !l.contains("warning") || l.contains("no CUDA support")), "{plan}");

    // the time-limit warning's lead time is a setting, checked
    sweep_file(t, "lead.toml", "lead", "[axes]\n\"model.num_heads\" = [2]\n[slurm]\nsignal_s = 0\n");
    let text = refused(infinity(&["sweep", "lead.toml", "--dry-run"], t));
    assert!(text.contains("[slurm] signal_s = 0: expected 1 to 65535 seconds"), "{text}");
    sweep_file(t, "lead.toml", "lead", "[axes]\n\"model.num_heads\" = [2]\n[slurm]\nnuma_binding = \"nodes\"\n");
    let text = refused(infinity(&["sweep", "lead.toml", "--dry-run"], t));
    assert!(
        text.contains("[slurm] numa_binding = \"nodes\": expected one of node, socket, exclusive, core-complex"),
        "{text}"
    );
    sweep_file(
        t,
        "lead.toml",
        "lead",
        "[axes]\n\"model.num_heads\" = [2]\n[slurm]\nsignal_s = 900\ntime = \"2:00:00\"\nnuma_binding = \"node\"\n",
    );
    let said = ok(infinity(&["sweep", "lead.toml", "--slurm", "lead.sbatch"], t));
    assert!(said.contains("warning: [slurm] cpus_per_node is not set: the script asks for no --cpus-per-task"));
    sweep_file(t, "cpus.toml", "lead", "[axes]\n\"model.num_heads\" = [2]\n[slurm]\ncpus_per_node = 8\n");
    let said = ok(infinity(&["sweep", "cpus.toml", "--slurm", "cpus.sbatch"], t));
    let script = std::fs::read_to_string(t.join("cpus.sbatch")).unwrap();
    assert!(!said.contains("cpus_per_node") && script.contains("#SBATCH --cpus-per-task=8\n"), "{said}");
    let script = std::fs::read_to_string(t.join("lead.sbatch")).unwrap();
    assert!(
        script.contains("#SBATCH --signal=USR1@900\n") && script.contains("#SBATCH --open-mode=append\n"),
        "{script}"
    );
    // the ranks' stop checkpoint gets the lead time (less the task's own 30 s), not the agent's default 30 s
    assert!(
        script.contains(" launch --nproc-per-node 1 --max-restarts 3 --grace-s 870 --numa-binding node "),
        "{script}"
    );

    // a task whose run has finished since (its checkpoints deleted) does not train it again
    let run = t.join("lead/num-heads-2");
    std::fs::write(run.join("summary.json"), "{\n  \"finished\": true,\n  \"step\": 30\n}").unwrap();
    let task = Command::new("bash").arg(t.join("lead.sbatch")).env("SLURM_ARRAY_TASK_ID", "0").output().unwrap();
    let said = String::from_utf8_lossy(&task.stdout);
    assert!(
        task.status.success() && said.contains("num-heads-2: finished (its summary.json says so): skipped"),
        "{said}"
    );
}

/// A run folder for `infinity scaling` without training one: `derived.json`, `summary.json`,
/// `val.jsonl` and a `config.toml` (the experiment: `tag`; `seed` does not change it).
fn scaling_run(root: &Path, name: &str, compute: f64, loss: f64, tag: &str, seed: u64) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let derived = serde_json::json!({
        "parameters": compute.sqrt() / 10.0, "tokens_per_step_mean": compute.sqrt() * 10.0 / 60.0,
        "train_flops_per_step_mean": compute / 10.0, "dataset": { "fingerprint": "f" },
    });
    let summary = serde_json::json!({ "step": 10, "loss": loss, "finished": true });
    std::fs::write(dir.join("derived.json"), derived.to_string()).unwrap();
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    std::fs::write(dir.join("val.jsonl"), format!("{{\"step\":10,\"loss\":{loss}}}\n")).unwrap();
    let config = format!("[run]\nseed = {seed}\n[val]\ndir = \"/v\"\n[x]\ntag = \"{tag}\"\n");
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

/// The console says how many runs were read and fitted as how many points, and gives Pearson r over
/// all fitted points and over the compute frontier, each with its count ("not enough points" for one).
#[test]
fn scaling_console_counts_points_and_both_correlations() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // the loss rises with compute: one point on the frontier; the middle config run with two seeds
    scaling_run(t, "u0", 1e15, 1.0, "a", 1);
    scaling_run(t, "u1-s1", 1e16, 1.1, "b", 1);
    scaling_run(t, "u1-s2", 1e16, 1.12, "b", 2);
    scaling_run(t, "u2", 1e17, 1.2, "c", 1);
    let out = ok(infinity(&["scaling", "."], t));
    assert!(out.contains("4 runs read, 4 fitted as 3 points"), "{out}");
    assert!(
        out.contains("Pearson r of ln(loss) vs ln(compute): all fitted points 0.99")
            && out.contains("over 3 points; compute frontier not enough points (1)"),
        "{out}"
    );
    assert!(!out.contains("NaN"), "{out}");
}

/// Figures that cannot be drawn (no usable font) are warned of; the tables and fits are written all the
/// same, and the command succeeds.
#[test]
fn scaling_without_a_font_writes_the_fits_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    scaling_run(t, "u0", 1e15, 1.2, "a", 1);
    scaling_run(t, "u1", 1e16, 1.1, "b", 1);
    scaling_run(t, "u2", 1e17, 1.0, "c", 1);
    let font = t.join("u0/config.toml");
    let out = ok(infinity_env(&["scaling", "."], t, &[("INFINITY_FONT", font.to_str().unwrap())]));
    let said =
        format!("figures loss_vs_compute, loss_curves not drawn: {}: not a usable TrueType font", font.display());
    assert!(out.contains(&said), "{out}");
    let fits = std::fs::read_to_string(t.join("scaling/fits.md")).unwrap();
    assert!(fits.contains("L = a·C^(−b)") && fits.contains(&said), "{fits}");
    assert!(t.join("scaling/fits.json").is_file() && !t.join("scaling/loss_vs_compute.png").exists());
}

/// `infinity ARGS` in `t`, sent SIGTERM half a second after `started` holds (within 60 s): its exit code
/// and stdout.
fn stop_sweep(t: &Path, args: &[&str], started: impl Fn() -> bool) -> (Option<i32>, String) {
    let mut sweep = Command::new(BIN).args(args).current_dir(t).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !started() {
        assert!(t0.elapsed().as_secs() < 60, "{args:?}: the runs did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling a child this test spawned.
    unsafe { libc::kill(sweep.id() as i32, libc::SIGTERM) };
    let status = sweep.wait().unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut sweep.stdout.take().unwrap(), &mut said).unwrap();
    (status.code(), said)
}

/// A signal to a sweep running locally is forwarded to the run in progress, which checkpoints; the
/// sweep stops there (143) instead of leaving the run training alone, and a second sweep continues it.
#[test]
fn a_signal_to_the_sweep_stops_its_run_checkpointed() {
    let tmp = plan_fixture();
    let t = tmp.path();
    sweep_file(t, "long.toml", "long", "[set]\n\"run.steps\" = 100000\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    let run = t.join("long/lr-0.001");
    let (code, said) = stop_sweep(t, &["sweep", "long.toml"], || run.join("derived.json").is_file());
    assert_eq!(code, Some(143), "{said}");
    assert!(said.contains("sweep stopped by a signal at lr-0.001: run the sweep again"), "{said}");
    assert!(said.contains("lr-0.001: stopped by a signal after") && said.contains("s: checkpointed"), "{said}");
    // the run was stopped with it (its lock let go) and checkpointed; the second run never started
    assert!(!infinity_trainer::train::run_lock::in_use(&run));
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    assert!(summary.contains("\"preempted\": true"), "{summary}");
    let step = infinity_trainer::train::latest_checkpoint(&run)
        .and_then(|c| infinity_trainer::train::checkpoint::saved_step(&c))
        .expect("a checkpoint");
    assert!(!t.join("long/lr-0.002/derived.json").exists());
    // the sweep again: the run resumes, and its line says from where
    let log_len = || std::fs::metadata(run.join("train.log")).map_or(0, |m| m.len());
    let before = log_len();
    let (_, said) = stop_sweep(t, &["sweep", "long.toml"], || log_len() > before);
    assert!(said.contains(&format!("lr-0.001: running, resuming from its checkpoint of step {step} (log")), "{said}");
}

/// A sweep killed outright (SIGKILL: no chance to forward anything) takes its run with it: the kernel
/// sends the run SIGTERM, so it checkpoints and lets its folder go instead of training on unwatched.
#[test]
fn a_killed_sweep_stops_its_run_checkpointed() {
    let tmp = plan_fixture();
    let t = tmp.path();
    sweep_file(t, "long.toml", "long", "[set]\n\"run.steps\" = 100000\n[axes]\n\"optim.lr\" = [1e-3]");
    let run = t.join("long/lr-0.001");
    let mut sweep = Command::new(BIN).args(["sweep", "long.toml"]).current_dir(t).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("metrics.jsonl").is_file() {
        assert!(t0.elapsed().as_secs() < 60, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    sweep.kill().unwrap();
    sweep.wait().unwrap();
    let t0 = std::time::Instant::now();
    while infinity_trainer::train::run_lock::in_use(&run) {
        assert!(t0.elapsed().as_secs() < 60, "the run trains on without its sweep");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    assert!(summary.contains("\"preempted\": true"), "{summary}");
    assert!(infinity_trainer::train::latest_checkpoint(&run).is_some());
}

/// `--parallel 2`: two runs train at once, each on its own GPU (`CUDA_VISIBLE_DEVICES`) with half the
/// threads, and the third in the slot the first to end frees; a signal stops every run in progress,
/// each checkpointed, and the sweep starts no more.
#[test]
fn parallel_runs_train_at_once_on_their_own_gpus() {
    use infinity_trainer::sweep::{plan, run_local, write_configs, Slots};
    use std::os::unix::fs::PermissionsExt;
    let tmp = plan_fixture();
    let t = tmp.path();
    // a stand-in for `infinity`: notes its GPUs and threads, waits to see another run start, finishes
    // (`out` absolute: the plan is made in this process, whose working folder is not `t`)
    let par = t.join("par").display().to_string();
    sweep_file(t, "par.toml", &par, "[set]\n\"run.steps\" = 3\n[axes]\n\"optim.lr\" = [1e-3, 2e-3, 3e-3]");
    let runs = plan(&t.join("par.toml")).unwrap().runs;
    write_configs(&runs).unwrap();
    let exe = t.join("stand-in.sh");
    let script = r#"#!/bin/sh
dir=$(dirname "$2")
echo "$CUDA_VISIBLE_DEVICES $RAYON_NUM_THREADS" > "$dir/slot"
touch "$dir/started"
i=0
while [ "$(ls "$dir"/../*/started | wc -l)" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
ls "$dir"/../*/started | wc -l > "$dir/seen"
echo '{"finished": true}' > "$dir/summary.json"
"#;
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let slots = Slots::new(2, 1, Some(vec!["5".into(), "7".into()]), 8, &runs).unwrap();
    let done = run_local(&runs, 1, &exe, &slots).unwrap();
    assert!(done.failed.is_empty() && done.stopped.is_empty(), "{done:?}");
    let read =
        |run: &str, f: &str| std::fs::read_to_string(t.join("par").join(run).join(f)).unwrap().trim().to_string();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "4".into());
    assert_eq!(read("lr-0.001", "slot"), format!("5 {threads}"));
    assert_eq!(read("lr-0.002", "slot"), format!("7 {threads}"));
    assert!([format!("5 {threads}"), format!("7 {threads}")].contains(&read("lr-0.003", "slot")));
    assert_eq!(read("lr-0.001", "seen"), "2", "the first run never saw the second train beside it");

    // real runs (on the CPU, the GPUs named anyway): two at once to the end, then two of many steps
    // (on the CPU: no GPUs given out) stopped together by a signal
    sweep_file(t, "two.toml", "two", "[set]\n\"run.steps\" = 3\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    let out = ok(infinity(&["sweep", "two.toml", "--parallel", "2", "--devices", "0,1"], t));
    assert!(out.contains("lr-0.001: running on GPU 0") && out.contains("lr-0.002: running on GPU 1"), "{out}");
    assert!(out.contains("sweep done: 2 runs"), "{out}");
    let status = ok(infinity(&["sweep", "two.toml", "--status"], t));
    let row = |name: &str| -> Vec<String> {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}:\n{status}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("lr-0.001")[1..4], ["finished", "3", "3"], "{status}");
    assert!(status.contains("2 runs: 2 finished"), "{status}");
    // the sweep file changed under the finished runs: their rows say so, as the sweep would refuse them
    sweep_file(t, "two.toml", "two", "[set]\n\"run.steps\" = 4\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    let status = ok(infinity(&["sweep", "two.toml", "--status"], t));
    assert!(status.contains("2 runs: 2 finished [stale]") && status.contains("lr-0.001: run.steps"), "{status}");
    let words: Vec<&str> = row_of(&status, "lr-0.002").split_whitespace().collect();
    assert_eq!(words[1..5], ["finished", "[stale]", "3", "4"], "{status}");
    sweep_file(t, "two.toml", "two", "[set]\n\"run.steps\" = 3\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    // (no more slots than runs left: none here)
    let out = ok(infinity(&["sweep", "two.toml", "-j", "3", "--devices", "0,1"], t));
    assert!(out.contains("sweep done: 2 runs"), "{out}");
    sweep_file(t, "long.toml", "long", "[set]\n\"run.steps\" = 100000\n[axes]\n\"optim.lr\" = [1e-3, 2e-3, 3e-3]");
    let e = refused(infinity(&["sweep", "long.toml", "-j", "3", "--devices", "0,1"], t));
    assert!(e.contains("--parallel 3 with nproc_per_node = 1 needs 3 GPUs, 1 to a run; --devices shows 2"), "{e}");
    assert!(!t.join("long").exists(), "refused before writing");
    let started = || ["lr-0.001", "lr-0.002"].iter().all(|r| t.join("long").join(r).join("derived.json").is_file());
    let (code, said) = stop_sweep(t, &["sweep", "long.toml", "-j", "2"], started);
    assert_eq!(code, Some(143), "{said}");
    assert!(said.contains("sweep stopped by a signal at lr-0.00") && !said.contains("on GPU"), "{said}");
    for run in ["lr-0.001", "lr-0.002"] {
        let dir = t.join("long").join(run);
        assert!(said.contains(run) && infinity_trainer::train::latest_checkpoint(&dir).is_some(), "{run}: {said}");
    }
    assert!(!t.join("long/lr-0.003/derived.json").exists(), "a run started after the signal");
    let status = ok(infinity(&["sweep", "long.toml", "--status"], t));
    assert!(status.contains("3 runs: 2 stopped, 1 not started"), "{status}");
    let stopped = status.lines().find(|l| l.starts_with("lr-0.001")).unwrap();
    assert!(stopped.contains("stopped (by a signal)") && stopped.contains("100000"), "{status}");
}

/// A run whose resume fails (`infinity train` exits 2: its dataset changed, say) after an earlier
/// session was stopped by a signal is a failed run, not a stopped one, although its `summary.json`
/// still says `"preempted": true` (the failed session wrote none): the sweep goes on with the next run
/// and lists it as failed (`infinity sweep` exits 1).
#[test]
fn a_failed_resume_is_a_failure_whatever_an_earlier_summary_says() {
    use infinity_trainer::sweep::{finished, plan, run_local, write_configs, Slots};
    use std::os::unix::fs::PermissionsExt;
    let tmp = plan_fixture();
    let t = tmp.path();
    let out = t.join("resume").display().to_string();
    sweep_file(t, "resume.toml", &out, "[set]\n\"run.steps\" = 3\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    let runs = plan(&t.join("resume.toml")).unwrap().runs;
    write_configs(&runs).unwrap();
    let first = t.join("resume/lr-0.001");
    let earlier = "{\"step\": 2, \"finished\": false, \"preempted\": true}";
    std::fs::write(first.join("summary.json"), earlier).unwrap();
    // a stand-in for `infinity`: the first run's resume fails as `infinity train`'s does, the second finishes
    let exe = t.join("stand-in.sh");
    let script = r#"#!/bin/sh
dir=$(dirname "$2")
case "$dir" in
  */lr-0.001) echo "error: resuming: cannot resume the data stream: the row count changed" >&2; exit 2;;
esac
echo '{"finished": true}' > "$dir/summary.json"
"#;
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let done = run_local(&runs, 1, &exe, &Slots::one()).unwrap();
    assert_eq!(done.failed, ["lr-0.001"], "{done:?}");
    assert!(done.stopped.is_empty() && !done.signalled, "{done:?}");
    assert!(finished(&t.join("resume/lr-0.002")), "the next run did not start: {done:?}");
    let log = std::fs::read_to_string(first.join("train.log")).unwrap();
    assert!(log.contains("cannot resume the data stream"), "{log}");
    // --status says so too, not "stopped (by a signal)" as the summary left in place would
    let status = ok(infinity(&["sweep", "resume.toml", "--status"], t));
    assert!(row_of(&status, "lr-0.001").contains(" failed (exit status: 2; see train.log) "), "{status}");
    assert!(status.contains("2 runs: 1 failed, 1 finished"), "{status}");
    let plan = ok(infinity(&["sweep", "resume.toml", "--dry-run"], t));
    let said = format!("already: 1 finished; left to train here: 1 run of {:.3e} FLOPs in all", runs[0].compute);
    assert!(plan.contains(&said), "{plan}");
    // until the sweep starts it again: the stand-in now stopped by a signal, as its summary says
    let stopped = "#!/bin/sh\necho '{\"step\": 2, \"preempted\": true}' > \"$(dirname \"$2\")/summary.json\"\n";
    std::fs::write(&exe, stopped).unwrap();
    let done = run_local(&runs[..1], 1, &exe, &Slots::one()).unwrap();
    assert_eq!(done.stopped, ["lr-0.001"], "{done:?}");
    let status = ok(infinity(&["sweep", "resume.toml", "--status"], t));
    assert!(row_of(&status, "lr-0.001").contains(" stopped (by a signal) "), "{status}");
    // a validation set not at hand (another machine's, moved): the plan refuses it, --status needs none
    let gone = t.join("gone-val").display().to_string();
    let set = format!("[set]\n\"run.steps\" = 3\n\"val.dir\" = {gone:?}\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    sweep_file(t, "resume.toml", &out, &set);
    let said = refused(infinity(&["sweep", "resume.toml", "--dry-run"], t));
    assert!(said.contains("run lr-0.001: val.dir ") && said.contains("gone-val"), "{said}");
    let status = ok(infinity(&["sweep", "resume.toml", "--status"], t));
    assert!(row_of(&status, "lr-0.001").contains(" stopped"), "{status}");
}

/// A dataset made again in the folder the runs trained on (same `data.dir`, other rows) makes them
/// stale as changed settings do: `--status` marks them (an interrupted one neither resumes nor
/// restarts), and the sweep refuses them before anything runs, new runs included.
#[test]
fn a_dataset_changed_under_the_runs_is_refused() {
    let tmp = plan_fixture();
    let t = tmp.path();
    sweep_file(t, "ds.toml", "ds", "[set]\n\"run.steps\" = 3\n[axes]\n\"optim.lr\" = [1e-3, 2e-3]");
    ok(infinity(&["sweep", "ds.toml"], t));
    // the second run as a stopped one left it
    let second = t.join("ds/lr-0.002/summary.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&second).unwrap()).unwrap();
    v["finished"] = false.into();
    std::fs::write(&second, v.to_string()).unwrap();
    let status = ok(infinity(&["sweep", "ds.toml", "--status"], t));
    assert!(row_of(&status, "lr-0.002").contains(" interrupted ("), "{status}");
    assert!(!status.contains("[stale]"), "{status}");

    let synth = ["data", "synth", "--out", "data", "--seed", "1", "--rows", "80", "--fit-rows", "64"];
    ok(infinity(&[&synth[..], &["--budget", "demo4", "--overwrite"]].concat(), t));
    let status = ok(infinity(&["sweep", "ds.toml", "--status"], t));
    let words = |name: &str| row_of(&status, name).split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words("lr-0.001")[1..3], ["finished", "[stale]"], "{status}");
    assert_eq!(words("lr-0.002")[1..3], ["interrupted", "[stale]"], "{status}");
    assert!(status.contains("2 runs: 1 finished [stale], 1 interrupted [stale]\n"), "{status}");
    let data = t.join("data").display().to_string();
    let said = format!("lr-0.002: dataset {data} changed since the run trained on it (the row count changed: 64 → 80");
    assert!(status.contains(&said), "{status}");

    // another rate added: nothing runs, the new run included
    sweep_file(t, "ds.toml", "ds", "[set]\n\"run.steps\" = 3\n[axes]\n\"optim.lr\" = [1e-3, 2e-3, 3e-3]");
    for mode in [&["--dry-run"][..], &[]] {
        let text = refused(infinity(&[&["sweep", "ds.toml"][..], mode].concat(), t));
        assert!(
            text.contains("2 runs trained with other settings or data than the sweep file gives them now"),
            "{text}"
        );
        assert!(text.contains(&said.replace("lr-0.002", "lr-0.001")), "{text}");
        assert!(text.contains("for a dataset changed in place, put it back as it was"), "{text}");
    }
    assert!(!t.join("ds/lr-0.003/summary.json").exists() && !t.join("ds/lr-0.003/train.log").exists());
}

/// The line of `status` that starts with `name`.
fn row_of<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}:\n{status}"))
}

/// A size ladder: `[linked]` values taken together (crossed with `[axes]`), each run given
/// `tokens_per_parameter` × its own parameters as its token budget.
#[test]
fn a_linked_ladder_with_tokens_per_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    ok(infinity(&["data", "synth", "--out", "data", "--seed", "1", "--rows", "256", "--fit-rows", "64"], t));
    let base = BASE.replace("[val]\ndir = \"val\"\nevery = 10\nmax_rows = 48\n", "");
    let base = base.replace("dir = \"data\"", &format!("dir = {:?}", t.join("data").display().to_string()));
    std::fs::write(t.join("base.toml"), base).unwrap();
    let ladder = "base = \"base.toml\"\nout = \"ladder\"\n[linked]\n\"model.embed_dim\" = [64, 128]\n\
                  \"model.num_heads\" = [2, 4]\n[axes]\n\"optim.lr\" = [1e-3, 3e-3]\ntokens_per_parameter = [2]\n";
    std::fs::write(t.join("ladder.toml"), ladder).unwrap();
    let plan = infinity_trainer::sweep::plan(&t.join("ladder.toml")).unwrap();
    let names: Vec<&str> = plan.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "embed-dim-64_num-heads-2_lr-0.001_tokens-per-parameter-2",
            "embed-dim-64_num-heads-2_lr-0.003_tokens-per-parameter-2",
            "embed-dim-128_num-heads-4_lr-0.001_tokens-per-parameter-2",
            "embed-dim-128_num-heads-4_lr-0.003_tokens-per-parameter-2",
        ]
    );
    for r in &plan.runs {
        let per_step = r.tokens / r.config.run.steps as f64;
        let budget = 2.0 * r.parameters as f64;
        assert!(r.tokens >= budget && r.tokens < budget + per_step, "{}: {} tokens for {budget}", r.name, r.tokens);
        assert_eq!(r.config.model.num_heads, Some(r.config.model.embed_dim.unwrap() / 32), "{}", r.name);
    }
    assert!(plan.runs[2].config.run.steps > 2 * plan.runs[0].config.run.steps, "the larger model trains longer");
    // `model info --dataset` counts a rung's parameters as the plan does, and says what it assumed
    let args = ["model", "info", "--preset", "tiny", "--width", "128", "--heads", "4", "--dataset", "data"];
    let text = ok(infinity(&args, t));
    assert!(text.contains("(the dataset has 24 classes too: --classes 24 counts a class-conditioned model)"), "{text}");
    let info = ok(infinity(&[&args[..], &["--classes", "24"]].concat(), t));
    assert!(info.contains(&format!("parameters: {} ", plan.runs[2].parameters)), "{info}");
    assert!(info.contains("conditioning: class, 24 classes (the dataset's)"), "{info}");
    assert!(info.contains("(the dataset's, as `infinity sample` picks it;"), "the dataset's schedule: {info}");
    let other = ok(infinity(&[&args[..], &["--classes", "24", "--budget", "0.06M"]].concat(), t));
    assert!(other.contains("schedule 1.000/0.06M: L = 521\n  (not one of the dataset's schedules, "), "{other}");
    let bare = ok(infinity(&["model", "info", "--preset", "tiny", "--width", "128", "--heads", "4"], t));
    assert!(bare.contains("a run takes its dataset's: --dataset DIR"), "{bare}");
    // a ratio too small for one step is named as a ratio
    std::fs::write(
        t.join("ladder.toml"),
        ladder.replace("tokens_per_parameter = [2]", "tokens_per_parameter = [1e-4]"),
    )
    .unwrap();
    let e = format!("{:#}", infinity_trainer::sweep::plan(&t.join("ladder.toml")).err().unwrap());
    assert!(e.contains(" tokens per parameter × ") && e.contains("raise tokens_per_parameter to at least "), "{e}");
}

/// Every sweep file in configs/sweeps plans (`--dry-run`: every check a real run makes before writing)
/// on a small stand-in for the demo data, laid out as scripts/demo.sh and the files' comments make it.
#[test]
fn every_sweep_file_in_configs_plans() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    std::fs::create_dir_all(t.join("configs/sweeps")).unwrap();
    std::fs::copy(configs.join("demo-cpu.toml"), t.join("configs/demo-cpu.toml")).unwrap();
    let synth = ["data", "synth", "--budget", "demo4", "--rows", "64", "--fit-rows", "64"];
    ok(infinity(&[&synth[..], &["--out", "runs/demo-data"]].concat(), t));
    let tokenizer = ["--tokenizer", "runs/demo-data/tokenizer.safetensors", "--seed", "1"];
    ok(infinity(&[&synth[..], &["--out", "runs/demo-val"], &tokenizer].concat(), t));
    let mut planned = 0;
    for entry in std::fs::read_dir(configs.join("sweeps")).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&file, t.join("configs/sweeps").join(&name)).unwrap();
        let text = ok(infinity(&["sweep", &format!("configs/sweeps/{name}"), "--dry-run"], t));
        assert!(text.contains("training FLOPs in total"), "{name}: {text}");
        planned += 1;
    }
    assert!(planned >= 5, "{planned} sweep files");
    assert!(!t.join("runs/sweeps").exists(), "a plan writes nothing");
}
