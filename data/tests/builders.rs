//! The dataset builders: synth is deterministic and its tokenizer meets its PSNR floor; stored bits are
//! exactly the multi-scale BSQ of the stored latent; pack turns a folder of images into a sound dataset.

use std::sync::Arc;

use infinity_data::loader::{Loader, LoaderOptions};
use infinity_data::synth::{synth, Sample, SynthOptions};
use infinity_data::tokenizer::PatchTokenizer;
use infinity_data::writer::WriterOptions;
use infinity_data::{format, inspect, pack, Checksums, DataError, Dataset, Manifest};
use infinity_kernels::bsq;

/// Floors for the demo tokenizer (d = 16, demo5 schedules, 4-px patches). Measured: 32.1 dB for the
/// continuous latent and 20.6 dB after multi-scale BSQ (docs/benchmarks.md).
const LATENT_PSNR_FLOOR_DB: f64 = 30.0;
const BSQ_PSNR_FLOOR_DB: f64 = 19.5;

fn small(rows: u64, seed: u64) -> SynthOptions {
    SynthOptions {
        rows,
        seed,
        fit_rows: 256,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    }
}

#[test]
fn synth_is_deterministic_and_meets_the_psnr_floor() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ma, fit) = synth(a.path(), &small(600, 3)).unwrap();
    let (mb, _) = synth(b.path(), &small(600, 3)).unwrap();
    let (mc, _) = synth(c.path(), &small(600, 4)).unwrap();
    assert_eq!(ma.shards, mb.shards, "same seed must give byte-identical shards");
    assert_ne!(ma.shards[0].crc32c, mc.shards[0].crc32c, "another seed must give other data");
    assert!(fit.psnr_latent_db > LATENT_PSNR_FLOOR_DB, "latent PSNR {:.2} dB", fit.psnr_latent_db);
    assert!(fit.psnr_bsq_db > BSQ_PSNR_FLOOR_DB, "BSQ PSNR {:.2} dB", fit.psnr_bsq_db);
    let r = inspect::verify(a.path());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.rows_checked, 600);
    // a pack of its classes (every template of a budget) would not mix with its two templates: said
    let w = pack::top_up_mismatch(&ma, "demo5", false).unwrap();
    assert!(
        w.ends_with(
            "no pack can: a pack writes every template of one budget, and its 2 schedules are of other \
                         templates"
        ),
        "{w}"
    );
    // `data stats` counts the captions' tokens, the long and the short ones, against their bound
    let ds = Dataset::open(a.path(), Checksums::Verify).unwrap();
    let text = inspect::stats(&ds, 100).unwrap();
    let t = ma.conditions.text.as_ref().unwrap();
    let per_token = t.width as usize * 2;
    let rows: Vec<usize> = (0..600).step_by(6).map(|g| ds.row(g).text_emb.unwrap().len() / per_token).collect();
    let (lo, hi) = (rows.iter().min().unwrap(), rows.iter().max().unwrap());
    let want = format!("caption tokens (100 of 600 rows, spread over them): min {lo}, mean ");
    assert!(text.contains(&want) && text.contains(&format!(", max {hi} (bound {})", t.max_tokens)), "{text}");
    assert!(text.contains("short caption tokens (100 of those 100 rows have one): min "), "{text}");
}

#[test]
fn stored_bits_are_the_bsq_of_the_stored_latent_and_conditions_match_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(200, 8);
    synth(dir.path(), &opts).unwrap();
    let ds = Arc::new(Dataset::open(dir.path(), Checksums::Verify).unwrap());
    let d = ds.manifest.d as usize;
    let tok = PatchTokenizer::load(&dir.path().join("tokenizer.safetensors")).unwrap();
    let mut loader =
        Loader::new(ds.clone(), LoaderOptions { global_batch: 8, workers: 0, ..Default::default() }, None).unwrap();
    for _ in 0..5 {
        let b = loader.next_batch().unwrap();
        let sched = &ds.manifest.schedules[b.bucket as usize];
        for i in 0..b.len() {
            let latent = b.latent_f32(i).unwrap();
            let enc = bsq::encode_multiscale(&latent, d, &sched.hw());
            assert_eq!(b.unpacked_bits(i, d), enc.bits, "row id {}", b.ids[i]);
            let s = Sample::draw(opts.seed, b.ids[i], &opts.templates);
            assert_eq!(b.class_label.as_ref().unwrap()[i], s.class_label());
            assert_eq!(b.captions.as_ref().unwrap()[i].as_deref(), Some(s.caption().as_str()));
            let cu = b.text_cu_seqlens.as_ref().unwrap();
            assert_eq!((cu[i + 1] - cu[i]) as usize, s.words.len(), "one text token per caption word");
            // decoding the bits gives back (roughly) the rendered image
            let (h, w) = sched.latent_hw();
            let img = s.render(h * tok.patch, w * tok.patch);
            let psnr = infinity_data::tokenizer::psnr(&img, &tok.decode_bits(&enc.bits, &sched.hw()));
            assert!(psnr > 14.0, "row id {}: decoded bits give {psnr:.1} dB", b.ids[i]);
        }
    }
}

