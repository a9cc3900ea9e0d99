//! `infinity data pack` on folders as users keep them: the tokenizer is fitted on images spread over
//! every class and measured on others; loose images beside empty folders, hidden images and links back
//! to the folder are left out, said; a folder whose every image is unreadable is named with the reason.

use std::path::Path;

use infinity_data::pack::{self, PackOptions};
use infinity_data::tokenizer::{psnr, Image, PatchTokenizer, TOKENIZER_FILE};
use infinity_data::writer::WriterOptions;

/// `n` images of 32×32 noise in `dir`, in the channel `c` alone (0 red, 1 green, 2 blue).
fn write_noise(dir: &Path, n: usize, c: usize, seed: u64) -> Vec<Image> {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 56) as u8
    };
    (0..n)
        .map(|i| {
            let rgb: Vec<u8> = (0..32 * 32 * 3).map(|k| if k % 3 == c { next() } else { 0 }).collect();
            image::save_buffer(dir.join(format!("{i}.png")), &rgb, 32, 32, image::ColorType::Rgb8).unwrap();
            Image::from_rgb8(32, 32, &rgb)
        })
        .collect()
}

fn opts(fit_images: usize) -> PackOptions {
    PackOptions { fit_images, writer: WriterOptions { overwrite: true, ..Default::default() }, ..Default::default() }
}

/// The listing is in class order: a fit on its first images would leave the last classes out, and the
/// tokenizer would not encode them (a figure measured on the fit's own images would not show it).
#[test]
fn the_tokenizer_is_fitted_on_every_class_and_measured_on_other_images() {
    let src = tempfile::tempdir().unwrap();
    // 30 images: red noise in classes a-c, green in d; a fit of 25 taken from the front sees no green
    for (k, class) in ["a", "b", "c"].iter().enumerate() {
        write_noise(&src.path().join(class), 9, 0, k as u64 + 1);
    }
    let green = write_noise(&src.path().join("d"), 3, 1, 9);
    let out = tempfile::tempdir().unwrap();
    let (m, fit, _) = pack::pack(src.path(), out.path(), &opts(25)).unwrap();
    assert_eq!(m.total_rows, 30);
    let tok = PatchTokenizer::load(&out.path().join(TOKENIZER_FILE)).unwrap();
    let round_trip = |img: &Image| psnr(img, &tok.decode(&tok.encode(img).unwrap(), 8, 8));
    let green_db = green.iter().map(round_trip).sum::<f64>() / green.len() as f64;
    // (measured: 15.8 dB fitted on images of every class; 9.5 dB on the first 25)
    assert!(green_db > 13.0, "class d's images through the tokenizer: {green_db:.1} dB");
    let fit = fit.expect("a fitted tokenizer");
    assert_eq!((fit.images, fit.held_out), (5, true), "{fit:?}");
    assert_eq!(fit.measured_on(), "5 images not in the fit");

    // every image in the fit: measured on them, and said so
    let (_, fit, _) = pack::pack(src.path(), out.path(), &opts(512)).unwrap();
    let fit = fit.unwrap();
    assert_eq!((fit.images, fit.held_out, fit.measured_on().as_str()), (30, false, "the 30 images it was fitted on"));
}

