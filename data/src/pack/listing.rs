//! What a folder of images holds for packing: the classes (sub-folders, or the folder itself), each
//! image with its caption file (`NAME.txt`: UTF-8, or UTF-16 with a byte-order mark), and what is left
//! out and why (other files, nested folders, datasets kept among the images, captions of no image).

use std::path::{Path, PathBuf};

use super::{Entry, Listing, IMAGES_FILE};
use crate::error::{DataError, Result};
use crate::tokenizer::TOKENIZER_FILE;

impl Entry {
    /// The image `path` of class `label` in a folder whose files are `listed`, with its caption
    /// ([`caption_file`], [`read_caption`]).
    fn listed(path: PathBuf, label: i32, listed: &[PathBuf]) -> Result<Entry> {
        let caption_file = caption_file(&path, listed).cloned();
        let (caption, bad_caption) = match caption_file.as_deref().map(read_caption).transpose() {
            // (an empty caption file is no caption, as a metadata file's empty `long_caption`)
            Ok(caption) => (caption.filter(|c| !c.is_empty()), None),
            Err(DataError::Image { path: file, detail }) => (None, Some((file, detail))),
            Err(e) => return Err(e),
        };
        Ok(Entry { path, label, caption, caption_file, bad_caption, template: None, listed_at: None })
    }
}

/// The caption file of the image `image` among `listed` (its folder's files): `NAME.txt`, else `NAME`
/// with `txt` in other case (`NAME.TXT`, as some cameras and Windows tools write). Taken from the
/// listing, under the name it has: on a case-insensitive file system a lookup by name would find it
/// under any.
fn caption_file<'a>(image: &Path, listed: &'a [PathBuf]) -> Option<&'a PathBuf> {
    // (a folder named `NAME.txt` is a folder)
    let beside = |t: &&PathBuf| {
        t.file_stem() == image.file_stem()
            && t.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"))
            && !t.is_dir()
    };
    let exact = listed.iter().filter(beside).find(|t| t.extension().is_some_and(|e| e == "txt"));
    exact.or_else(|| listed.iter().find(beside))
}

/// The caption in `file`: UTF-8, or UTF-16 with its byte-order mark (what Windows Notepad saves as
/// "Unicode"); a byte-order mark is no part of it, nor are the blanks (or a C string's NULs) at its
/// ends. Any other encoding, and NULs within (UTF-16 without a byte-order mark reads as UTF-8 with
/// NULs), is a [`DataError::Image`] naming the file (a bad image, for `--skip-bad`).
fn read_caption(file: &Path) -> Result<String> {
    let bytes = std::fs::read(file).map_err(|e| DataError::io(file, e))?;
    let utf16 = |be: bool| {
        let units = bytes[2..].chunks(2).map(|c| match (be, c) {
            (true, [hi, lo]) => Ok(u16::from_be_bytes([*hi, *lo])),
            (false, [lo, hi]) => Ok(u16::from_le_bytes([*lo, *hi])),
            _ => Err(()), // (an odd byte count)
        });
        let units: std::result::Result<Vec<u16>, ()> = units.collect();
        units.ok().and_then(|u| String::from_utf16(&u).ok())
    };
    let text = match bytes.get(..2) {
        Some([0xff, 0xfe]) => utf16(false),
        Some([0xfe, 0xff]) => utf16(true),
        _ => String::from_utf8(bytes).ok(),
    };
    let bad = |detail: &str| DataError::Image { path: file.to_path_buf(), detail: detail.into() };
    let text =
        text.ok_or_else(|| bad("a caption that is neither UTF-8 nor UTF-16 with a byte-order mark: save it as UTF-8"))?;
    let text = text.trim_start_matches('\u{feff}').trim_matches(|c: char| c == '\0' || c.is_whitespace());
    match text.contains('\0') {
        true => {
            Err(bad("a caption with NUL characters (UTF-16 without a byte-order mark, or UTF-32?): save it as UTF-8"))
        }
        false => Ok(text.to_string()),
    }
}

/// Whether `p` is an image by its name (a folder named `x.png` is a folder).
fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("png" | "jpg" | "jpeg")
    ) && !p.is_dir()
}

