//! Reading checkpoints back: a checkpoint or run folder resolved to a complete checkpoint, its
//! `state.json` and `model.json` checked, and its whole training state for a resumed run (the weights
//! alone, for sampling, export and `model.init_from`: `weights.rs`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::SafeTensors;

use super::history::complete;
use super::{TrainState, DONE, EMA_FILE, MODEL_FILE, MODEL_JSON, OPTIM_FILE, STATE_FILE, STATE_VERSION};
use crate::export::{read_export, resolved};
use crate::model::io::{load_weights, load_weights_part, map_file};
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::{AdamW, AdamWConfig};

/// A checkpoint folder, or a run folder (its newest complete checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(DONE).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join(STATE_FILE).is_file() {
        bail!(
            "{}: incomplete checkpoint (no {DONE} marker: a save cut short); `--resume auto` takes the newest \
             complete one, or give an earlier step",
            path.display()
        );
    }
    match complete(path).pop() {
        Some((_, dir)) => Ok(dir),
        None if path.exists() => match read_export(path) {
            Some(export) => {
                let way = match &export.weights_file {
                    Some(file) => format!("it came from the weights file {file}, which holds none either"),
                    None => format!("resuming takes the checkpoint it came from ({})", export.source),
                };
                bail!(
                    "{}: an `infinity export` folder, which holds no training state: {way}; `infinity sample`, \
                     `infinity export` and model.init_from take the export as it is",
                    path.display()
                )
            }
            None => bail!(
                "{}: neither a checkpoint nor a run folder with a complete checkpoint{}",
                path.display(),
                near_miss(path)
            ),
        },
        None => bail!("{}: no such checkpoint or run folder", path.display()),
    }
}

/// What to give instead of `path` where it is close to a checkpoint: a file in one (or in an export), a
/// run's `checkpoints` folder, or a folder of run folders ("" otherwise).
fn near_miss(path: &Path) -> String {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if path.is_file() {
        return match super::from_file::folder_holding(path) {
            Some((holder, folder)) => format!(" (a file: give the {holder} folder holding it, {})", folder.display()),
            None => " (a file: give a checkpoint, run or export folder)".into(),
        };
    }
    // (its tokenizer.safetensors is no model's weights)
    if path.join("manifest.json").is_file() {
        return " (a dataset folder: give the run, checkpoint or export folder of a model trained on it)".into();
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    // (a folder of weights files without their index: upstream's release, an export's weights copied)
    let weights_ext = |p: &&PathBuf| {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        p.is_file() && matches!(ext.as_str(), "safetensors" | "pth" | "pt" | "bin" | "ckpt")
    };
    if let Some(file) = entries.iter().find(weights_ext) {
        return format!(
            " (a folder of weights files without an index (*.index.json): give the file, such as {})",
            file.display()
        );
    }
    let subdirs: Vec<PathBuf> = entries.into_iter().filter(|p| p.is_dir()).collect();
    // a run's checkpoints/step-N folders, newest last
    let steps: Vec<&PathBuf> = subdirs
        .iter()
        .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) && d.join(DONE).is_file())
        .collect();
    if let Some(newest) = steps.last() {
        return format!(
            " (a run's checkpoints folder: give the run folder, {}, or a step folder such as {})",
            parent.display(),
            newest.display()
        );
    }
    match subdirs.iter().find(|d| !complete(d).is_empty()) {
        Some(run) => format!(" (a folder of run folders: give one of them, such as {})", run.display()),
        None => String::new(),
    }
}

/// Parameters `range` of the checkpoint's moving average of the weights, if it keeps one (checksum,
/// names and shapes checked).
pub fn load_ema(dir: &Path, cfg: &ModelConfig, lay: &Layout, range: Range<usize>) -> Result<Option<Vec<f32>>> {
    match read_state(dir)?.ema_crc32c {
        None => Ok(None),
        Some(crc) => {
            let file = dir.join(EMA_FILE);
            verify_crc(&file, &crc)?;
            Ok(Some(load_weights_part(&file, cfg, lay, range)?))
        }
    }
}

