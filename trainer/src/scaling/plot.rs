//! The scaling figures, each as PNG and SVG (plotters): loss against compute (log x, linear y: losses
//! span too little for log ticks) with the fitted laws, the validation-loss curve of every run
//! against the compute it had used, and (learning-rate sweeps) loss against the learning rate. Ticks
//! and their labels: `ticks`.
//!
//! Text needs a TrueType font: `INFINITY_FONT=path.ttf`, else DejaVu Sans or Liberation Sans from the
//! usual system folders (Debian/Ubuntu: `apt-get install fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::fit::Fit;
use super::isoflop::IsoFlop;
use super::legend::{self, Sample, PANEL_WIDTH};
use super::lr::LrGroup;
use super::points::Point;
use super::ticks::{decimals, log_ticks, sci};
use super::{Correlations, RunRecord};

/// A figure: the chart's 960 × 640 and the legend panel beside it.
const SIZE: (u32, u32) = (960 + PANEL_WIDTH, 640);
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Register a font for plotters' "sans-serif" once per process.
fn font() -> Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("INFINITY_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.map(PathBuf::from))
            .collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            "no TrueType font found for the plots: set INFINITY_FONT=path.ttf or install fonts-dejavu-core".to_string()
        })?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(path).map_err(|e| e.to_string())?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A figure drawable on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;

    /// Its height in pixels: [`SIZE`]'s, or more for a legend of many entries.
    fn height(&self) -> u32 {
        SIZE.1
    }
}

/// Write `stem.svg` and `stem.png` in `dir`.
fn both(dir: &Path, stem: &str, fig: &impl Figure) -> Result<()> {
    font()?;
    let size = (SIZE.0, fig.height().max(SIZE.1));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e:?}", svg.display()))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e:?}", png.display()))?;
    }
    let img = image::RgbImage::from_raw(size.0, size.1, buf).context("plot buffer size")?;
    img.save(&png).with_context(|| format!("writing {}", png.display()))
}

/// 65 points from `lo` to `hi`, evenly spaced in log: a smooth curve on a log axis.
fn log_grid(lo: f64, hi: f64) -> impl Iterator<Item = f64> {
    let (lo, hi) = (lo.ln(), hi.ln());
    (0..=64).map(move |k| (lo + (hi - lo) * k as f64 / 64.0).exp())
}

fn range_log(v: impl Iterator<Item = f64>) -> Result<std::ops::Range<f64>> {
    let (lo, hi) = v.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if !(lo > 0.0 && hi.is_finite()) {
        bail!("nothing positive to plot");
    }
    Ok(lo / 1.3..hi * 1.3)
}

/// A linear axis range around the values with 8 % margins (losses span too little for log ticks).
fn range_lin(v: impl Iterator<Item = f64>) -> Result<std::ops::Range<f64>> {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if !(lo.is_finite() && hi.is_finite()) {
        bail!("nothing to plot");
    }
    let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1e-9));
    Ok(lo - pad..hi + pad)
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plotting: {err:?}")
}

type LogLin = Cartesian2d<WithKeyPoints<LogCoord<f64>>, RangedCoordf64>;

/// The chart's area (960 wide, at the top left) and the legend's panel beside it, as tall as the
/// figure. A tall legend makes the chart taller up to 1.6 × its 640 px, not beyond: a sweep of hundreds
/// of runs would stretch it thin.
fn chart_and_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    root.fill(&WHITE).ok();
    let (left, panel) = root.split_horizontally(SIZE.0 - PANEL_WIDTH);
    let height = left.dim_in_pixel().1.min(SIZE.1 * 8 / 5);
    (left.split_vertically(height).0, panel)
}

/// A white canvas with a titled chart: log compute on x (ticks at 1-2-5 values, at least 2), linear
/// loss on y (labels with the decimals its range needs), labelled axes.
fn chart<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
    (xdesc, ydesc): (&str, &str),
    xr: &std::ops::Range<f64>,
    yr: &std::ops::Range<f64>,
) -> Result<ChartContext<'b, DB, LogLin>>
where
    'a: 'b,
{
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(xr.clone().log_scale().with_key_points(log_ticks(xr.start, xr.end)), yr.clone())
        .map_err(e)?;
    let places = decimals(yr.end - yr.start);
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .x_label_formatter(&|x| sci(*x))
        .y_label_formatter(&|y| format!("{y:.places$}"))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// A fitted law to draw: its fit (for the legend) and `L(C)`.
pub type Curve<'a> = (&'a Fit, Box<dyn Fn(f64) -> f64 + 'a>);

struct LossVsCompute<'a> {
    points: &'a [Point],
    fits: &'a [Curve<'a>],
    r: &'a Correlations,
    xr: std::ops::Range<f64>,
    yr: std::ops::Range<f64>,
}