/// What a folder holds for packing. Hidden entries (`.ipynb_checkpoints`, `.DS_Store`) are not looked
/// at (hidden images, `.x.png`, are listed as left out), nor is the folder `out` packs into (a dataset
/// inside its images' folder, packed again); `NAME.txt` files are captions.
pub(super) fn list_images(root: &Path, out: &Path) -> Result<Listing> {
    let out = out.canonicalize().ok();
    // (a dataset kept among the images is no class: the one packed into, or another)
    let is_dataset = |p: &Path| p.is_dir() && p.join(crate::manifest::MANIFEST_FILE).is_file();
    // (packed into the images' folder itself, its own files are not the images')
    let into_itself = out.is_some() && root.canonicalize().ok() == out;
    let own_files = |p: &Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        into_itself
            && (name.ends_with(".arrow")
                || [crate::manifest::MANIFEST_FILE, TOKENIZER_FILE, IMAGES_FILE].contains(&name.as_str()))
    };
    let read = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .filter(|p| out.is_none() || p.canonicalize().ok() != out)
            .collect();
        v.sort();
        Ok(v)
    };
    let is_caption = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) && !p.is_dir();
    // (`.x.png`: not packed, as hidden files are not, but said, as an image is that packing leaves out;
    // other hidden files, `.DS_Store`, are no one's images)
    let hidden_images = |dir: &Path| -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
        let hidden = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| hidden(p) && is_image(p)).collect();
        v.sort();
        v
    };
    let mut skipped = Vec::new();
    if let Some(out) = out.as_ref().filter(|o| o.parent() == root.canonicalize().ok().as_deref()) {
        // (a class folder packed into would be left out as the output, its class with it)
        let images = read(out)?.into_iter().filter(|p| is_image(p)).count();
        if images > 0 {
            return Err(DataError::Config(format!(
                "{}: the output folder is a class folder of {} holding {images} images, which packing into it \
                 would leave out, class and all: pack into a folder of its own",
                out.display(),
                root.display()
            )));
        }
    }
    let (datasets, top): (Vec<PathBuf>, Vec<PathBuf>) = read(root)?.into_iter().partition(|p| is_dataset(p));
    let top: Vec<PathBuf> = top.into_iter().filter(|p| !own_files(p)).collect();
    // (a link back to the folder or one above it, `self -> .`, is no class: its images are the others')
    let root_real = root.canonicalize().ok();
    let loops_back = |p: &PathBuf| {
        p.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink())
            && p.canonicalize().ok().zip(root_real.as_ref()).is_some_and(|(to, root)| root.starts_with(to))
    };
    let mut classes: Vec<PathBuf> = top.iter().filter(|p| p.is_dir() && !loops_back(p)).cloned().collect();
    skipped.extend(top.iter().filter(|p| loops_back(p)).cloned());
    let loose: Vec<PathBuf> = top.iter().filter(|p| is_image(p)).cloned().collect();
    let mut txt: Vec<PathBuf> = top.iter().filter(|p| is_caption(p)).cloned().collect();
    skipped.extend(top.iter().filter(|p| !p.is_dir() && !is_image(p) && !is_caption(p)).cloned());
    if !classes.is_empty() && !loose.is_empty() {
        // (folders without images beside the images, `thumbs/` emptied, are left out, listed)
        let (holding, empty): (Vec<PathBuf>, Vec<PathBuf>) =
            classes.into_iter().partition(|dir| images_below(dir, 16) > 0);
        if !holding.is_empty() {
            let shown: Vec<String> = holding.iter().take(3).map(|p| p.display().to_string()).collect();
            let more = if holding.len() > 3 { format!(" and {} more", holding.len() - 3) } else { String::new() };
            return Err(DataError::Config(format!(
                "{}: holds both loose images ({}{}) and sub-folders of images ({}{more}); put every image in a class \
                 folder, or use no folders",
                root.display(),
                loose[0].display(),
                if loose.len() > 1 { format!(" and {} more", loose.len() - 1) } else { String::new() },
                shown.join(", ")
            )));
        }
        skipped.extend(empty);
        classes = Vec::new();
    }
    if classes.is_empty() {
        skipped.extend(hidden_images(root));
    }
    let (mut entries, mut names, mut nested) = (Vec::new(), Vec::new(), Vec::new());
    if classes.is_empty() {
        names.push(folder_name(root));
        for p in loose {
            entries.push(Entry::listed(p, 0, &top)?);
        }
    } else {
        for (k, dir) in classes.iter().enumerate() {
            let name = dir.file_name().expect("a listed folder has a name");
            // (two names not in UTF-8 could read alike, `caf\xe9` and `caf\xe8` as `caf�`: two classes of one name)
            let name = name.to_str().ok_or_else(|| {
                DataError::Config(format!(
                    "{}: a class folder whose name is not UTF-8 (class names are stored as text): rename it",
                    dir.display()
                ))
            })?;
            names.push(name.to_string());
            let inside = read(dir)?;
            let images: Vec<PathBuf> = inside.iter().filter(|p| is_image(p)).cloned().collect();
            // (folders, not links to them: `self -> .` is no folder of images left out)
            let is_folder = |p: &&PathBuf| p.symlink_metadata().is_ok_and(|m| m.is_dir());
            let folders: Vec<(PathBuf, usize)> =
                inside.iter().filter(is_folder).map(|p| (p.clone(), images_below(p, 16))).collect();
            if images.is_empty() && folders.iter().any(|(_, n)| *n > 0) {
                let (first, n) = folders.iter().find(|(_, n)| *n > 0).expect("checked");
                let all_nested = classes.iter().all(|c| !read(c).is_ok_and(|v| v.iter().any(|p| is_image(p))));
                let fix = match all_nested {
                    // (one level too high: `train/` given, whose sub-folders are the classes)
                    true => format!("give --images {}", dir.display()),
                    false => format!("move them up into {}", dir.display()),
                };
                return Err(DataError::Config(format!(
                    "{}: a class folder without images of its own; its sub-folders hold them ({} in {}): classes \
                     are the folders right below --images, so {fix}",
                    dir.display(),
                    n,
                    first.display()
                )));
            }
            nested.extend(folders.into_iter().filter(|(_, n)| *n > 0));
            if images.is_empty() {
                // an empty folder would be a class that no sample has
                return Err(DataError::Config(format!(
                    "{}: a class folder without .png/.jpg/.jpeg images (class ids are the sorted folder \
                     names: remove it, or add images)",
                    dir.display()
                )));
            }
            txt.extend(inside.iter().filter(|p| is_caption(p)).cloned());
            skipped.extend(hidden_images(dir));
            // (folders of images are said with their count: `nested`)
            let holds_images = |p: &PathBuf| nested.iter().any(|(f, _): &(PathBuf, usize)| f == p);
            skipped.extend(inside.iter().filter(|p| !is_image(p) && !is_caption(p) && !holds_images(p)).cloned());
            for p in images {
                entries.push(Entry::listed(p, k as i32, &inside)?);
            }
        }
    }
    if entries.is_empty() {
        return Err(DataError::Config(format!("{}: no .png/.jpg/.jpeg images found", root.display())));
    }
    // (a caption's image is NAME.png, .jpg or .jpeg beside it: `x.png.txt` or `X.txt` for `x.png` is none;
    // `NAME.short.txt`, in any case, is the short caption tools/write_shards.py reads)
    let read: std::collections::HashSet<&PathBuf> = entries.iter().filter_map(|e| e.caption_file.as_ref()).collect();
    let lower = |p: &Path| p.to_string_lossy().to_lowercase();
    let images: std::collections::HashSet<String> = entries.iter().map(|e| lower(&e.path.with_extension(""))).collect();
    let short = |t: &PathBuf| lower(t).strip_suffix(".short.txt").is_some_and(|stem| images.contains(stem));
    let short_captions = txt.iter().filter(|t| short(t)).count();
    txt.retain(|t| !read.contains(t) && !short(t));
    // (what is left beside an image whose other caption file was read is a second caption, not an orphan)
    let captioned: std::collections::HashSet<PathBuf> = read.iter().map(|c| c.with_extension("")).collect();
    let (extra_captions, orphan_captions) = txt.into_iter().partition(|t| captioned.contains(&t.with_extension("")));
    let loose = classes.is_empty();
    Ok(Listing { entries, names, skipped, nested, datasets, orphan_captions, extra_captions, short_captions, loose })
}