/// The step of checkpoint `dir` (its `state.json`), if it reads.
pub fn saved_step(dir: &Path) -> Option<u64> {
    parse_state(dir).ok().map(|s| s.step)
}

/// A complete checkpoint's `state.json`, checked against its `DONE` marker, folder name and version.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let state = parse_state(dir)?;
    check_version(dir, &state)?;
    Ok(state)
}

/// `state.json` as it is (any version).
fn parse_state(dir: &Path) -> Result<TrainState> {
    ensure!(
        dir.join(DONE).is_file(),
        "{}: incomplete checkpoint (no {DONE} marker: a save cut short); `--resume auto` takes the newest complete \
         one, or give an earlier step",
        dir.display()
    );
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let done_path = dir.join(DONE);
    let done = std::fs::read_to_string(&done_path).with_context(|| format!("reading {}", done_path.display()))?;
    let empty_marker = done.trim().is_empty();
    match super::done_crc(&done) {
        Some(want) => {
            let found = format!("{:08x}", crc32c::crc32c(text.as_bytes()));
            ensure!(
                found == want,
                "{}: crc32c {found}, {DONE} records {want}: the file changed after the checkpoint was written",
                state_path.display()
            );
        }
        // (a build's before 2026-12-05 wrote it empty: checked below that this one is that old)
        None if empty_marker => {}
        None => bail!(
            "{}: expected `{STATE_FILE} crc32c` and 8 hex digits (or nothing, from a build before 2026-12-05), \
             found {:?}: the marker changed after the checkpoint was written",
            done_path.display(),
            done.chars().take(80).collect::<String>()
        ),
    }
    let de = &mut serde_json::Deserializer::from_str(&text);
    let state: TrainState = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow!("{}: at `{}`: {}", state_path.display(), e.path(), e.inner()))?;
    // (a build that records model.json's checksum fills DONE too: emptied, the marker checks nothing)
    ensure!(
        !(empty_marker && state.model_json_crc32c.is_some()),
        "{}: empty, where the build that wrote {STATE_FILE} records its checksum there: the marker changed \
         after the checkpoint was written",
        done_path.display()
    );
    // (a folder renamed by hand would resume at another step than its name says)
    if let Some(named) = super::step_of(dir).filter(|&n| n != state.step) {
        bail!("{}: step {}, the folder's name says {named}", state_path.display(), state.step);
    }
    if let Some(why) = state.seen.as_ref().and_then(crate::train::seen::Seen::implausible) {
        bail!("{}: {why} (corrupt checkpoint)", state_path.display());
    }
    Ok(state)
}

fn check_version(dir: &Path, state: &TrainState) -> Result<()> {
    ensure!(
        state.version == STATE_VERSION,
        "{}: state version {}, this build reads {STATE_VERSION}",
        dir.join(STATE_FILE).display(),
        state.version
    );
    Ok(())
}

/// The newest complete checkpoint before `dir` in its run folder, as a way on for `--resume` into
/// `run` (which moves `dir` aside to `run`'s abandoned/ when it is its own).
fn way_on(dir: &Path, run: &Path) -> Option<String> {
    let (own_run, previous) = previous_complete(dir)?;
    let moved = match resolved(own_run) == resolved(run) {
        true => format!("; this one is then moved to {}/", run.join("abandoned").display()),
        false => String::new(),
    };
    Some(format!("resume from the previous checkpoint with --resume {}{moved}", previous.display()))
}

/// The run folder of checkpoint `dir` and its newest complete checkpoint before `dir`, where it has one.
pub(super) fn previous_complete(dir: &Path) -> Option<(&Path, PathBuf)> {
    let step = super::step_of(dir)?;
    let checkpoints = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))?;
    let own_run = checkpoints.parent()?;
    let (_, previous) = complete(own_run).into_iter().rfind(|(s, _)| *s < step)?;
    Some((own_run, previous))
}

/// A checkpoint's `model.json`, parsed and checked, against the checksum its `state` records (where it
/// records one): errors name the file.
pub(super) fn read_model_json(dir: &Path, state: &TrainState) -> Result<ModelConfig> {
    let (model, text) = parse_model_json(dir)?;
    model_json_intact(dir, &text, state)?;
    Ok(model)
}

