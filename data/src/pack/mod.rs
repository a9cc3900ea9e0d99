//! `infinity data pack --images DIR | --meta DIR`: a folder of PNG/JPEG images, or the images upstream's
//! metadata files list ([`crate::meta`]), → shards, with the built-in tokenizer.
//!
//! Labels come from sub-folder names (sorted; hidden folders are not classes, and a class folder without
//! images is an error). Images directly in DIR are one class named after DIR: a model needs a
//! condition, and one class with the null class of classifier-free guidance is unconditional
//! generation (upstream's recipe). An optional `NAME.txt` beside `NAME.png` is the caption. Each image is assigned the
//! aspect-ratio template nearest to its h/w (a metadata file's images, that file's), resized to cover that template's pixel size and centre
//! cropped (upstream's transform), then tokenized.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::build::{encode_row, fit_tokenizer, write_parallel, TokenizerFit};
use crate::error::{DataError, Result};
use crate::format::{BIT_ORDER, FORMAT_NAME, FORMAT_VERSION};
use crate::manifest::{ClassInfo, Conditions, LatentInfo, Manifest};
use crate::meta::{read_meta, MetaListing};
use crate::schedule::{Catalog, ScaleSchedule};
use crate::tokenizer::{Image, PatchTokenizer, TOKENIZER_FILE};
use crate::writer::{DatasetWriter, RowData, WriterOptions};

mod listing;

use self::listing::{folder_name, list_images};

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub d: usize,
    pub budget: String,
    pub patch: usize,
    /// Store latents and bits at twice the schedule's sides, for a model with spatial patchify
    /// ([`ScaleSchedule::patchified`]).
    pub spatial_patchify: bool,
    /// Use this tokenizer instead of fitting one.
    pub tokenizer: Option<PathBuf>,
    /// Images the tokenizer is fitted on.
    pub fit_images: usize,
    /// Leave out images that cannot be read or decoded (listed in [`PackNotes::bad`]) instead of
    /// stopping at the first.
    pub skip_bad: bool,
    /// The classes, by id, of a dataset this one is to mix with (`--classes-of`): class folders must be
    /// among them, and a class without a folder has no rows. `None`: the sorted folder names.
    pub classes: Option<Vec<String>>,
    pub writer: WriterOptions,
    pub created_by: String,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            d: 16,
            budget: "demo5".into(),
            patch: 4,
            spatial_patchify: false,
            tokenizer: None,
            fit_images: 512,
            skip_bad: false,
            classes: None,
            writer: WriterOptions::default(),
            created_by: "infinity data pack".into(),
        }
    }
}

struct Entry {
    path: PathBuf,
    label: i32,
    caption: Option<String>,
    /// The caption's file, as listed (a folder's images).
    caption_file: Option<PathBuf>,
    /// A caption file that is no text, and why: the image is a bad one (`--skip-bad` leaves it out).
    bad_caption: Option<(PathBuf, String)>,
    /// The aspect-ratio template it is resized to; `None`: the nearest to its own h/w.
    template: Option<String>,
    /// The metadata file and line that list it (`--meta`).
    listed_at: Option<String>,
}

/// What [`list_images`] found.
struct Listing {
    entries: Vec<Entry>,
    /// Class names by id.
    names: Vec<String>,
    /// Files left out (not .png/.jpg/.jpeg, or in a folder below a class folder).
    skipped: Vec<PathBuf>,
    /// Folders below a class folder that hold images, left out, with their images (in any depth).
    nested: Vec<(PathBuf, usize)>,
    /// Folders among the classes that hold a dataset (`manifest.json`): no class.
    datasets: Vec<PathBuf>,
    /// `.txt` files beside no image of their name.
    orphan_captions: Vec<PathBuf>,
    /// Second caption files of an image that has one (`NAME.TXT` beside `NAME.txt`), not read.
    extra_captions: Vec<PathBuf>,
    /// Images with a short caption (`NAME.short.txt`; a metadata file's `text`), which is not stored.
    short_captions: usize,
    /// The images lie directly in the folder: one class, named after it.
    loose: bool,
}

/// The schedules a pack writes: every template of the catalog at `budget`, in catalog order (empty
/// buckets cost nothing), at twice the sides with `spatial_patchify`.
fn pack_schedules(budget: &str, spatial_patchify: bool) -> Result<Vec<ScaleSchedule>> {
    let catalog = Catalog::upstream();
    let schedules: Vec<ScaleSchedule> =
        catalog.template_names().map(|t| catalog.schedule(t, budget)).collect::<Result<_>>()?;
    Ok(schedules.into_iter().map(|s| if spatial_patchify { s.patchified() } else { s }).collect())
}

