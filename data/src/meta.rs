//! Upstream's metadata files: the folder `infinity data pack --meta` reads (upstream's
//! `dataset_t2i_iterable.py` format; ../shared/docs/infinity-reference.md §4.6).
//!
//! Each file is named `<h_div_w_template>_<count>.jsonl` (`1.000_000002500.jsonl`): its images are
//! resized to that aspect-ratio template, and `count` must equal its number of lines (upstream's
//! issue #70: a wrong count breaks its sharding). Each line is one JSON object:
//!
//! ```json
//! {"image_path": "…", "h_div_w": 1.0, "long_caption": "…", "long_caption_type": "…", "text": "…"}
//! ```
//!
//! `image_path` and `long_caption` are required; `text` (the short caption) is optional; the other keys
//! are not read. A relative `image_path` is taken from the metadata folder (upstream opens it from the
//! folder it runs in; absolute paths read the same in both). Sub-folders (upstream's `*_parts` splits)
//! and hidden files are not read.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::schedule::Catalog;

/// One line of a metadata file.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaRow {
    pub image: PathBuf,
    /// The aspect-ratio template of the file's name, spelled as the catalog spells it.
    pub template: String,
    /// `long_caption`.
    pub caption: String,
    /// `text`, where the line has a non-empty one.
    pub short_caption: Option<String>,
    /// The file and line that list it (`…/1.000_000000002.jsonl line 2`), for errors about its image.
    pub listed_at: String,
}

/// What [`read_meta`] found.
#[derive(Debug)]
pub struct MetaListing {
    /// Every line of every file, files in name order.
    pub rows: Vec<MetaRow>,
    /// Files that are not metadata (not `.jsonl`).
    pub skipped: Vec<PathBuf>,
}

/// The template and line count of a metadata file's name, or what is wrong with it.
fn parse_name(path: &Path) -> std::result::Result<(String, usize), String> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let expected = "expected <h_div_w_template>_<count>.jsonl, e.g. 1.000_000002500.jsonl";
    let (template, count) = stem.rsplit_once('_').ok_or_else(|| expected.to_string())?;
    let count = Some(count)
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<usize>().ok())
        .ok_or_else(|| format!("`{count}` is not a line count: {expected}"))?;
    let catalog = Catalog::upstream();
    let template = catalog.template_name(template).ok_or_else(|| {
        let names: Vec<_> = catalog.template_names().collect();
        format!("`{template}` is not an aspect-ratio template: expected one of {names:?}")
    })?;
    Ok((template.to_string(), count))
}

/// One line's row; `Err` says what is wrong with it.
fn parse_line(line: &str, dir: &Path, template: &str) -> std::result::Result<MetaRow, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let string = |key: &str| -> std::result::Result<Option<&str>, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("`{key}` is {other}, expected a string")),
        }
    };
    let image = string("image_path")?.filter(|s| !s.is_empty()).ok_or("no `image_path`")?;
    let caption = string("long_caption")?.ok_or("no `long_caption`")?;
    let short_caption = string("text")?.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let (image, template, caption) = (dir.join(image), template.into(), caption.trim().into());
    Ok(MetaRow { image, template, caption, short_caption, listed_at: String::new() })
}

