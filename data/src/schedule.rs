//! Scale schedules: the list of `(t, h, w)` token grids a sample is predicted over, coarse to fine.
//!
//! Upstream's templates (15 aspect ratios × 13 scales) live in `schedules/upstream.json` as data; a named
//! pixel budget (`0.06M`, `0.25M`, `0.60M`, `1M`, or the CPU demo budgets `demo4`, `demo5`) takes a
//! prefix of a template's list. A schedule is always stored in full in the dataset manifest, so a dataset
//! stays readable if these tables ever change.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// The most scales an Infinity transformer trains on: a scale's index picks its row of the model's
/// level embedding (upstream's `lvl_embed = Embedding(15, C)`). The format stores longer schedules;
/// `infinity data verify` warns of them and `infinity train` refuses them.
pub const MAX_MODEL_SCALES: usize = 15;

/// One schedule as it is stored in a manifest and used everywhere else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSchedule {
    /// `"{h_div_w_template}/{pixel_budget}"` for upstream schedules; any unique name for custom ones.
    pub name: String,
    /// The aspect-ratio template (upstream `h_div_w_template` key, e.g. `"1.000"`, `"0.666"`). Its `1M`
    /// schedule's last scale is the coordinate frame of 2-D RoPE.
    pub h_div_w_template: String,
    /// Upstream `pn` (e.g. `"0.06M"`) or a demo budget.
    pub pixel_budget: String,
    /// `[t, h, w]` per scale; `t` is 1 for images.
    pub scales: Vec<[u32; 3]>,
    /// The tokenizer's scales at twice the transformer's sides, a token being a 2×2 patch of them
    /// (upstream's `apply_spatial_patchify`, its 8B model): the scales start at 2×2 and every side is
    /// even. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spatial_patchify: bool,
}

impl ScaleSchedule {
    /// `(h, w)` per scale.
    pub fn hw(&self) -> Vec<(usize, usize)> {
        self.scales.iter().map(|s| (s[1] as usize, s[2] as usize)).collect()
    }

    /// `L`: tokens over all scales, including the 1×1 first scale.
    pub fn num_tokens(&self) -> usize {
        self.scales.iter().map(|s| s[0] as usize * s[1] as usize * s[2] as usize).sum()
    }

    /// The latent size `(H, W)`: the last scale.
    pub fn latent_hw(&self) -> (usize, usize) {
        let s = self.scales.last().expect("validated schedule is non-empty");
        (s[1] as usize, s[2] as usize)
    }

    /// This schedule with every side doubled, for a tokenizer whose tokens are 2×2 patched
    /// ([`ScaleSchedule::spatial_patchify`]).
    pub fn patchified(&self) -> ScaleSchedule {
        ScaleSchedule {
            name: format!("{}/patchify", self.name),
            scales: self.scales.iter().map(|&[t, h, w]| [t, 2 * h, 2 * w]).collect(),
            spatial_patchify: true,
            ..self.clone()
        }
    }