/// Why a pack at `budget` (`spatial_patchify`) of the classes of dataset `m` (`--classes-of`) would not
/// mix with it, if it would not: a mix takes one set of schedules, and a pack writes
/// [`pack_schedules`]; the flags that would match them, where some do.
pub fn top_up_mismatch(m: &Manifest, budget: &str, spatial_patchify: bool) -> Option<String> {
    let ours = pack_schedules(budget, spatial_patchify).ok()?;
    if ours == m.schedules {
        return None;
    }
    let mut budgets: Vec<&str> = m.schedules.iter().map(|s| s.pixel_budget.as_str()).collect();
    budgets.sort_unstable();
    budgets.dedup();
    let patchified = m.schedules.iter().any(|s| s.spatial_patchify);
    // (flags that make a pack's schedules the dataset's, where any do)
    let matching = budgets.iter().find_map(|b| {
        (pack_schedules(b, patchified).ok()? == m.schedules).then(|| {
            let patchify = if patchified { " --spatial-patchify" } else { " without --spatial-patchify" };
            format!("pack with --budget {b}{patchify}")
        })
    });
    let fix = matching.unwrap_or_else(|| {
        format!(
            "no pack can: a pack writes every template of one budget, and its {} schedules are {}",
            m.schedules.len(),
            if budgets.len() > 1 { format!("of {} budgets", budgets.len()) } else { "of other templates".into() }
        )
    });
    Some(format!(
        "its schedules are not the ones this pack writes (budget {budget}{}, every template): the two will not mix \
         (data.mix takes one set of schedules); {fix}",
        if spatial_patchify { ", spatial patchify" } else { "" }
    ))
}

/// The file of a packed dataset that names each row's image: one JSON object a line, `{"id": 0,
/// "image": "cats/0.png"}` (the path under the packed folder; of `--meta`, `image_path` as its line has it),
/// in id order.
pub const IMAGES_FILE: &str = "images.jsonl";

/// What packing left out or found missing, for the user to see.
#[derive(Debug, Default)]
pub struct PackNotes {
    /// The folder had no class sub-folders: every image is this one class.
    pub single_class: Option<String>,
    /// Files not packed: other formats, or below a class folder.
    pub skipped: Vec<PathBuf>,
    /// Folders below a class folder holding images, left out, with their images (in any depth).
    pub nested: Vec<(PathBuf, usize)>,
    /// Folders beside the class folders that hold a dataset, not packed as classes.
    pub datasets: Vec<PathBuf>,
    /// With `skip_bad`: the classes it left without an image, with how many it left out of each.
    pub emptied_classes: Vec<(String, usize)>,
    /// `.txt` files beside no image of their name, so no image's caption.
    pub orphan_captions: Vec<PathBuf>,
    /// Second caption files beside an image that has one (`NAME.TXT` beside `NAME.txt`), not read: the
    /// one whose extension is `txt` in lower case is.
    pub extra_captions: Vec<PathBuf>,
    /// Images without a `NAME.txt` caption, when some have one.
    pub uncaptioned: usize,
    /// With `skip_bad`: the images left out, and why.
    pub bad: Vec<String>,
    /// Images with a short caption (`NAME.short.txt`; a metadata file's `text`), which the built-in packer
    /// does not store.
    pub short_captions: usize,
}

/// Load an entry's image, pick its template (its own, else the nearest to its h/w), resize to cover and
/// centre-crop to the schedule's pixel size.
fn load_image(e: &Entry, opts: &PackOptions) -> Result<(Image, ScaleSchedule)> {
    if let Some((caption, detail)) = &e.bad_caption {
        let detail = format!("its caption file {}: {detail}", caption.display());
        return Err(DataError::Image { path: e.path.clone(), detail });
    }
    let (path, budget, patch) = (e.path.as_path(), opts.budget.as_str(), opts.patch);
    // (images.jsonl names each row's image as text: a name not in UTF-8 would lead nowhere)
    if path.file_name().is_some_and(|n| n.to_str().is_none()) {
        let detail = "its name is not UTF-8 (images.jsonl names each row's image as text): rename it".into();
        return Err(DataError::Image { path: path.into(), detail });
    }
    let img = crate::image_file::read_image(path).map_err(|err| match (err, &e.listed_at) {
        (DataError::Image { path, detail }, Some(at)) => {
            DataError::Image { path, detail: format!("{detail} (listed at {at})") }
        }
        (err, _) => err,
    })?;
    let (w0, h0) = (img.width(), img.height());
    if w0 == 0 || h0 == 0 {
        return Err(DataError::Image { path: path.into(), detail: "empty image".into() });
    }
    let catalog = Catalog::upstream();
    let template = e.template.as_deref().unwrap_or_else(|| catalog.nearest_template(h0 as f64 / w0 as f64));
    let sched = catalog.schedule(template, budget)?;
    let sched = if opts.spatial_patchify { sched.patchified() } else { sched };
    let (hh, ww) = sched.latent_hw();
    let (h, w) = ((hh * patch) as u32, (ww * patch) as u32);
    // (cropped to the template's aspect first, then resized: the region resizing to cover and cropping
    // keeps, without first scaling a thin strip's whole length up, which takes gigabytes for a 1×10⁶ one)
    let (cw, ch) = cover_crop(w0, h0, w, h);
    let region = img.crop_imm((w0 - cw) / 2, (h0 - ch) / 2, cw, ch);
    let rgb = region.resize_exact(w, h, FilterType::Lanczos3).to_rgb8();
    Ok((Image::from_rgb8(h as usize, w as usize, rgb.as_raw()), sched))
}