/// Every row of the metadata files in `dir`; the first problem is an error naming the file and line.
pub fn read_meta(dir: &Path) -> Result<MetaListing> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) && !p.is_dir())
        .collect();
    files.sort();
    let (files, skipped): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|p| p.extension().is_some_and(|e| e == "jsonl"));
    if files.is_empty() {
        return Err(DataError::Config(format!(
            "{}: no metadata files (<h_div_w_template>_<count>.jsonl, upstream's format)",
            dir.display()
        )));
    }
    let mut rows = Vec::new();
    for file in &files {
        let bad = |what: String| DataError::Config(format!("{}: {what}", file.display()));
        let (template, count) = parse_name(file).map_err(bad)?;
        let text = std::fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let listed_at = format!("{} line {}", file.display(), i + 1);
            let row =
                parse_line(line, dir, &template).map_err(|what| DataError::Config(format!("{listed_at}: {what}")))?;
            rows.push(MetaRow { listed_at, ..row });
        }
        if lines.len() != count {
            return Err(bad(format!(
                "the name says {count} lines, the file has {} (upstream's loader needs them equal: rename it)",
                lines.len()
            )));
        }
    }
    if rows.is_empty() {
        let names: Vec<String> =
            files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into()).collect();
        let list = if names.len() == 1 { "lists" } else { "list" };
        return Err(DataError::Config(format!(
            "{}: {} {list} no images: expected lines with image_path and long_caption",
            dir.display(),
            names.join(", ")
        )));
    }
    Ok(MetaListing { rows, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[&str]) {
        std::fs::write(dir.join(name), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn metadata_files_listing_no_image_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "1.000_0.jsonl", &[]);
        let e = read_meta(dir.path()).expect_err("nothing to pack").to_string();
        assert!(e.contains(": 1.000_0.jsonl lists no images"), "{e}");
    }

    #[test]
    fn rows_in_file_order_with_templates_from_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let line = |img: &str, extra: &str| {
            format!(r#"{{"image_path": "{img}", "long_caption": " a cat ", "h_div_w": 1.0{extra}}}"#)
        };
        write(
            dir.path(),
            "1.000_000000002.jsonl",
            &[&line("a.png", r#", "text": "cat""#), &line("/abs/b.jpg", r#", "text": " ""#)],
        );
        write(dir.path(), "0.5_000000001.jsonl", &[&line("c.png", r#", "long_caption_type": "x""#)]);
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        std::fs::create_dir(dir.path().join("0000_parts")).unwrap();
        let m = read_meta(dir.path()).unwrap();
        let got: Vec<_> =
            m.rows.iter().map(|r| (r.image.clone(), r.template.as_str(), r.short_caption.as_deref())).collect();
        assert_eq!(
            got,
            [
                (dir.path().join("c.png"), "0.500", None),
                (dir.path().join("a.png"), "1.000", Some("cat")),
                (PathBuf::from("/abs/b.jpg"), "1.000", None),
            ]
        );
        assert!(m.rows.iter().all(|r| r.caption == "a cat"));
        assert_eq!(m.skipped, [dir.path().join("README.md")]);
    }

    #[test]
    fn bad_files_and_lines_are_named() {
        let case = |name: &str, lines: &[&str]| {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), name, lines);
            read_meta(dir.path()).unwrap_err().to_string()
        };
        let ok = r#"{"image_path": "a.png", "long_caption": "x"}"#;
        let e = case("1.000_000000003.jsonl", &[ok, ok]);
        assert!(e.contains("1.000_000000003.jsonl: the name says 3 lines, the file has 2"), "{e}");
        let e = case("1.000.jsonl", &[ok]);
        assert!(e.contains("expected <h_div_w_template>_<count>.jsonl"), "{e}");
        let e = case("0.9_1.jsonl", &[ok]);
        assert!(e.contains("`0.9` is not an aspect-ratio template"), "{e}");
        let e = case("1.000_2.jsonl", &[ok, "{not json"]);
        assert!(e.contains("1.000_2.jsonl line 2: not JSON"), "{e}");
        let e = case("1.000_1.jsonl", &[r#"{"image_path": "a.png"}"#]);
        assert!(e.contains("line 1: no `long_caption`"), "{e}");
        let e = case("1.000_1.jsonl", &[r#"{"image_path": 3, "long_caption": "x"}"#]);
        assert!(e.contains("line 1: `image_path` is 3, expected a string"), "{e}");
        let e = case("1.000_2.jsonl", &[ok, ""]);
        assert!(e.contains("line 2: not JSON"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_meta(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no metadata files"), "{e}");
    }
}