    /// Checks the invariants every consumer relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // a latent side in tokens (upstream's largest, 1M pixels, is 64; 4096 is 65k pixels at stride 16)
        const MAX_SIDE: u32 = 4096;
        if self.scales.is_empty() {
            return Err(format!("schedule `{}` has no scales", self.name));
        }
        let first = if self.spatial_patchify { [1, 2, 2] } else { [1, 1, 1] };
        if self.scales[0] != first {
            return Err(format!("schedule `{}` must start with {first:?}, found {:?}", self.name, self.scales[0]));
        }
        if let Some(s) = self.scales.iter().find(|s| self.spatial_patchify && (s[1] % 2 == 1 || s[2] % 2 == 1)) {
            return Err(format!("schedule `{}` (spatial_patchify) has a scale {s:?} of an odd side", self.name));
        }
        for (i, s) in self.scales.iter().enumerate() {
            if s[0] != 1 || !(1..=MAX_SIDE).contains(&s[1]) || !(1..=MAX_SIDE).contains(&s[2]) {
                return Err(format!(
                    "schedule `{}` scale {i}: expected [1, h, w] with h and w in 1..={MAX_SIDE}, found {s:?}",
                    self.name
                ));
            }
        }
        let (hh, ww) = self.latent_hw();
        if let Some(s) = self.scales.iter().find(|s| s[1] as usize > hh || s[2] as usize > ww) {
            return Err(format!("schedule `{}`: scale {s:?} is larger than the last scale ({hh}×{ww})", self.name));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct CatalogFile {
    vae_stride: u32,
    pixel_budgets: std::collections::BTreeMap<String, usize>,
    templates: Vec<TemplateFile>,
}

#[derive(Deserialize)]
struct TemplateFile {
    h_div_w: String,
    scales: Vec<[u32; 2]>,
}

/// Upstream's aspect-ratio templates and pixel budgets.
pub struct Catalog {
    pub vae_stride: u32,
    budgets: Vec<(String, usize)>,
    templates: Vec<(String, f64, Vec<[u32; 2]>)>,
}

static CATALOG: OnceLock<Catalog> = OnceLock::new();

impl Catalog {
    /// The tables in `schedules/upstream.json`, parsed once.
    pub fn upstream() -> &'static Catalog {
        CATALOG.get_or_init(|| {
            let file: CatalogFile = serde_json::from_str(include_str!("../schedules/upstream.json"))
                .expect("schedules/upstream.json is part of the build and is valid");
            let mut budgets: Vec<_> = file.pixel_budgets.into_iter().collect();
            budgets.sort_by_key(|(_, n)| *n);
            let templates = file
                .templates
                .into_iter()
                .map(|t| {
                    let ratio = t.h_div_w.parse::<f64>().expect("template keys are numbers");
                    (t.h_div_w, ratio, t.scales)
                })
                .collect();
            Catalog { vae_stride: file.vae_stride, budgets, templates }
        })
    }

    /// Template keys in ascending order of h/w.
    pub fn template_names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|t| t.0.as_str())
    }

    /// Pixel budget names with their number of scales.
    pub fn budgets(&self) -> &[(String, usize)] {
        &self.budgets
    }

    /// The template whose h/w is nearest to `h_div_w` (upstream `get_h_div_w_template2indices`).
    pub fn nearest_template(&self, h_div_w: f64) -> &str {
        let mut best = &self.templates[0];
        for t in &self.templates {
            if (t.1 - h_div_w).abs() < (best.1 - h_div_w).abs() {
                best = t;
            }
        }
        &best.0
    }

    /// The upstream key `template` stands for when it is another spelling of one (`"1.0"`, `"0.50"`):
    /// `None` for an upstream key itself and for a custom template equal to none. A schedule must use
    /// the upstream spelling, since the RoPE frame is looked up by the key.
    pub fn respelled_template(&self, template: &str) -> Option<&str> {
        if self.templates.iter().any(|t| t.0 == template) {
            return None;
        }
        let ratio = template.trim().parse::<f64>().ok()?;
        self.templates.iter().find(|t| t.1 == ratio).map(|t| t.0.as_str())
    }

    /// The catalog's name of `template`: itself, or the upstream key it is another spelling of (`0.5`
    /// for `0.500`); `None` for no template of the catalog.
    pub fn template_name(&self, template: &str) -> Option<&str> {
        let exact = self.templates.iter().find(|t| t.0 == template).map(|t| t.0.as_str());
        exact.or_else(|| self.respelled_template(template))
    }

    /// The schedule of `template` at `budget` (another spelling of a template, `0.5`, is taken as the
    /// catalog's, `0.500`, which the schedule carries).
    pub fn schedule(&self, template: &str, budget: &str) -> Result<ScaleSchedule> {
        let template = self.template_name(template).unwrap_or(template);
        let t = self.templates.iter().find(|t| t.0 == template).ok_or_else(|| {
            let names: Vec<_> = self.template_names().collect();
            DataError::Config(format!("unknown aspect-ratio template `{template}`; expected one of {names:?}"))
        })?;
        let n = self.budgets.iter().find(|b| b.0 == budget).map(|b| b.1).ok_or_else(|| {
            let names: Vec<_> = self.budgets.iter().map(|b| b.0.as_str()).collect();
            DataError::Config(format!("unknown pixel budget `{budget}`; expected one of {names:?}"))
        })?;
        Ok(ScaleSchedule {
            name: format!("{template}/{budget}"),
            h_div_w_template: template.to_string(),
            pixel_budget: budget.to_string(),
            scales: t.2[..n].iter().map(|&[h, w]| [1, h, w]).collect(),
            spatial_patchify: false,
        })
    }

    /// The RoPE coordinate frame of a template: the last scale of its `1M` schedule.
    pub fn rope_frame(&self, template: &str) -> Result<(usize, usize)> {
        Ok(self.schedule(template, "1M")?.latent_hw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_templates_and_upstream_token_counts() {
        let c = Catalog::upstream();
        assert_eq!(c.template_names().count(), 15);
        // L per template and budget, from the reference tables (infinity-reference.md §1.10).
        for (t, b, l) in [
            ("1.000", "0.06M", 521),
            ("1.000", "0.25M", 2521),
            ("1.000", "0.60M", 6425),
            ("1.000", "1M", 10521),
            ("0.500", "0.06M", 451),
            ("2.000", "0.25M", 2681),
            ("0.750", "0.60M", 7085),
            ("1.333", "1M", 10973),
            ("0.333", "0.06M", 509),
            ("3.000", "1M", 11123),
        ] {
            let s = c.schedule(t, b).unwrap();
            s.validate().unwrap();
            assert_eq!(s.num_tokens(), l, "{t}/{b}");
        }
        assert_eq!(c.rope_frame("1.000").unwrap(), (64, 64));
        assert_eq!(c.rope_frame("0.666").unwrap(), (52, 78));
    }

    #[test]
    fn every_template_keeps_its_aspect_ratio_at_every_budget() {
        let c = Catalog::upstream();
        for t in c.template_names() {
            let ratio: f64 = t.parse().unwrap();
            for (b, _) in c.budgets().iter().filter(|(b, _)| !b.starts_with("demo")) {
                let (h, w) = c.schedule(t, b).unwrap().latent_hw();
                assert!((h as f64 / w as f64 - ratio).abs() < 0.01, "{t}/{b}: {h}×{w}");
            }
        }
    }

    #[test]
    fn patchified_schedules_double_every_side() {
        let s = Catalog::upstream().schedule("0.666", "demo5").unwrap().patchified();
        s.validate().unwrap();
        assert_eq!((s.scales[0], s.name.as_str()), ([1, 2, 2], "0.666/demo5/patchify"));
        let base = Catalog::upstream().schedule("0.666", "demo5").unwrap();
        assert_eq!(s.num_tokens(), 4 * base.num_tokens());
        let odd = ScaleSchedule { scales: vec![[1, 2, 2], [1, 3, 4]], ..s.clone() };
        assert!(odd.validate().unwrap_err().contains("odd side"));
        let plain = ScaleSchedule { spatial_patchify: false, ..s };
        assert!(plain.validate().unwrap_err().contains("must start with [1, 1, 1]"));
    }

    #[test]
    fn nearest_template_and_unknown_names() {
        let c = Catalog::upstream();
        assert_eq!(c.nearest_template(1.02), "1.000");
        assert_eq!(c.nearest_template(0.68), "0.666");
        assert_eq!(c.nearest_template(9.0), "3.000");
        let e = c.schedule("1.1", "1M").unwrap_err().to_string();
        assert!(e.contains("unknown aspect-ratio template `1.1`"), "{e}");
        let e = c.schedule("1.000", "2M").unwrap_err().to_string();
        assert!(e.contains("unknown pixel budget `2M`"), "{e}");
    }

    #[test]
    fn another_spelling_of_an_upstream_template_is_found() {
        let c = Catalog::upstream();
        for (t, want) in
            [("1.0", Some("1.000")), ("0.5", Some("0.500")), (" 2 ", Some("2.000")), ("0.6660", Some("0.666"))]
        {
            assert_eq!(c.respelled_template(t), want, "{t:?}");
        }
        for t in ["1.000", "0.500", "0.667", "1.1", "square", ""] {
            assert_eq!(c.respelled_template(t), None, "{t:?}");
        }
        // a schedule asked for by another spelling carries the catalog's
        let s = c.schedule("0.5", "demo5").unwrap();
        assert_eq!((s.name.as_str(), s.h_div_w_template.as_str()), ("0.500/demo5", "0.500"));
    }
}