impl Figure for LossVsCompute<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let r = |(r, n): (f64, usize)| match r.is_finite() {
            true => format!("{r:.3} ({n})"),
            false => "–".to_string(),
        };
        let caption = format!(
            "loss vs training compute (Pearson r of the logs: all points {}, frontier {})",
            r(self.r.all),
            r(self.r.frontier)
        );
        let axes = (
            "compute C (FLOPs: 6·N·D + attention)",
            "loss (nats per bit; a point: a config's mean, bars ±1 std of its runs)",
        );
        let (plot, panel) = chart_and_panel(root);
        let mut chart = chart(&plot, &caption, axes, &self.xr, &self.yr)?;
        let mut keys = Vec::new();
        // a config run more than once: its runs' spread
        let bars = self.points.iter().filter_map(|p| {
            let (x, lo, hi) = (p.compute, p.loss - p.std?, p.loss + p.std?);
            let (l, r) = (x / 1.02, x * 1.02);
            let path = vec![(l, lo), (r, lo), (x, lo), (x, hi), (l, hi), (r, hi)];
            Some(PathElement::new(path, BLACK.stroke_width(1)))
        });
        chart.draw_series(bars).map_err(e)?;
        let frontier =
            self.points.iter().filter(|p| p.on_frontier).map(|p| Circle::new((p.compute, p.loss), 5, BLUE.filled()));
        chart.draw_series(frontier).map_err(e)?;
        keys.push((
            "points on the compute frontier (fitted)".into(),
            Sample::Dot { colour: BLUE.into(), filled: true },
        ));
        if self.points.iter().any(|p| !p.on_frontier) {
            let grey = RGBColor(120, 120, 120);
            let above = self
                .points
                .iter()
                .filter(|p| !p.on_frontier)
                .map(move |p| Circle::new((p.compute, p.loss), 5, grey.stroke_width(2)));
            chart.draw_series(above).map_err(e)?;
            keys.push((
                "points above the frontier (not in L(C))".into(),
                Sample::Dot { colour: grey.into(), filled: false },
            ));
        }
        for (i, (fit, f)) in self.fits.iter().enumerate() {
            let colour = legend::colour(i + 1);
            let line: Vec<(f64, f64)> = log_grid(self.xr.start, self.xr.end)
                .map(|x| (x, f(x)))
                // (a point beyond the frame is drawn at its edge: the part of the law outside is left out)
                .filter(|(_, y)| y.is_finite() && *y > 0.0 && self.yr.contains(y))
                .collect();
            chart.draw_series(LineSeries::new(line, colour.stroke_width(2))).map_err(e)?;
            keys.push((fit_key(fit.formula, &fit.coefs), Sample::Line { colour, dashed: false, dot: false }));
        }
        legend::draw(&panel, &keys)
    }
}

/// Loss against compute: the fitted points (filled on the compute frontier, where the `L(C)` laws
/// were fitted, hollow above it; a config run more than once with its runs' spread) and the fitted
/// laws as lines.
pub fn loss_vs_compute(dir: &Path, points: &[Point], fits: &[Curve], r: &Correlations) -> Result<()> {
    let xr = range_log(points.iter().map(|p| p.compute))?;
    let yr = range_lin(points.iter().flat_map(|p| {
        let sd = p.std.unwrap_or(0.0);
        [p.loss - sd, p.loss + sd]
    }))?;
    both(dir, "loss_vs_compute", &LossVsCompute { points, fits, r, xr, yr })
}

/// Named lines over a log x axis.
struct Curves {
    caption: String,
    axes: (&'static str, &'static str),
    series: Series,
    xr: std::ops::Range<f64>,
    yr: std::ops::Range<f64>,
}

/// How a series is drawn: its palette index, its line, and what marks its points.
#[derive(Clone, Copy)]
struct Look {
    colour: usize,
    line: Stroke,
    mark: Mark,
}

#[derive(Clone, Copy, PartialEq)]
enum Stroke {
    Solid,
    Dashed,
    /// Marks only.
    None,
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    None,
    Dot,
    Cross,
}