/// A checkpoint's `model.json` parsed and checked, and its text.
fn parse_model_json(dir: &Path) -> Result<(ModelConfig, String)> {
    let p = dir.join(MODEL_JSON);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let model: ModelConfig = serde_path_to_error::deserialize(&mut *de)
        .map_err(|e| anyhow!("{}: at `{}`: {}", p.display(), e.path(), e.inner()))?;
    de.end().map_err(|e| anyhow!("{}: after the model's object: {e}", p.display()))?;
    model.validate().map_err(|e| anyhow!("{}: {e}", p.display()))?;
    Ok((model, text))
}

/// `model.json`'s `text` has the checksum `state` records, where it records one (its `norm_eps`, …, shape
/// no tensor, so only the checksum finds them changed).
fn model_json_intact(dir: &Path, text: &str, state: &TrainState) -> Result<()> {
    match &state.model_json_crc32c {
        Some(want) => crc_matches(&dir.join(MODEL_JSON), text.as_bytes(), want),
        None => Ok(()),
    }
}

/// A checkpoint's `model.json` parses, describes the tensors of the model trained (`cfg`), and is the
/// file the checkpoint wrote.
fn check_model_json(dir: &Path, state: &TrainState, cfg: &ModelConfig, lay: &Layout) -> Result<()> {
    let (model, text) = parse_model_json(dir).map_err(|e| anyhow!("{e:#} (damaged checkpoint)"))?;
    let tensors = |l: &Layout| l.specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect::<Vec<_>>();
    // (another model's is said by the keys that differ, before the checksum that would find it too)
    if tensors(&Layout::new(&model)) == tensors(lay) {
        return model_json_intact(dir, &text, state);
    }
    let (found, want) = (serde_json::to_value(&model)?, serde_json::to_value(cfg)?);
    let differ: Vec<String> = want
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| found.get(k.as_str()) != Some(*v))
        .map(|(k, v)| {
            format!("{k} {} (the model trained: {v})", found.get(k.as_str()).unwrap_or(&serde_json::Value::Null))
        })
        .collect();
    bail!(
        "{}: describes another model than its {MODEL_FILE} holds: {} (damaged checkpoint)",
        dir.join(MODEL_JSON).display(),
        differ.join(", ")
    )
}

/// Why the moments `values` of `name` (`adamw.m`, `adamw.v`), from parameter `start` on, cannot be a
/// run's, if they cannot: a run writes no checkpoint while its steps are not finite, and `v` is a mean of
/// squares, so a value that is not finite (a `v` below 0) is damage, which the first update would spread
/// into every weight.
fn impossible_moment(name: &str, values: &[f32], start: usize, lay: &Layout) -> Option<String> {
    let second = name == "adamw.v";
    let i = values.iter().position(|x| !x.is_finite() || (second && *x < 0.0))?;
    let at = start + i;
    let param = lay.specs.iter().find(|s| (s.offset..s.offset + s.numel()).contains(&at));
    let expected = if second { "finite and not negative" } else { "finite" };
    Some(format!(
        "`{name}` holds {} at value {at} (of `{}`): expected {expected} moments",
        values[i],
        param.map_or("?", |s| s.name.as_str())
    ))
}

/// Whether a complete checkpoint's tensor files (and `model.json`) match what its `state` records:
/// what a resume would find damaged, checked before one is chosen unasked.
pub fn tensors_intact(dir: &Path, state: &TrainState) -> bool {
    let ema = state.ema_crc32c.as_ref().map(|c| (EMA_FILE, c));
    let files = [(MODEL_FILE, &state.model_crc32c), (OPTIM_FILE, &state.optim_crc32c)].into_iter().chain(ema);
    read_model_json(dir, state).is_ok()
        && files.into_iter().all(|(file, want)| verify_crc(&dir.join(file), want).is_ok())
}

pub(super) fn verify_crc(p: &Path, want: &str) -> Result<()> {
    crc_matches(p, &map_file(p)?, want)
}