/// The centred region `(width, height)` of a `w0 × h0` image with the aspect of `w × h`: all of its
/// height where it is wider than that, else all of its width (at least one pixel each way).
fn cover_crop(w0: u32, h0: u32, w: u32, h: u32) -> (u32, u32) {
    let (w0_, h0_, w_, h_) = (w0 as u64, h0 as u64, w as u64, h as u64);
    let rounded = |num: u64, den: u64| ((num + den / 2) / den).max(1) as u32;
    match w0_ * h_ >= h0_ * w_ {
        true => (rounded(h0_ * w_, h_).min(w0), h0),
        false => (w0, rounded(w0_ * h_, w_).min(h0)),
    }
}

/// Pack the folder of images `images` into a dataset at `out`.
pub fn pack(images: &Path, out: &Path, opts: &PackOptions) -> Result<(Manifest, Option<TokenizerFit>, PackNotes)> {
    check_patch(opts)?;
    let mut listing = list_images(images, out)?;
    if let Some(names) = &opts.classes {
        listing.take_classes(images, names)?;
    }
    pack_listing(images, listing, out, opts)
}

/// Pack the images that upstream's metadata files in `meta` list ([`crate::meta`]) into a dataset at
/// `out`: one class named after the folder, `long_caption` as the caption, each file's template.
pub fn pack_meta(meta: &Path, out: &Path, opts: &PackOptions) -> Result<(Manifest, Option<TokenizerFit>, PackNotes)> {
    check_patch(opts)?;
    let MetaListing { rows, skipped } = read_meta(meta)?;
    let short_captions = rows.iter().filter(|r| r.short_caption.is_some()).count();
    let entries = rows
        .into_iter()
        .map(|r| Entry {
            path: r.image,
            label: 0,
            caption: Some(r.caption).filter(|c| !c.is_empty()),
            caption_file: None,
            bad_caption: None,
            template: Some(r.template),
            listed_at: Some(r.listed_at),
        })
        .collect();
    let (names, orphan_captions) = (vec![folder_name(meta)], Vec::new());
    let listing = Listing {
        entries,
        names,
        skipped,
        nested: Vec::new(),
        datasets: Vec::new(),
        orphan_captions,
        extra_captions: Vec::new(),
        short_captions,
        loose: true,
    };
    pack_listing(meta, listing, out, opts)
}

/// An unreadable image's error, saying how to go on without it.
fn skip_bad_hint(err: DataError) -> DataError {
    match err {
        DataError::Image { path, detail } => {
            let what = "--skip-bad leaves out, listed, the images that cannot be read or whose caption cannot";
            DataError::Image { path, detail: format!("{detail} ({what})") }
        }
        err => err,
    }
}

fn check_patch(opts: &PackOptions) -> Result<()> {
    crate::tokenizer::check_patch_side(opts.patch)
        .map_err(|what| DataError::Config(format!("pack: the tokenizer's {what}")))
}

/// `k` of `ids`, evenly spread over them (all of them where `k` is as many).
fn spread(ids: &[usize], k: usize) -> Vec<usize> {
    (0..k.min(ids.len())).map(|i| ids[i * ids.len() / k.min(ids.len())]).collect()
}

/// The images the tokenizer is fitted on, as places in a listing of `n`: `fit` of them, evenly spread
/// over it. The listing is in class order, so a stretch of it (its first `fit`) would leave classes
/// out of the fit.
fn fit_sample(n: usize, fit: usize) -> Vec<usize> {
    spread(&(0..n).collect::<Vec<_>>(), fit)
}