impl Look {
    fn line(colour: usize, dashed: bool) -> Look {
        Look { colour, line: if dashed { Stroke::Dashed } else { Stroke::Solid }, mark: Mark::None }
    }

    /// The `i`-th of many lines: the colours solid, then dashed, then solid with dots, then dashed with
    /// dots (repeating after four rounds).
    fn nth(i: usize) -> Look {
        let round = i / legend::COLOURS % 4;
        Look { mark: if round >= 2 { Mark::Dot } else { Mark::None }, ..Look::line(i, round % 2 == 1) }
    }
}

/// A series: its legend (empty: none), its segments (the parts inside the frame), and its look.
type Series = Vec<(String, Vec<Vec<(f64, f64)>>, Look)>;

impl Curves {
    /// `yr`: the y range (`None`: around every point).
    fn new(
        caption: String,
        axes: (&'static str, &'static str),
        series: Series,
        yr: Option<std::ops::Range<f64>>,
    ) -> Result<Curves> {
        let points = || series.iter().flat_map(|s| s.1.iter().flatten());
        let xr = range_log(points().map(|p| p.0))?;
        let yr = match yr {
            Some(r) => r,
            None => range_lin(points().map(|p| p.1))?,
        };
        Ok(Curves { caption, axes, series, xr, yr })
    }
}

impl Figure for Curves {
    fn height(&self) -> u32 {
        legend::height(self.series.iter().filter(|s| !s.0.is_empty()).map(|s| s.0.as_str()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (plot, panel) = chart_and_panel(root);
        let mut chart = chart(&plot, &self.caption, self.axes, &self.xr, &self.yr)?;
        let mut keys = Vec::new();
        for (name, segments, look) in &self.series {
            let colour = legend::colour(look.colour);
            let (line, mark) = (look.line, look.mark);
            for pts in segments {
                let dots = || pts.iter().map(|&p| Circle::new(p, 4, colour.filled()));
                let crosses = || pts.iter().map(|&p| Cross::new(p, 8, colour.stroke_width(3)));
                match (line, mark) {
                    (Stroke::Dashed, _) => {
                        chart
                            .draw_series(DashedLineSeries::new(pts.clone(), 8, 6, colour.stroke_width(2)))
                            .map_err(e)?;
                    }
                    (Stroke::Solid, _) => {
                        chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2))).map_err(e)?;
                    }
                    (Stroke::None, Mark::Cross) => drop(chart.draw_series(crosses()).map_err(e)?),
                    (Stroke::None, _) => drop(chart.draw_series(dots()).map_err(e)?),
                }
                match (line, mark) {
                    // (a line through one point draws nothing: a run validated once, at its end)
                    (Stroke::Solid | Stroke::Dashed, Mark::None) if pts.len() == 1 => {
                        chart.draw_series(dots()).map_err(e)?;
                    }
                    (Stroke::None, _) | (_, Mark::None) => {}
                    (_, Mark::Dot) => drop(chart.draw_series(dots()).map_err(e)?),
                    (_, Mark::Cross) => drop(chart.draw_series(crosses()).map_err(e)?),
                }
            }
            if !name.is_empty() {
                let sample = match (line, mark) {
                    (Stroke::None, Mark::Cross) => Sample::Cross { colour },
                    (Stroke::None, _) => Sample::Dot { colour, filled: true },
                    (_, mark) => Sample::Line { colour, dashed: line == Stroke::Dashed, dot: mark == Mark::Dot },
                };
                keys.push((name.clone(), sample));
            }
        }
        legend::draw(&panel, &keys)
    }
}

/// The runs of `points` inside `yr`: a curve that leaves it is drawn in pieces, up to where it leaves.
fn inside(points: &[(f64, f64)], yr: &std::ops::Range<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![];
    let mut open = false;
    for &p in points {
        match (yr.contains(&p.1), open) {
            (true, true) => out.last_mut().expect("open").push(p),
            (true, false) => out.push(vec![p]),
            (false, _) => {}
        }
        open = yr.contains(&p.1);
    }
    out
}