/// The .png/.jpg/.jpeg images in `dir` and the folders below it, to `depth` levels (hidden ones not
/// looked at; links to folders not followed: `self -> .` would count the tree again and again).
fn images_below(dir: &Path, depth: usize) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let visible = rd.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.'));
    visible
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => images_below(&e.path(), depth - 1),
            Ok(t) if t.is_dir() => 0,
            _ => usize::from(is_image(&e.path())),
        })
        .sum()
}

/// The name of the one class of a folder without class sub-folders (`.` and `..` resolved).
pub(super) fn folder_name(root: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(root).or_else(|| root.canonicalize().ok().as_deref().and_then(named)).unwrap_or_else(|| "images".into())
}

impl Listing {
    /// Relabel the listing with the classes `names` (by id) of another dataset: each class folder must
    /// be one of them (named as found, so the ids match that dataset's).
    pub(super) fn take_classes(&mut self, root: &Path, names: &[String]) -> Result<()> {
        if self.loose {
            return Err(DataError::Config(format!(
                "{}: --classes-of takes class sub-folders, named as that dataset's classes; these images lie \
                 directly in the folder",
                root.display()
            )));
        }
        let mut ids = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let id = names.iter().position(|n| n == name).ok_or_else(|| {
                let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
                let more = if names.len() > 8 { format!(", … {} in all", names.len()) } else { String::new() };
                DataError::Config(format!(
                    "{}: a class folder that is none of --classes-of's classes ({}{more})",
                    root.join(name).display(),
                    shown.join(", ")
                ))
            })?;
            ids.push(id as i32);
        }
        for e in &mut self.entries {
            e.label = ids[e.label as usize];
        }
        self.names = names.to_vec();
        Ok(())
    }
}