#[test]
fn pack_a_folder_of_images_with_labels_and_captions() {
    let src = tempfile::tempdir().unwrap();
    let templates = SynthOptions::default().templates;
    for (k, class) in ["cats", "dogs"].iter().enumerate() {
        let dir = src.path().join(class);
        std::fs::create_dir(&dir).unwrap();
        for i in 0..6u64 {
            let s = Sample::draw(k as u64, i, &templates);
            let (h, w) = if i % 2 == 0 { (40, 40) } else { (30, 60) }; // square and 1:2
            let img = s.render(h, w);
            image::save_buffer(
                dir.join(format!("{i}.png")),
                &img.to_rgb8(),
                w as u32,
                h as u32,
                image::ColorType::Rgb8,
            )
            .unwrap();
            if i == 0 {
                std::fs::write(dir.join("0.txt"), format!("{}\n", s.caption())).unwrap();
            }
        }
        std::fs::write(dir.join("notes.md"), "not an image").unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    // what is not a class or an image: a hidden folder, a file of another format, a nested folder
    std::fs::create_dir_all(src.path().join(".ipynb_checkpoints")).unwrap();
    std::fs::create_dir_all(src.path().join("cats").join("nested")).unwrap();
    // captions of no image: another case, the image's whole name, no image at all, above the classes
    for orphan in ["cats/1.PNG.txt", "cats/2.png.txt", "dogs/gone.txt", "readme.txt"] {
        std::fs::write(src.path().join(orphan), "a caption").unwrap();
    }
    // (a short caption, which tools/write_shards.py reads, is no orphan)
    std::fs::write(src.path().join("cats/3.short.txt"), "a cat").unwrap();
    let (m, fit, notes) =
        pack::pack(src.path(), out.path(), &pack::PackOptions { fit_images: 12, ..Default::default() }).unwrap();
    // a top-up of its classes mixes at its budget and layout alone, and the flags that match are said
    assert_eq!(pack::top_up_mismatch(&m, "demo5", false), None);
    for (budget, patchify) in [("demo4", false), ("demo5", true)] {
        let w = pack::top_up_mismatch(&m, budget, patchify).unwrap();
        assert!(w.ends_with("; pack with --budget demo5 without --spatial-patchify"), "{budget} {patchify}: {w}");
    }
    let under_src = |paths: &[std::path::PathBuf]| -> Vec<String> {
        paths.iter().map(|p| p.strip_prefix(src.path()).unwrap().display().to_string()).collect()
    };
    assert_eq!(under_src(&notes.skipped), ["cats/nested", "cats/notes.md", "dogs/notes.md"]);
    assert_eq!(under_src(&notes.orphan_captions), ["readme.txt", "cats/1.PNG.txt", "cats/2.png.txt", "dogs/gone.txt"]);
    assert_eq!(notes.uncaptioned, 10);
    assert_eq!(notes.short_captions, 1, "NAME.short.txt is counted as not stored");
    assert_eq!(m.total_rows, 12);
    assert_eq!(m.conditions.class.as_ref().unwrap().names, vec!["cats", "dogs"]);
    assert!(m.conditions.caption);
    assert!(fit.unwrap().psnr_bsq_db > 10.0);
    let ds = Dataset::open(out.path(), Checksums::Verify).unwrap();
    for g in 0..12 {
        let row = ds.row(g);
        assert_eq!(row.class_label, Some((g / 6) as i32));
        let sched = &m.schedules[row.bucket as usize];
        let want = if g % 2 == 0 { "1.000" } else { "0.500" };
        assert_eq!(sched.h_div_w_template, want, "row {g} went to the wrong aspect-ratio bucket");
        assert_eq!(row.caption.is_some(), g % 6 == 0);
        assert_eq!(row.bits.len(), sched.num_tokens() * format::bytes_per_token(16));
    }
    assert!(inspect::verify(out.path()).problems.is_empty());
    // the images' size in pixels is said (a budget's name alone does not fix it: the patch does too)
    let text = inspect::inspect(out.path()).unwrap().summary;
    assert!(text.contains("latent 8×8 (32×32 px)"), "{text}");
    // the statistics look at rows spread over the dataset, whose rows are in class order
    let text = inspect::stats(&ds, 2).unwrap();
    assert!(text.contains("class histogram (2 of 12 rows, spread over them): [1, 1]"), "{text}");

    // a broken image is named
    std::fs::write(src.path().join("dogs").join("9.png"), b"not a png").unwrap();
    let e = pack::pack(
        src.path(),
        out.path(),
        &pack::PackOptions { writer: WriterOptions { overwrite: true, ..Default::default() }, ..Default::default() },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("9.png") && e.contains("--skip-bad leaves out, listed, the images that cannot be read"), "{e}");
    // --skip-bad packs the others and lists it
    let skip = pack::PackOptions {
        skip_bad: true,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    let (m, _, notes) = pack::pack(src.path(), out.path(), &skip).unwrap();
    assert_eq!((m.total_rows, notes.bad.len()), (12, 1), "{:?}", notes.bad);
    assert_eq!(notes.uncaptioned, 10, "of the images packed (the broken one had no caption either)");
    // images.jsonl names each row's image (the broken one has no row)
    let listed = std::fs::read_to_string(out.path().join(pack::IMAGES_FILE)).unwrap();
    let rows: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r["image"].as_str().is_some_and(|i| !i.ends_with("9.png"))), "{listed}");
    let ds = Dataset::open(out.path(), Checksums::Verify).unwrap();
    let first_dog = rows.iter().find(|r| r["image"] == "dogs/0.png").unwrap()["id"].as_u64().unwrap();
    assert_eq!((0..12).map(|g| ds.row(g)).find(|r| r.id == first_dog).unwrap().class_label, Some(1));
    assert!(notes.bad[0].contains("9.png"), "{:?}", notes.bad);
    assert!(inspect::verify(out.path()).problems.is_empty());
    assert!(notes.emptied_classes.is_empty(), "{:?}", notes.emptied_classes);
    std::fs::remove_file(src.path().join("dogs").join("9.png")).unwrap();
    // ... and says so where it leaves a class without an image
    std::fs::create_dir(src.path().join("unread")).unwrap();
    std::fs::write(src.path().join("unread/0.png"), b"").unwrap();
    let (_, _, notes) = pack::pack(src.path(), out.path(), &skip).unwrap();
    assert_eq!(notes.emptied_classes, [("unread".to_string(), 1)]);
    assert!(notes.bad[0].contains("an empty file (0 bytes)"), "{:?}", notes.bad);
    std::fs::remove_dir_all(src.path().join("unread")).unwrap();

    // images in a folder below a class folder are counted, apart from the other files left out
    let overwrite =
        pack::PackOptions { writer: WriterOptions { overwrite: true, ..Default::default() }, ..Default::default() };
    std::fs::copy(src.path().join("cats/0.png"), src.path().join("cats/nested/0.png")).unwrap();
    let (_, _, notes) = pack::pack(src.path(), out.path(), &overwrite).unwrap();
    assert_eq!(notes.nested, [(src.path().join("cats/nested"), 1)]);
    assert!(!notes.skipped.contains(&src.path().join("cats/nested")), "{:?}", notes.skipped);
    std::fs::remove_file(src.path().join("cats/nested/0.png")).unwrap();
    // (a folder named as an image is a folder: it was read as an image too, and failed)
    std::fs::create_dir(src.path().join("cats/dir.png")).unwrap();
    std::fs::copy(src.path().join("cats/0.png"), src.path().join("cats/dir.png/0.png")).unwrap();
    let (m, _, notes) = pack::pack(src.path(), out.path(), &overwrite).unwrap();
    assert_eq!(notes.nested, [(src.path().join("cats/dir.png"), 1)]);
    assert!(notes.bad.is_empty() && m.total_rows == 12, "{:?}", notes.bad);
    std::fs::remove_dir_all(src.path().join("cats/dir.png")).unwrap();
    // (nor is a folder named as a caption a caption: it stopped the pack, --skip-bad or not)
    std::fs::create_dir(src.path().join("cats/1.txt")).unwrap();
    let (m, _, notes) = pack::pack(src.path(), out.path(), &overwrite).unwrap();
    assert!(notes.skipped.contains(&src.path().join("cats/1.txt")) && m.total_rows == 12, "{:?}", notes.skipped);
    std::fs::remove_dir(src.path().join("cats/1.txt")).unwrap();
    // a link to a folder is not followed below it (`self -> .` would count the tree again and again)
    std::os::unix::fs::symlink(".", src.path().join("cats/nested/self")).unwrap();
    let (_, _, notes) = pack::pack(src.path(), out.path(), &overwrite).unwrap();
    assert!(notes.nested.is_empty(), "{:?}", notes.nested);
    std::fs::remove_file(src.path().join("cats/nested/self")).unwrap();
    std::os::unix::fs::symlink(".", src.path().join("cats/self")).unwrap();
    let (_, _, notes) = pack::pack(src.path(), out.path(), &overwrite).unwrap();
    assert!(notes.nested.is_empty(), "a link right below a class folder: {:?}", notes.nested);
    std::fs::remove_file(src.path().join("cats/self")).unwrap();
    // a failed first pack removes what it wrote, but not a tokenizer that was there before
    let fresh = tempfile::tempdir().unwrap();
    let tokenizer = fresh.path().join("tokenizer.safetensors");
    std::fs::copy(out.path().join("tokenizer.safetensors"), &tokenizer).unwrap();
    std::fs::write(src.path().join("dogs/broken.png"), b"not a png").unwrap();
    let reuse = pack::PackOptions { tokenizer: Some(tokenizer.clone()), ..Default::default() };
    assert!(pack::pack(src.path(), fresh.path(), &reuse).is_err());
    assert!(tokenizer.is_file(), "the failed pack removed the tokenizer it was given");
    let left: Vec<_> = std::fs::read_dir(fresh.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    // (the tokenizer and the folder's lock)
    assert_eq!(left.len(), 2, "{left:?}");
    // and a folder it made (with those above it) is removed again
    let made = fresh.path().join("new/packed");
    assert!(pack::pack(src.path(), &made, &pack::PackOptions::default()).is_err());
    assert!(!fresh.path().join("new").exists(), "a failed first pack left the folders it made");
    std::fs::remove_file(src.path().join("dogs/broken.png")).unwrap();
    // a class folder of class folders: --images one level down is suggested
    std::fs::create_dir_all(src.path().join("deep/inner")).unwrap();
    std::fs::copy(src.path().join("cats/0.png"), src.path().join("deep/inner/0.png")).unwrap();
    let e = pack::pack(src.path(), out.path(), &overwrite).unwrap_err().to_string();
    let deep = src.path().join("deep").display().to_string();
    assert!(
        e.contains("a class folder without images of its own") && e.contains(&format!("move them up into {deep}")),
        "{e}"
    );
    std::fs::remove_dir_all(src.path().join("deep")).unwrap();
    // ... and where every class folder's images lie one level down, the --images to give
    let high = tempfile::tempdir().unwrap();
    write_pngs(&high.path().join("train/cats"), 1, (16, 16));
    let e = pack::pack(high.path(), out.path(), &overwrite).unwrap_err().to_string();
    let train = high.path().join("train").display().to_string();
    assert!(e.contains(&format!("give --images {train}")), "{e}");

    // a class folder without images would be a class no sample has: named
    std::fs::create_dir(src.path().join("emptyclass")).unwrap();
    let e = pack::pack(src.path(), out.path(), &overwrite).unwrap_err().to_string();
    assert!(e.contains("emptyclass: a class folder without .png/.jpg/.jpeg images"), "{e}");
    std::fs::remove_dir(src.path().join("emptyclass")).unwrap();

    // a dataset packed inside its images' folder is no class folder when packed again
    let inside = src.path().join("packed");
    for _ in 0..2 {
        let (m, _, _) = pack::pack(src.path(), &inside, &overwrite).unwrap();
        assert_eq!((m.total_rows, m.conditions.class.unwrap().num_classes), (12, 2));
    }
    // ... nor when another is packed: named as a dataset left out
    let (_, _, notes) = pack::pack(src.path(), out.path(), &overwrite).unwrap();
    assert_eq!((under_src(&notes.datasets), notes.skipped.len()), (vec!["packed".to_string()], 3));
    // a class folder is no place to pack into: its class would be left out
    let e = pack::pack(src.path(), &src.path().join("cats"), &overwrite).unwrap_err().to_string();
    assert!(e.contains("cats: the output folder is a class folder of") && e.contains("holding 6 images"), "{e}");
    assert!(!src.path().join("cats/manifest.json").exists());

    // a top-up of one class, with the first dataset's classes and tokenizer, mixes with it
    let first = Manifest::load(out.path()).unwrap();
    let names = first.conditions.class.as_ref().unwrap().names.clone();
    let more = tempfile::tempdir().unwrap();
    write_pngs(&more.path().join("dogs"), 3, (16, 16));
    let top_up = tempfile::tempdir().unwrap();
    let opts = pack::PackOptions {
        classes: Some(names.clone()),
        tokenizer: Some(out.path().join("tokenizer.safetensors")),
        ..Default::default()
    };
    let (m, _, notes) = pack::pack(more.path(), top_up.path(), &opts).unwrap();
    assert_eq!(m.conditions.class.as_ref().unwrap().names, names);
    assert!(notes.emptied_classes.is_empty(), "a class without a folder is no emptied class");
    let ds = Dataset::open(top_up.path(), Checksums::Verify).unwrap();
    assert!((0..3).all(|g| ds.row(g).class_label == Some(1)), "dogs keep the first dataset's id");
    assert_eq!(infinity_data::dataset::mix_difference(&first, &m), None);
    // a folder that is none of its classes is named
    write_pngs(&more.path().join("birds"), 1, (16, 16));
    let e = pack::pack(more.path(), tempfile::tempdir().unwrap().path(), &opts).unwrap_err().to_string();
    assert!(e.contains("birds: a class folder that is none of --classes-of's classes (cats, dogs)"), "{e}");
}

/// Write `n` synth images of `h×w` pixels into `dir` as `0.png`, `1.png`, ...
fn write_pngs(dir: &std::path::Path, n: u64, (h, w): (usize, usize)) {
    let templates = SynthOptions::default().templates;
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = Sample::draw(0, i, &templates).render(h, w);
        let path = dir.join(format!("{i}.png"));
        image::save_buffer(path, &img.to_rgb8(), w as u32, h as u32, image::ColorType::Rgb8).unwrap();
    }
}