/// Beside loose images, a folder without images is left out, listed; one of images is named in the error
/// (the images would be a class or not, and the folder must say which).
#[test]
fn loose_images_beside_folders() {
    let src = tempfile::tempdir().unwrap();
    let flowers = src.path().join("flowers");
    write_noise(&flowers, 3, 0, 1);
    std::fs::create_dir_all(flowers.join("thumbs")).unwrap();
    std::fs::write(flowers.join(".hidden.png"), b"a hidden image").unwrap();
    std::fs::write(flowers.join(".DS_Store"), b"no image").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(".", flowers.join("self")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (m, _, notes) = pack::pack(&flowers, out.path(), &opts(3)).unwrap();
    assert_eq!((m.total_rows, notes.single_class.as_deref()), (3, Some("flowers")));
    let mut expected = vec![flowers.join("thumbs"), flowers.join(".hidden.png")];
    #[cfg(unix)]
    expected.insert(0, flowers.join("self"));
    let mut skipped = notes.skipped.clone();
    skipped.sort();
    expected.sort();
    assert_eq!(skipped, expected);

    write_noise(&flowers.join("more"), 1, 1, 2);
    let e = pack::pack(&flowers, out.path(), &opts(3)).unwrap_err().to_string();
    assert!(e.contains("loose images") && e.contains("0.png and 2 more"), "{e}");
    assert!(e.contains(&format!("sub-folders of images ({})", flowers.join("more").display())), "{e}");
    assert!(!e.contains("thumbs"), "{e}");
}

/// A class folder's hidden images are listed as left out, and a link back to the folder is no class.
#[test]
fn hidden_images_and_links_back_among_class_folders() {
    let src = tempfile::tempdir().unwrap();
    write_noise(&src.path().join("cats"), 2, 0, 1);
    write_noise(&src.path().join("dogs"), 2, 1, 2);
    std::fs::copy(src.path().join("cats/0.png"), src.path().join("cats/.x.png")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(src.path(), src.path().join("self")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (m, _, notes) = pack::pack(src.path(), out.path(), &opts(4)).unwrap();
    assert_eq!(m.conditions.class.unwrap().names, ["cats", "dogs"]);
    assert!(notes.skipped.contains(&src.path().join("cats/.x.png")), "{:?}", notes.skipped);
    #[cfg(unix)]
    assert!(notes.skipped.contains(&src.path().join("self")), "{:?}", notes.skipped);
}

/// With --skip-bad and no image readable, the error names one and why, not "no images to fit on".
#[test]
fn no_readable_image_is_named() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("x");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    std::fs::write(dir.join("text.png"), b"not a png").unwrap();
    let out = tempfile::tempdir().unwrap();
    let skip = PackOptions { skip_bad: true, ..opts(8) };
    let e = pack::pack(src.path(), out.path(), &skip).unwrap_err().to_string();
    assert!(e.contains("none of the 2 images could be read for the tokenizer's fit"), "{e}");
    assert!(e.contains("empty.png"), "{e}");
}

/// With --skip-bad, an unreadable image of the fit's sample gives its place to the next readable one
/// (the fit keeps its size), which the held-out images then leave to it.
#[test]
fn an_unreadable_image_of_the_fit_is_replaced_by_its_neighbour() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("noise");
    write_noise(&dir, 10, 0, 4);
    std::fs::write(dir.join("0.png"), b"").unwrap();
    let out = tempfile::tempdir().unwrap();
    // the fit spreads over 0, 2, 4, 6, 8: 1 takes 0's place; the held-out images are the other readable
    // ones, 3, 5, 7 and 9 (without the fill: 1 too, and a fit of four)
    let skip = PackOptions { skip_bad: true, ..opts(5) };
    let (m, fit, notes) = pack::pack(&dir, out.path(), &skip).unwrap();
    assert_eq!((m.total_rows, notes.bad.len()), (9, 1));
    let fit = fit.unwrap();
    assert_eq!((fit.images, fit.held_out), (4, true), "{fit:?}");
    // two neighbours of the fit's sample unreadable: each place goes to a readable image outside it, the
    // fit keeps its 8 of the 10 readable images and 2 are held out (the first's place was lost: 3)
    let dir = src.path().join("twelve");
    write_noise(&dir, 12, 0, 5);
    // (the listing sorts by name: 0, 1, 10, 11, 2, …; the fit spreads over places 0, 1, 3, 4, 6, 7, 9, 10)
    std::fs::write(dir.join("0.png"), b"").unwrap();
    std::fs::write(dir.join("1.png"), b"").unwrap();
    let (m, fit, _) = pack::pack(&dir, out.path(), &PackOptions { skip_bad: true, ..opts(8) }).unwrap();
    let fit = fit.unwrap();
    assert_eq!((m.total_rows, fit.images, fit.held_out), (10, 2, true), "{fit:?}");
}

/// A thin strip is cropped to the template's aspect before it is resized, not scaled whole to cover it
/// first: a 1×200000 image packs in little memory (resizing first took 139 MiB more, measured).
#[test]
fn a_thin_strip_is_cropped_before_it_is_resized() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("strips");
    std::fs::create_dir_all(&dir).unwrap();
    let (w, h) = (1u32, 200_000u32);
    let grey: Vec<u8> = (0..h).map(|y| (y % 251) as u8).collect();
    image::save_buffer(dir.join("strip.png"), &grey, w, h, image::ColorType::L8).unwrap();
    write_noise(&dir, 2, 2, 3);
    let before = peak_rss_mib();
    let out = tempfile::tempdir().unwrap();
    let (m, _, _) = pack::pack(&dir, out.path(), &opts(3)).unwrap();
    assert_eq!(m.total_rows, 3);
    let grown = peak_rss_mib() - before;
    assert!(grown < 60.0, "the pack's peak memory grew by {grown:.0} MiB");
}

/// This process's peak resident memory, MiB.
fn peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_maxrss as f64 / 1024.0
}
