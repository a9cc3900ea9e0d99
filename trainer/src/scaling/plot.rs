//! The scaling figures, each as PNG and SVG (plotters): loss against compute (log x, linear y: losses
//! span too little for log ticks) with the fitted laws, the validation-loss curve of every run
//! against the compute it had used, and (learning-rate sweeps) loss against the learning rate.
//!
//! Text needs a TrueType font: `INFINITY_FONT=path.ttf`, else DejaVu Sans or Liberation Sans from the
//! usual system folders (Debian/Ubuntu: `apt-get install fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::fit::Fit;
use super::lr::LrGroup;
use super::RunRecord;

const SIZE: (u32, u32) = (960, 640);
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
}

/// Write `stem.svg` and `stem.png` in `dir`.
fn both(dir: &Path, stem: &str, fig: &impl Figure) -> Result<()> {
    font()?;
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e:?}", svg.display()))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e:?}", png.display()))?;
    }
    let img = image::RgbImage::from_raw(SIZE.0, SIZE.1, buf).context("plot buffer size")?;
    img.save(&png).with_context(|| format!("writing {}", png.display()))
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

type LogLin = Cartesian2d<LogCoord<f64>, RangedCoordf64>;

/// A white canvas with a titled chart: log compute on x, linear loss on y, labelled axes.
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
        .build_cartesian_2d(xr.clone().log_scale(), yr.clone())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.1e}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// A fitted law to draw: its fit (for the legend) and `L(C)`.
pub type Curve<'a> = (&'a Fit, Box<dyn Fn(f64) -> f64 + 'a>);

struct LossVsCompute<'a> {
    points: &'a [(f64, f64, bool)],
    fits: &'a [Curve<'a>],
    r: f64,
    xr: std::ops::Range<f64>,
    yr: std::ops::Range<f64>,
}

impl Figure for LossVsCompute<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let caption = format!("loss vs training compute (Pearson r of the logs = {:.3})", self.r);
        let axes = ("compute C (FLOPs: 6·N·D + attention)", "loss");
        let mut chart = chart(root, &caption, axes, &self.xr, &self.yr)?;
        let frontier = self.points.iter().filter(|p| p.2).map(|&(x, y, _)| Circle::new((x, y), 5, BLUE.filled()));
        chart
            .draw_series(frontier)
            .map_err(e)?
            .label("runs on the compute frontier (fitted)")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BLUE.filled()));
        if self.points.iter().any(|p| !p.2) {
            let grey = RGBColor(120, 120, 120);
            let above =
                self.points.iter().filter(|p| !p.2).map(move |&(x, y, _)| Circle::new((x, y), 5, grey.stroke_width(2)));
            chart
                .draw_series(above)
                .map_err(e)?
                .label("runs above the frontier (not fitted)")
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, grey.stroke_width(2)));
        }
        for (i, (fit, f)) in self.fits.iter().enumerate() {
            let colour = Palette99::pick(i + 1).to_rgba();
            let (lo, hi) = (self.xr.start.ln(), self.xr.end.ln());
            let line: Vec<(f64, f64)> = (0..=64)
                .map(|k| (lo + (hi - lo) * k as f64 / 64.0).exp())
                .map(|x| (x, f(x)))
                // (a point beyond the frame is drawn at its edge: the part of the law outside is left out)
                .filter(|(_, y)| y.is_finite() && *y > 0.0 && self.yr.contains(y))
                .collect();
            let coefs: Vec<String> = fit.coefs.iter().map(|c| format!("{}={:.4}", c.name, c.value)).collect();
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(2)))
                .map_err(e)?
                .label(format!("{}: {}", fit.formula, coefs.join(", ")))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(e)?;
        Ok(())
    }
}

