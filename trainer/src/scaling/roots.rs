//! The folders of run folders an analysis reads: one sweep's `out`, or several (a probe and the sweep
//! it led to, the smaller models an IsoFLOP profile asked for, sweeps run on two clusters). With more
//! than one, each run is named after its folder too (`iso-probe/d1-w40`), so that runs of the same name
//! in two sweeps stay apart in the tables, figures and notes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A folder of run folders and the prefix of its runs' names ("" when it is the only one).
pub struct Root {
    pub dir: PathBuf,
    prefix: String,
}

impl Root {
    /// The name of the run in `run_dir` (a folder directly under this root).
    pub fn name(&self, run_dir: &Path) -> String {
        let own = run_dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
        format!("{}{own}", self.prefix)
    }
}

/// The roots of `dirs`, in the order given. Each is read once (a folder given twice, by any path, is an
/// error), and the prefixes are the folders' own names, or the paths as given where two share a name.
pub fn roots<P: AsRef<Path>>(dirs: &[P]) -> Result<Vec<Root>> {
    if dirs.is_empty() {
        bail!("no folder of run folders given");
    }
    let mut seen: Vec<(PathBuf, &Path)> = Vec::new();
    for d in dirs.iter().map(AsRef::as_ref) {
        let real = d.canonicalize().with_context(|| format!("reading {}", d.display()))?;
        if let Some((_, first)) = seen.iter().find(|(r, _)| *r == real) {
            bail!("{} and {} are the same folder: give it once", first.display(), d.display());
        }
        seen.push((real, d));
    }
    let own = |d: &Path, real: &Path| {
        real.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned())
    };
    let owns: Vec<String> = seen.iter().map(|(real, d)| own(d, real)).collect();
    Ok(seen
        .iter()
        .zip(&owns)
        .map(|((_, d), name)| {
            let prefix = match dirs.len() {
                1 => String::new(),
                // (the path as given, its `.` and doubled or trailing slashes dropped)
                _ if owns.iter().filter(|o| *o == name).count() > 1 => {
                    format!("{}/", d.components().collect::<PathBuf>().display())
                }
                _ => format!("{name}/"),
            };
            Root { dir: d.to_path_buf(), prefix }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_roots_name_their_runs_after_their_folders() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["probe", "main", "a/sweep", "b/sweep"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let p = |d: &str| tmp.path().join(d);
        let one = roots(&[p("probe")]).unwrap();
        assert_eq!(one[0].name(&p("probe/w64")), "w64");
        let two = roots(&[p("probe"), p("main")]).unwrap();
        assert_eq!(two[0].name(&p("probe/w64")), "probe/w64");
        assert_eq!(two[1].name(&p("main/w64")), "main/w64");
        // two folders of one name: their paths as given tell them apart
        let same = roots(&[p("a/sweep/"), p("b/./sweep"), p("main")]).unwrap();
        assert_eq!(same[0].name(&p("a/sweep/w64")), format!("{}/w64", p("a/sweep").display()));
        assert_eq!(same[1].name(&p("b/sweep/w64")), format!("{}/w64", p("b/sweep").display()));
        assert_eq!(same[2].name(&p("main/w64")), "main/w64");
    }

    #[test]
    fn a_folder_given_twice_or_missing_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("s")).unwrap();
        let e = roots(&[tmp.path().join("s"), tmp.path().join("s/../s")]).err().unwrap().to_string();
        assert!(e.contains("are the same folder: give it once"), "{e}");
        let e = format!("{:#}", roots(&[tmp.path().join("gone")]).err().unwrap());
        assert!(e.contains("gone") && e.contains("reading"), "{e}");
    }
}