/// The images the tokenizer's quality is measured on: up to 64 of a listing of `n` that the fit did not
/// take (`fitted`, sorted), spread alike (a figure measured on the fit's own images would not show a
/// class the fit missed).
fn held_out_sample(n: usize, fitted: &[usize]) -> Vec<usize> {
    let rest: Vec<usize> = (0..n).filter(|id| fitted.binary_search(id).is_err()).collect();
    spread(&rest, 64)
}

/// Images of a sample with their places in the listing, and with `skip_bad` the first error of those
/// left out.
type Sample = (Vec<(usize, (Image, ScaleSchedule))>, Option<DataError>);

/// The images at `ids` of the listing (sorted), decoded and resized on all cores, in `ids`' order. With
/// `skip_bad`, one that cannot be read (listed again when its row is made) gives its place, where `fill`,
/// to the next readable image of the listing that is not of `ids` nor taken already (after it, else
/// before it), so the sample keeps its size while the listing has images to give.
fn load_sample(entries: &[Entry], ids: &[usize], fill: bool, opts: &PackOptions) -> Result<Sample> {
    use rayon::prelude::*;
    let loaded: Vec<Result<(Image, ScaleSchedule)>> =
        ids.par_iter().map(|&id| load_image(&entries[id], opts)).collect();
    let (mut sample, mut first_bad) = (Vec::new(), None);
    let mut unused: Vec<bool> = vec![true; entries.len()];
    ids.iter().for_each(|&id| unused[id] = false);
    for (k, result) in loaded.into_iter().enumerate() {
        match result {
            Ok(img) => sample.push((ids[k], img)),
            Err(err @ DataError::Image { .. }) if opts.skip_bad => {
                first_bad.get_or_insert(err);
                if !fill {
                    continue;
                }
                let candidates = (ids[k] + 1..entries.len()).chain((0..ids[k]).rev());
                let instead = candidates.into_iter().find_map(|id| {
                    // (each tried once: readable or not)
                    if !std::mem::replace(&mut unused[id], false) {
                        return None;
                    }
                    Some((id, load_image(&entries[id], opts).ok()?))
                });
                sample.extend(instead);
            }
            Err(err) => return Err(skip_bad_hint(err)),
        }
    }
    Ok((sample, first_bad))
}