/// Loss against compute (log-log): the runs as points (`(C, L, on the compute frontier)`: filled where
/// the `L(C)` laws were fitted to it, hollow above it) and the fitted laws as lines.
pub fn loss_vs_compute(dir: &Path, points: &[(f64, f64, bool)], fits: &[Curve], r: f64) -> Result<()> {
    let xr = range_log(points.iter().map(|p| p.0))?;
    let yr = range_lin(points.iter().map(|p| p.1))?;
    both(dir, "loss_vs_compute", &LossVsCompute { points, fits, r, xr, yr })
}

/// Named lines over a log x axis.
struct Curves {
    caption: &'static str,
    axes: (&'static str, &'static str),
    series: Series,
    /// Mark each point too (few points per line), and put the legend top left (lines of losses
    /// against learning rates rise to the right).
    dots: bool,
    xr: std::ops::Range<f64>,
    yr: std::ops::Range<f64>,
}

/// A line: its legend, its points, and its look (palette index, dashed).
type Series = Vec<(String, Vec<(f64, f64)>, (usize, bool))>;

impl Curves {
    fn new(caption: &'static str, axes: (&'static str, &'static str), series: Series, dots: bool) -> Result<Curves> {
        let xr = range_log(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)))?;
        let yr = range_lin(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)))?;
        Ok(Curves { caption, axes, series, dots, xr, yr })
    }
}

impl Figure for Curves {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let mut chart = chart(root, self.caption, self.axes, &self.xr, &self.yr)?;
        for (name, pts, (colour, dashed)) in &self.series {
            let colour = Palette99::pick(*colour).to_rgba();
            // the legend's sample: one stroke, or two for a dashed line
            let gap = if *dashed { (8, 13) } else { (10, 10) };
            let legend = move |(x, y): (i32, i32)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (gap.0, 0)], colour.stroke_width(2))
                    + PathElement::new(vec![(gap.1, 0), (20, 0)], colour.stroke_width(2))
            };
            let drawn = match dashed {
                true => chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 6, colour.stroke_width(2))),
                false => chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2))),
            };
            drawn.map_err(e)?.label(name.as_str()).legend(legend);
            if self.dots {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(e)?;
            }
        }
        let legend = if self.dots { SeriesLabelPosition::UpperLeft } else { SeriesLabelPosition::MiddleRight };
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// The loss curve of every run against the compute it had used. False, and nothing written, when no
/// run has logged a finite loss yet.
pub fn curves(dir: &Path, runs: &[RunRecord]) -> Result<bool> {
    let series: Series = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let curve = if r.val_curve.is_empty() { &r.train_curve } else { &r.val_curve };
            let pts: Vec<(f64, f64)> = curve
                .iter()
                .filter(|(s, l)| *s > 0 && l.is_finite())
                .map(|(s, l)| (*s as f64 * r.flops_per_step, *l))
                .collect();
            (r.name.clone(), pts, (i, false))
        })
        .filter(|(_, p, _)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let axes = ("compute used (FLOPs)", "validation loss (training loss for runs without validation)");
    both(dir, "loss_curves", &Curves::new("loss curves per run", axes, series, false)?)?;
    Ok(true)
}

/// Loss against the learning rate, a line per group of a learning-rate sweep (runs without a finite
/// loss left out): a colour per model shape, μP dashed. False, and nothing written, when no run has
/// a finite loss.
pub fn loss_vs_lr(dir: &Path, groups: &[LrGroup]) -> Result<bool> {
    let mut shapes: Vec<(usize, usize)> = groups.iter().map(|g| (g.order.1, g.order.2)).collect();
    shapes.sort();
    shapes.dedup();
    let series: Series = groups
        .iter()
        .map(|g| {
            let colour = shapes.iter().position(|s| *s == (g.order.1, g.order.2)).unwrap_or(0);
            let pts: Vec<(f64, f64)> = g.points.iter().filter_map(|p| Some((p.lr, p.loss?))).collect();
            (g.label.clone(), pts, (colour, g.order.0))
        })
        .filter(|(_, p, _)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let axes = ("learning rate", "validation loss (training loss for runs without validation)");
    both(dir, "loss_vs_lr", &Curves::new("loss vs learning rate", axes, series, true)?)?;
    Ok(true)
}