/// The loss curve of every run against the compute it had used (non-finite values left out). The y
/// range is that of the runs that did not diverge (a diverging run's loss can reach 1e17, which would
/// flatten every other curve); the diverged runs' curves are drawn up to where they leave it, as the
/// title says. False, and nothing written, when no run has logged a finite loss yet.
pub fn curves(dir: &Path, runs: &[RunRecord]) -> Result<bool> {
    let diverged = RunRecord::ended_diverged;
    let points = |r: &RunRecord| -> Vec<(f64, f64)> {
        let curve = if r.val_curve.is_empty() { &r.train_curve } else { &r.val_curve };
        curve.iter().filter(|(s, l)| *s > 0 && l.is_finite()).map(|(s, l)| (r.compute_at(*s), *l)).collect()
    };
    // (palette index, run, its points)
    type Drawn<'a> = (usize, &'a RunRecord, Vec<(f64, f64)>);
    let all: Vec<Drawn> =
        runs.iter().enumerate().map(|(i, r)| (i, r, points(r))).filter(|(_, _, p)| !p.is_empty()).collect();
    if all.is_empty() {
        return Ok(false);
    }
    let sane: Vec<f64> =
        all.iter().filter(|(_, r, _)| !diverged(r)).flat_map(|(_, _, p)| p.iter().map(|p| p.1)).collect();
    let yr = match sane.is_empty() {
        true => range_lin(all.iter().flat_map(|(_, _, p)| p.iter().map(|p| p.1)))?,
        false => range_lin(sane.into_iter())?,
    };
    let mut clipped = false;
    let series: Series = all
        .iter()
        .map(|(i, r, p)| {
            let segments = inside(p, &yr);
            clipped |= segments.iter().map(Vec::len).sum::<usize>() < p.len();
            (r.name.clone(), segments, Look::nth(*i))
        })
        .filter(|(_, segments, _)| !segments.is_empty())
        .collect();
    let mut caption = match clipped {
        true => "loss curves per run (y range: the runs that did not diverge; diverged runs leave it)",
        false => "loss curves per run",
    }
    .to_string();
    // (a run that diverged at once has no point in the frame, and no legend entry: named here)
    let off: Vec<&str> = runs
        .iter()
        .filter(|r| diverged(r) && !series.iter().any(|(name, _, _)| *name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    caption += &not_drawn("diverged", &off);
    let axes = ("compute used (FLOPs)", "validation loss, nats per bit (training loss for runs without validation)");
    both(dir, "loss_curves", &Curves::new(caption, axes, series, Some(yr))?)?;
    Ok(true)
}

/// What a caption adds for the runs a figure has no point of: `; diverged, not drawn: a, b, c, … (5)`.
fn not_drawn(what: &str, names: &[&str]) -> String {
    match names.len() {
        0 => String::new(),
        1..=3 => format!("; {what}, not drawn: {}", names.join(", ")),
        n => format!("; {what}, not drawn: {}, … ({n})", names[..3].join(", ")),
    }
}

/// Loss against the learning rate, a line per group of a learning-rate sweep through each rate's mean
/// over its finished runs, and a dot per run (runs without a finite loss left out): a colour per model
/// shape and budget (`run.steps`), μP dashed. False, and nothing written, when no run has a finite
/// loss.
pub fn loss_vs_lr(dir: &Path, groups: &[LrGroup]) -> Result<bool> {
    let shape = |g: &LrGroup| (g.order.1, g.order.2, g.order.3);
    let mut shapes: Vec<(usize, usize, u64)> = groups.iter().map(shape).collect();
    shapes.sort();
    shapes.dedup();
    let mut series: Series = Vec::new();
    let (mut unfinished, mut diverged) = (false, Vec::new());
    for g in groups {
        let colour = shapes.iter().position(|s| *s == shape(g)).unwrap_or(0);
        // a line through each rate's mean over its finished runs (of several seeds), a dot for every
        // finished run, a cross for one not finished (its loss is of less training)
        let at = |finished: bool| -> Vec<(f64, f64)> {
            g.points.iter().filter(|p| p.finished == finished).filter_map(|p| Some((p.lr, p.loss?))).collect()
        };
        let (means, runs, open) = (g.means(), at(true), at(false));
        unfinished |= !open.is_empty();
        let dots = Look { colour, line: Stroke::None, mark: Mark::Dot };
        match means.is_empty() {
            true => series.push((g.label.clone(), vec![runs], dots)),
            false => {
                series.push((g.label.clone(), vec![means], Look::line(colour, g.order.0)));
                series.push((String::new(), vec![runs], dots));
            }
        }
        series.push((String::new(), vec![open], Look { colour, line: Stroke::None, mark: Mark::Cross }));
        // (a run that ended without a finite loss has no point: its rate is named in the caption)
        diverged.extend(g.points.iter().filter(|p| p.diverged()).map(|p| p.lr));
    }
    series.retain(|(_, p, _)| !p[0].is_empty());
    if series.is_empty() {
        return Ok(false);
    }
    let mut caption = "loss vs learning rate".to_string();
    if unfinished {
        caption += " (×: a run not finished)";
    }
    diverged.sort_by(f64::total_cmp);
    diverged.dedup();
    let rates: Vec<String> = diverged.iter().map(|&lr| super::lr::rate_text(lr)).collect();
    let what = if rates.len() == 1 { "diverged at learning rate" } else { "diverged at learning rates" };
    caption += &not_drawn(what, &rates.iter().map(String::as_str).collect::<Vec<_>>());
    let axes = ("learning rate", "validation loss, nats per bit (training loss for runs without validation)");
    both(dir, "loss_vs_lr", &Curves::new(caption, axes, series, None)?)?;
    Ok(true)
}

/// The IsoFLOP profiles: each budget's points (loss against model size), the parabola through them and
/// its minimum (a cross), a colour per budget.
pub fn isoflop(dir: &Path, iso: &IsoFlop, parameters: super::Parameters) -> Result<()> {
    let minima = iso.profiles.iter().filter_map(|p| p.optimum.as_ref().filter(|o| o.inside).map(|o| o.loss));
    let yr = range_lin(iso.profiles.iter().flat_map(|p| p.measured.iter().map(|m| m.2)).chain(minima))?;
    let mut series: Series = Vec::new();
    for (i, p) in iso.profiles.iter().enumerate() {
        let name = match &p.optimum {
            Some(o) => {
                format!("C = {:.2e}: N_opt = {:.2e}{}", p.compute, o.params, if o.inside { "" } else { " (outside)" })
            }
            None => format!("C = {:.2e}: no minimum", p.compute),
        };
        let pts: Vec<(f64, f64)> = p.measured.iter().map(|m| (m.0, m.2)).collect();
        series.push((name, vec![pts], Look { colour: i, line: Stroke::None, mark: Mark::Dot }));
        let (lo, hi) = (p.measured[0].0 / 1.5, p.measured[p.measured.len() - 1].0 * 1.5);
        let curve: Vec<(f64, f64)> = log_grid(lo, hi).map(|n| (n, p.parabola.at(n))).collect();
        series.push((String::new(), inside(&curve, &yr), Look::line(i, false)));
        // (a minimum outside the sizes run is named in the legend, not drawn: it would stretch the x axis)
        if let Some(o) = p.optimum.as_ref().filter(|o| o.inside && yr.contains(&o.loss)) {
            series.push((
                String::new(),
                vec![vec![(o.params, o.loss)]],
                Look { colour: i, line: Stroke::None, mark: Mark::Cross },
            ));
        }
    }
    let axes = (parameters.label(), "loss, nats per bit (a point: a config's mean; a cross: the parabola's minimum)");
    let caption = "IsoFLOP profiles: loss vs model size at fixed compute".to_string();
    both(dir, "isoflop", &Curves::new(caption, axes, series, Some(yr))?)
}

/// A fitted law's legend entry: its formula and coefficients as `fits.md` writes them (a coefficient of
/// 1.9e85 in scientific notation, not in 86 digits).
fn fit_key(formula: &str, coefs: &[super::fit::Coef]) -> String {
    let coefs: Vec<String> =
        coefs.iter().map(|c| format!("{}={}", c.name, super::report::coef_text(c.value))).collect();
    format!("{formula}: {}", coefs.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fits_legend_writes_large_coefficients_as_fits_md_does() {
        let coef = |name, value| super::super::fit::Coef { name, value, ci95: None };
        let key = super::fit_key("L = a·C^-b", &[coef("a", 1.899e85), coef("b", 7.6551)]);
        assert_eq!(key, "L = a·C^-b: a=1.899e85, b=7.65510");
    }

    #[test]
    fn a_curve_leaving_the_frame_is_cut_where_it_leaves() {
        let pts = [(1.0, 0.7), (2.0, 0.6), (3.0, 5e17), (4.0, 0.65), (5.0, 0.66), (6.0, f64::NAN)];
        let segs = super::inside(&pts, &(0.5..0.8));
        assert_eq!(segs, vec![vec![(1.0, 0.7), (2.0, 0.6)], vec![(4.0, 0.65), (5.0, 0.66)]]);
    }
}