/// Images directly in the folder are one class named after it (one class and the null class of
/// classifier-free guidance: unconditional generation); a dataset without a condition trains no model.
#[test]
fn pack_a_folder_without_class_folders_as_one_class() {
    let src = tempfile::tempdir().unwrap();
    let images = src.path().join("flowers");
    write_pngs(&images, 4, (32, 32));
    let out = tempfile::tempdir().unwrap();
    let (m, _, notes) =
        pack::pack(&images, out.path(), &pack::PackOptions { fit_images: 4, ..Default::default() }).unwrap();
    let class = m.conditions.class.as_ref().expect("a class condition");
    assert_eq!((class.num_classes, class.names.as_slice()), (1, ["flowers".to_string()].as_slice()));
    assert_eq!(notes.single_class.as_deref(), Some("flowers"));
    let ds = Dataset::open(out.path(), Checksums::Verify).unwrap();
    assert!((0..4).all(|g| ds.row(g).class_label == Some(0)));
    assert!(inspect::verify(out.path()).problems.is_empty());

    // one class folder is a class folder, not the folder's own class
    let nested = tempfile::tempdir().unwrap();
    write_pngs(&nested.path().join("roses"), 2, (32, 32));
    let opts = pack::PackOptions {
        fit_images: 2,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    let (m, _, notes) = pack::pack(nested.path(), out.path(), &opts).unwrap();
    assert_eq!((m.conditions.class.unwrap().names, notes.single_class), (vec!["roses".to_string()], None));

    // packed into the images' folder itself, again: its own files are not listed as left out; a dataset
    // among class folders is no class
    let own = pack::PackOptions {
        fit_images: 4,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    for _ in 0..2 {
        let (m, _, notes) = pack::pack(&images, &images, &own).unwrap();
        assert_eq!((m.total_rows, notes.skipped.len()), (4, 0), "{:?}", notes.skipped);
    }
    std::fs::rename(&images, nested.path().join("flowers-packed")).unwrap();
    let (m, _, notes) = pack::pack(nested.path(), out.path(), &opts).unwrap();
    assert_eq!(m.conditions.class.unwrap().names, vec!["roses".to_string()]);
    assert_eq!((notes.datasets, notes.skipped), (vec![nested.path().join("flowers-packed")], vec![]));
    std::fs::rename(nested.path().join("flowers-packed"), &images).unwrap();
    for f in ["manifest.json", "images.jsonl", "tokenizer.safetensors", "shard-00000.arrow"] {
        std::fs::remove_file(images.join(f)).unwrap();
    }

    // both layouts at once stay refused
    write_pngs(&images.join("tulips"), 1, (32, 32));
    let e = pack::pack(&images, out.path(), &opts).unwrap_err().to_string();
    assert!(e.contains("holds both loose images") && e.contains("tulips"), "{e}");
}

/// Sizes of zero are named as the option they are, before any tokenizer or manifest check.
#[test]
fn synth_names_options_of_size_zero() {
    let dir = tempfile::tempdir().unwrap();
    for (opts, want) in [
        (
            SynthOptions { patch: 0, ..small(10, 0) },
            "synth: the tokenizer's patch side must be 1 to 64 pixels, found 0",
        ),
        (SynthOptions { text_width: 0, ..small(10, 0) }, "synth: the text embedding width must be at least 1, found 0"),
    ] {
        let e = synth(dir.path(), &opts).unwrap_err();
        assert!(matches!(e, DataError::Config(_)) && e.to_string() == want, "{e}");
    }
    let e = pack::pack(dir.path(), dir.path(), &pack::PackOptions { patch: 0, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("patch side must be 1 to 64 pixels, found 0"), "{e}");
}

/// A caption's byte-order mark is no part of it; a class folder whose name is not UTF-8 is refused
/// (two such names could read alike as text: two classes of one name).
#[test]
fn captions_lose_a_byte_order_mark_and_class_names_must_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let src = tempfile::tempdir().unwrap();
    write_pngs(&src.path().join("roses"), 2, (32, 32));
    std::fs::write(src.path().join("roses/0.txt"), "\u{feff}a red rose\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = pack::PackOptions { fit_images: 2, ..Default::default() };
    pack::pack(src.path(), out.path(), &opts).unwrap();
    let ds = Dataset::open(out.path(), Checksums::Verify).unwrap();
    assert_eq!(ds.row(0).caption, Some("a red rose"));

    // an image whose name is not UTF-8 is a bad image: --skip-bad leaves it out, named
    let odd = src.path().join("roses").join(std::ffi::OsStr::from_bytes(b"r\xe9.png"));
    std::fs::copy(src.path().join("roses/1.png"), &odd).unwrap();
    let skip = pack::PackOptions {
        skip_bad: true,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..opts.clone()
    };
    let (m, _, notes) = pack::pack(src.path(), out.path(), &skip).unwrap();
    assert_eq!(m.total_rows, 2);
    assert!(notes.bad[0].contains("its name is not UTF-8"), "{:?}", notes.bad);
    std::fs::remove_file(&odd).unwrap();
    let latin1 = src.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    write_pngs(&latin1, 1, (32, 32));
    let opts = pack::PackOptions { writer: WriterOptions { overwrite: true, ..Default::default() }, ..opts };
    let e = pack::pack(src.path(), out.path(), &opts).unwrap_err().to_string();
    assert!(e.contains("a class folder whose name is not UTF-8"), "{e}");
}

/// Captions as other tools save them are read: UTF-16 with its byte-order mark (Windows Notepad's
/// "Unicode"), either byte order, and `NAME.TXT` (`NAME.txt` first, the other a second caption, named);
/// a caption in another encoding is a bad image, named, which `--skip-bad` leaves out.
#[test]
fn captions_in_utf16_or_named_in_capitals_are_read() {
    let src = tempfile::tempdir().unwrap();
    write_pngs(&src.path().join("roses"), 3, (32, 32));
    let utf16 = |text: &str, be: bool| -> Vec<u8> {
        let bom = if be { [0xfe, 0xff] } else { [0xff, 0xfe] };
        let units = text.encode_utf16().flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() });
        bom.into_iter().chain(units).collect()
    };
    std::fs::write(src.path().join("roses/0.txt"), utf16("a red rosé\r\n", false)).unwrap();
    std::fs::write(src.path().join("roses/1.TXT"), utf16("a pink rose", true)).unwrap();
    std::fs::write(src.path().join("roses/2.TXT"), "a white rose\0").unwrap(); // (a C string's end)
                                                                               // (a second caption beside 0.txt: not read, and named as such rather than as beside no image)
    std::fs::write(src.path().join("roses/0.TXT"), "a rose").unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = pack::PackOptions {
        fit_images: 3,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    let (_, _, notes) = pack::pack(src.path(), out.path(), &opts).unwrap();
    assert!(notes.orphan_captions.is_empty() && notes.skipped.is_empty() && notes.uncaptioned == 0, "{notes:?}");
    assert_eq!(notes.extra_captions, [src.path().join("roses/0.TXT")]);
    let ds = Dataset::open(out.path(), Checksums::Verify).unwrap();
    let captions: Vec<_> = (0..3).map(|i| ds.row(i).caption.map(str::to_string)).collect();
    assert_eq!(captions, [Some("a red rosé".into()), Some("a pink rose".into()), Some("a white rose".into())]);

    // UTF-16 without its byte-order mark (ASCII in it reads as UTF-8 with NULs), and Latin-1 (`é` as one
    // byte): named, and left out under --skip-bad
    let file = src.path().join("roses/2.TXT").display().to_string();
    let no_bom: Vec<u8> = "a white rose".encode_utf16().flat_map(u16::to_le_bytes).collect();
    for (bytes, why) in [(no_bom, "NUL characters"), (b"a white ros\xe9".to_vec(), "neither UTF-8 nor UTF-16")] {
        std::fs::write(src.path().join("roses/2.TXT"), bytes).unwrap();
        let e = pack::pack(src.path(), out.path(), &opts).unwrap_err().to_string();
        assert!(e.contains(&file) && e.contains(why) && e.contains("--skip-bad"), "{e}");
    }
    let (m, _, notes) = pack::pack(src.path(), out.path(), &pack::PackOptions { skip_bad: true, ..opts }).unwrap();
    assert_eq!(m.total_rows, 2);
    assert!(notes.bad.len() == 1 && notes.bad[0].contains(&file), "{:?}", notes.bad);
}

/// Another dataset's tokenizer file in a dataset's folder (d = 8 for bits of d = 16) is a problem
/// `verify` names and `stats --png` refuses, rather than a clean verify and a panic decoding the bits.
/// A resume while the file cannot be read keeps the identity the checkpoint saved, for the next
/// resume to check.
#[test]
fn another_datasets_tokenizer_is_named() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    synth(a.path(), &small(40, 3)).unwrap();
    synth(b.path(), &SynthOptions { d: 8, ..small(40, 3) }).unwrap();
    let ds = Arc::new(Dataset::open(a.path(), Checksums::Verify).unwrap());
    let mut l =
        Loader::new(ds.clone(), LoaderOptions { global_batch: 4, workers: 0, ..Default::default() }, None).unwrap();
    l.next_batch().unwrap();
    let saved = l.state();
    assert!(saved.tokenizer.is_some());

    let file = a.path().join("tokenizer.safetensors");
    std::fs::copy(b.path().join("tokenizer.safetensors"), &file).unwrap();
    let r = inspect::verify(a.path());
    let want = "a tokenizer of d = 8 and 4 px patches, where the dataset's bits have d = 16 from 4 px patches";
    assert!(r.problems.iter().any(|p| p.contains(want)), "{:?}", r.problems);
    let e = inspect::sample_grid(&ds, 4, &a.path().join("grid.png")).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");

    // another fit of the same shape: told by the checksum the manifest records
    let c = tempfile::tempdir().unwrap();
    synth(c.path(), &small(40, 9)).unwrap();
    std::fs::copy(c.path().join("tokenizer.safetensors"), &file).unwrap();
    let r = inspect::verify(a.path());
    let want = "not the tokenizer the dataset's bits were made with (its values' checksum is";
    assert!(r.problems.iter().any(|p| p.contains(want)), "{:?}", r.problems);

    std::fs::write(&file, b"not a tokenizer").unwrap();
    let opts = LoaderOptions { global_batch: 4, workers: 0, ..Default::default() };
    let l = Loader::new(ds.clone(), opts, Some(saved.clone())).unwrap();
    assert_eq!(l.state().tokenizer, saved.tokenizer, "the saved identity kept");
}