/// Pack what `source` (a folder of images or of metadata) lists.
fn pack_listing(
    source: &Path,
    listing: Listing,
    out: &Path,
    opts: &PackOptions,
) -> Result<(Manifest, Option<TokenizerFit>, PackNotes)> {
    let Listing {
        entries,
        names: class_names,
        skipped,
        nested,
        datasets,
        orphan_captions,
        extra_captions,
        short_captions,
        loose,
    } = listing;
    // (the folder first: one that holds a dataset, or another writer's, is said before the fit's minutes)
    let claim = DatasetWriter::claim(out, opts.writer.clone())?;
    let schedules = pack_schedules(&opts.budget, opts.spatial_patchify)?;
    let (tok, fit) = match &opts.tokenizer {
        Some(p) => (PatchTokenizer::load(p)?, None),
        None => {
            // (its images are held in memory and the fit takes a while: said before it starts)
            let fit_ids = fit_sample(entries.len(), opts.fit_images);
            tracing::info!(
                "pack: fitting the tokenizer on {} of {} images (--fit-images)",
                fit_ids.len(),
                entries.len()
            );
            let sample = match load_sample(&entries, &fit_ids, true, opts)? {
                (sample, Some(err)) if sample.is_empty() => {
                    return Err(DataError::Config(format!(
                        "{}: none of the {} images could be read for the tokenizer's fit ({err}); fix them, or \
                         give a tokenizer that suits these images with --tokenizer",
                        source.display(),
                        entries.len()
                    )))
                }
                (sample, _) => sample,
            };
            // (sorted: a place given to a later image puts it out of order)
            let mut fitted: Vec<usize> = sample.iter().map(|(id, _)| *id).collect();
            fitted.sort_unstable();
            // (none of them readable: measured on the fit's own)
            let (held_out, _) = load_sample(&entries, &held_out_sample(entries.len(), &fitted), false, opts)?;
            let (sample, held_out): (Vec<_>, Vec<_>) =
                (sample.into_iter().map(|(_, img)| img).collect(), held_out.into_iter().map(|(_, img)| img).collect());
            let (t, f) = fit_tokenizer(&sample, &held_out, opts.patch, opts.d)?;
            (t, Some(f))
        }
    };
    if tok.d != opts.d || tok.patch != opts.patch {
        return Err(DataError::Config(format!(
            "pack: the tokenizer has d = {}, patch = {}; the options ask for d = {}, patch = {}",
            tok.d, tok.patch, opts.d, opts.patch
        )));
    }
    let has_caption = entries.iter().any(|e| e.caption.is_some());
    let header = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        d: opts.d as u32,
        bit_order: BIT_ORDER.into(),
        tokenizer: tok.manifest_info(fit.as_ref()),
        conditions: Conditions {
            class: Some(ClassInfo { num_classes: class_names.len() as u32, names: class_names.clone() }),
            text: None,
            caption: has_caption,
        },
        latent: Some(LatentInfo { dtype: "f16".into(), layout: "d,H,W".into() }),
        schedules: schedules.clone(),
        shards: vec![],
        total_rows: 0,
        created_by: opts.created_by.clone(),
    };
    let mut writer = claim.start(header)?;
    tok.save(&writer.file(TOKENIZER_FILE))?;
    let bad = std::sync::Mutex::new(Vec::new());
    let make = |id: u64| -> Result<Option<RowData>> {
        let e = &entries[id as usize];
        let (img, sched) = match load_image(e, opts) {
            Ok(loaded) => loaded,
            Err(err @ DataError::Image { .. }) if opts.skip_bad => {
                bad.lock().expect("no panics while held").push((id, err.to_string()));
                return Ok(None);
            }
            Err(err) => return Err(skip_bad_hint(err)),
        };
        let bucket = schedules.iter().position(|s| s.name == sched.name).expect("schedules cover every template");
        let (latent, bits) = encode_row(&tok, &img, &sched)?;
        Ok(Some(RowData {
            id,
            bucket: bucket as u16,
            bits,
            latent: Some(latent),
            class_label: Some(e.label),
            text_emb: None,
            text_emb_short: None,
            caption: if has_caption { e.caption.clone() } else { None },
        }))
    };
    // (images decode and resize slowly: the pack says how far it is, every 2048 images, where it takes a while)
    let (started, total) = (std::time::Instant::now(), entries.len() as u64);
    write_parallel(&mut writer, total, make, |done| {
        if total > 4096 {
            let rate = done as f64 / started.elapsed().as_secs_f64();
            tracing::info!("pack: {done}/{total} images ({rate:.0} images/s)");
        }
    })?;
    let mut bad = bad.into_inner().expect("no panics while held");
    if !bad.is_empty() && bad.len() == entries.len() {
        return Err(DataError::Config(format!("{}: no image could be read ({})", source.display(), bad[0].1)));
    }
    bad.sort();
    // of the images packed (an unreadable one is left out, captioned or not)
    let is_bad = |id: usize| bad.binary_search_by_key(&(id as u64), |(b, _)| *b).is_ok();
    let uncaptioned = match has_caption {
        true => entries.iter().enumerate().filter(|(id, e)| e.caption.is_none() && !is_bad(*id)).count(),
        false => 0,
    };
    // which image each row is (ids are places in the listing), before the manifest makes the dataset
    let listed = |id: usize, e: &Entry| {
        let image = e.path.strip_prefix(source).unwrap_or(&e.path).to_string_lossy().into_owned();
        serde_json::json!({ "id": id, "image": image }).to_string() + "\n"
    };
    let images: String =
        entries.iter().enumerate().filter(|(id, _)| !is_bad(*id)).map(|(id, e)| listed(id, e)).collect();
    crate::manifest::write_atomic(&writer.file(IMAGES_FILE), images.as_bytes())?;
    let single_class = loose.then(|| class_names[0].clone());
    // (a class whose every image was unreadable: the model would get a class no sample has)
    let (mut listed, mut kept) = (vec![0; class_names.len()], vec![0; class_names.len()]);
    for (id, e) in entries.iter().enumerate() {
        listed[e.label as usize] += 1;
        kept[e.label as usize] += usize::from(!is_bad(id));
    }
    // (of the classes with images: a class of --classes-of without a folder has none)
    let emptied_classes = (0..class_names.len())
        .filter(|&k| kept[k] == 0 && listed[k] > 0)
        .map(|k| (class_names[k].clone(), listed[k]))
        .collect();
    let bad = bad.into_iter().map(|(_, e)| e).collect();
    let notes = PackNotes {
        single_class,
        skipped,
        nested,
        datasets,
        emptied_classes,
        orphan_captions,
        extra_captions,
        uncaptioned,
        bad,
        short_captions,
    };
    Ok((writer.finish()?, fit, notes))
}