/// An error where `bytes`, the contents of `p`, do not have the crc32c `want` that `state.json` records.
fn crc_matches(p: &Path, bytes: &[u8], want: &str) -> Result<()> {
    let found = format!("{:08x}", crc32c::crc32c(bytes));
    ensure!(found == want, "{}: crc32c {found}, {STATE_FILE} expects {want} (corrupt checkpoint)", p.display());
    Ok(())
}

/// Load a checkpoint folder to resume `run` from, verifying checksums, names and shapes against `cfg`,
/// and that its `model.json` (which sample and export read) describes that model. A damaged checkpoint's
/// error names the newest complete one before it as a way on (not taken unasked: the steps after it
/// would be trained again). The optimiser state holds the moments of the parameters in `moments`
/// alone (a ZeRO-1 rank's shard: the rest of the file is never copied).
pub fn load(
    dir: &Path,
    run: &Path,
    cfg: &ModelConfig,
    lay: &Layout,
    (adamw, moments): (&AdamWConfig, Range<usize>),
) -> Result<(Params<f32>, AdamW, TrainState)> {
    let damaged = |e: anyhow::Error| match way_on(dir, run) {
        Some(way) => anyhow!("{e:#}; {way}"),
        None => e,
    };
    ensure!(
        moments.start <= moments.end && moments.end <= lay.numel,
        "moments {moments:?} of {} parameters",
        lay.numel
    );
    let state = parse_state(dir).map_err(damaged)?;
    check_version(dir, &state)?;
    // (the moving average's too, where the checkpoint has one: found damaged here, the error names the
    // way on, as for the others)
    let ema = state.ema_crc32c.as_ref().map(|c| (EMA_FILE, c));
    for (file, want) in [(MODEL_FILE, &state.model_crc32c), (OPTIM_FILE, &state.optim_crc32c)].into_iter().chain(ema) {
        verify_crc(&dir.join(file), want).map_err(damaged)?;
    }
    // (the weights first: a config of another model is named by its tensors, not as damage)
    let params = load_weights(&dir.join(MODEL_FILE), cfg, lay)?;
    check_model_json(dir, &state, cfg, lay).map_err(damaged)?;
    let optim_path = dir.join(OPTIM_FILE);
    let bytes = map_file(&optim_path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: {e}", optim_path.display()))?;
    let mut opt = AdamW::new_part(adamw.clone(), lay, moments.clone());
    for (name, dst) in [("adamw.m", &mut opt.m), ("adamw.v", &mut opt.v)] {
        let t = st.tensor(name).map_err(|_| anyhow!("{}: `{name}` missing", optim_path.display()))?;
        if t.shape() != [lay.numel] {
            bail!(
                "{}: `{name}` has {:?} values, the model has {} parameters",
                optim_path.display(),
                t.shape(),
                lay.numel
            );
        }
        // (read by dtype: f32 as written here; a bf16 or f16 copy widened, not taken for half as many values)
        let size = t.dtype().bitsize() / 8;
        // (the shape is the model's, so every part lies inside: safetensors checked the data's length)
        let read = |range: Range<usize>| {
            crate::model::io::tensor_f32(name, t.dtype(), &t.data()[range.start * size..range.end * size])
                .map_err(|e| anyhow!("{}: {e}", optim_path.display()))
        };
        *dst = read(moments.clone())?;
        // (every rank the whole tensor, not its shard alone: each then refuses alike, and `--check` too;
        // the rest of it, beside the shard read, a chunk at a time)
        let chunks = |r: Range<usize>| r.clone().step_by(1 << 20).map(move |from| from..(from + (1 << 20)).min(r.end));
        let rest = chunks(0..moments.start).chain(chunks(moments.end..lay.numel));
        let impossible = || -> Result<Option<String>> {
            let mut found = impossible_moment(name, dst, moments.start, lay);
            for c in rest {
                if found.is_some() {
                    break;
                }
                found = impossible_moment(name, &read(c.clone())?, c.start, lay);
            }
            Ok(found)
        };
        if let Some(why) = impossible()? {
            return Err(damaged(anyhow!("{}: {why} (corrupt checkpoint)", optim_path.display())));
        }
    }
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: metadata: {e}", optim_path.display()))?;
    let meta: serde_json::Value = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("adamw"))
        .and_then(|s| serde_json::from_str(s).ok())
        .with_context(|| format!("{}: metadata `adamw` missing", optim_path.display()))?;
    opt.step =
        meta["step"].as_u64().with_context(|| format!("{}: metadata `adamw.step` missing", optim_path.display()))?;
    Ok((params, opt, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ZeRO-1 rank reads its shard of the moments alone: the values and groups `AdamW::shard` would
    /// cut from the whole state, and the step.
    #[test]
    fn a_shard_of_the_moments_loads_alone() {
        use crate::train::checkpoint::{save, Tensors};
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::preset("tiny").unwrap();
        let lay = Layout::new(&cfg);
        let params = crate::model::init::init_params(&cfg, &lay, &Default::default(), 7);
        let mut opt = AdamW::new(AdamWConfig::default(), &lay);
        (opt.step, opt.m, opt.v) =
            (3, params.data.iter().map(|x| x * 0.5).collect(), params.data.iter().map(|x| x * x).collect());
        let state_loader = || infinity_data::loader::LoaderState {
            seed: 0,
            global_batch: 4,
            batches_done: 3,
            dataset: "d".into(),
            buckets: None,
            mix: None,
            earlier_sizes: Vec::new(),
            tokenizer: None,
            rows_changed_at: None,
        };
        let state = TrainState { step: 3, ..TrainState::fresh(state_loader()) };
        let tensors = Tensors { params: &params, opt: &opt, ema: None };
        let dir = save(tmp.path(), &cfg, &lay, tensors, state, "").unwrap();
        let shard = crate::train::zero1::shard_range(lay.numel, 1, 3);
        let (p, part, _) = load(&dir, tmp.path(), &cfg, &lay, (&AdamWConfig::default(), shard.clone())).unwrap();
        assert_eq!(p.data, params.data);
        let cut = opt.shard(shard.clone());
        assert_eq!((part.range.clone(), part.step, &part.m, &part.v), (shard, 3, &cut.m, &cut.v));
        assert_eq!(part.groups().runs().collect::<Vec<_>>(), cut.groups().runs().collect::<Vec<_>>());
        let e = load(&dir, tmp.path(), &cfg, &lay, (&AdamWConfig::default(), 0..lay.numel + 1)).unwrap_err();
        assert!(e.to_string().contains("moments"), "{e}");

        // state.json is checked as the tensors are: its checksum is in DONE, its step in the folder's name
        let whole = (&AdamWConfig::default(), 0..lay.numel);
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        std::fs::write(dir.join(STATE_FILE), text.replace("\"step\": 3", "\"step\": 4")).unwrap();
        let e = format!("{:#}", load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(
            e.contains("state.json: crc32c") && e.contains("the file changed after the checkpoint was written"),
            "{e}"
        );
        std::fs::write(dir.join(STATE_FILE), &text).unwrap();
        let renamed = dir.with_file_name("step-00000005");
        std::fs::rename(&dir, &renamed).unwrap();
        let e = format!("{:#}", load(&renamed, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(e.contains("state.json: step 3, the folder's name says 5"), "{e}");
        // a marker of an earlier build, empty, checks no checksum; one that is neither is refused
        std::fs::rename(&renamed, &dir).unwrap();
        std::fs::write(dir.join(DONE), "garbage").unwrap();
        let e = format!("{:#}", load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(e.contains("DONE: expected `state.json crc32c` and 8 hex digits") && e.contains("\"garbage\""), "{e}");
        let record = crate::train::checkpoint::done_record(text.as_bytes());
        std::fs::write(dir.join(DONE), format!("{} trailing", record.trim())).unwrap();
        let e = format!("{:#}", load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(e.contains("DONE: expected `state.json crc32c` and 8 hex digits"), "{e}");
        // emptied, the marker of a build that records model.json's checksum is refused
        std::fs::write(dir.join(DONE), "").unwrap();
        let e = format!("{:#}", load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap_err());
        assert!(e.contains("DONE: empty, where the build that wrote state.json records its checksum"), "{e}");
        // an earlier build's: no model.json checksum in state.json, an empty marker
        let old = serde_json::from_str::<serde_json::Value>(&text).unwrap();
        let mut old = old.as_object().unwrap().clone();
        assert!(old.remove("model_json_crc32c").is_some());
        std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(&old).unwrap()).unwrap();
        load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap();
        std::fs::write(dir.join(STATE_FILE), &text).unwrap();
        std::fs::write(dir.join(DONE), record).unwrap();
        load(&dir, tmp.path(), &cfg, &lay, whole.clone()).unwrap();

        // the moving average's file is checked with the others, the way on named
        let state = TrainState { step: 6, ..TrainState::fresh(state_loader()) };
        let with_ema =
            save(tmp.path(), &cfg, &lay, Tensors { params: &params, opt: &opt, ema: Some(&params) }, state, "");
        let with_ema = with_ema.unwrap();
        let ema = with_ema.join(crate::train::checkpoint::EMA_FILE);
        let mut bytes = std::fs::read(&ema).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&ema, bytes).unwrap();
        let e = format!("{:#}", load(&with_ema, tmp.path(), &cfg, &lay, whole).unwrap_err());
        assert!(e.contains("ema.safetensors: crc32c") && e.contains("step-00000003"), "{e}");

        // a file under the name of the step folder a save writes is named, and left as it is
        let file = crate::train::checkpoint::step_dir(tmp.path(), 4);
        std::fs::write(&file, "notes").unwrap();
        let state = TrainState { step: 4, ..TrainState::fresh(state_loader()) };
        let tensors = Tensors { params: &params, opt: &opt, ema: None };
        let e = format!("{:#}", save(tmp.path(), &cfg, &lay, tensors, state, "").unwrap_err());
        assert!(e.contains("step-00000004 is a file, not a checkpoint folder: move it away"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "notes");
        assert!(!tmp.path().join("checkpoints/.tmp-step-00000004").exists(), "the partial folder stays");
    }

    /// A file, a run's checkpoints folder and a folder of runs are each answered with what to give instead.
    #[test]
    fn near_misses_say_what_to_give() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("runs/demo");
        let step = run.join("checkpoints/step-00000010");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(DONE), "").unwrap();
        let err = |p: &Path| resolve(p).unwrap_err().to_string();
        let neither =
            |p: &Path| format!("{}: neither a checkpoint nor a run folder with a complete checkpoint", p.display());
        let e = err(&run.join("checkpoints"));
        let want = format!(
            "{} (a run's checkpoints folder: give the run folder, {}, or a step folder such as {})",
            neither(&run.join("checkpoints")),
            run.display(),
            step.display()
        );
        assert_eq!(e, want);
        let runs = tmp.path().join("runs");
        assert_eq!(
            err(&runs),
            format!("{} (a folder of run folders: give one of them, such as {})", neither(&runs), run.display())
        );
        let file = tmp.path().join("model.safetensors");
        std::fs::write(&file, "").unwrap();
        assert_eq!(err(&file), format!("{} (a file: give a checkpoint, run or export folder)", neither(&file)));
        let file = step.join(MODEL_FILE);
        std::fs::write(&file, "").unwrap();
        let e = err(&file);
        assert!(e.ends_with(&format!("(a file: give the checkpoint folder holding it, {})", step.display())), "{e}");
        let export = run.join("export");
        std::fs::create_dir_all(&export).unwrap();
        let config = serde_json::json!({ "format": crate::export::EXPORT_FORMAT });
        std::fs::write(export.join("config.json"), config.to_string()).unwrap();
        std::fs::write(export.join(MODEL_FILE), "").unwrap();
        let e = err(&export.join(MODEL_FILE));
        assert!(e.ends_with(&format!("(a file: give the export folder holding it, {})", export.display())), "{e}");
        // a dataset folder's tokenizer is not offered as the model's weights
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("manifest.json"), "{}").unwrap();
        std::fs::write(data.join("tokenizer.safetensors"), "").unwrap();
        let want = "(a dataset folder: give the run, checkpoint or export folder of a model trained on it)";
        assert_eq!(err(&data), format!("{} {want}", neither(&data)));
    }
}
