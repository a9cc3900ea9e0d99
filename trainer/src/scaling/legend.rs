//! The figures' legends and colours. A legend sits in a panel beside the chart, not over it: inside
//! the frame it hid points and curves wherever it went (a sweep of 24 runs filled half the frame).
//! The colours are ten that read on white and apart from each other, then a darker shade of each;
//! series beyond those are told apart by their line (dashed, then dotted).

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

/// The width of the legend panel at a figure's right (pixels).
pub(super) const PANEL_WIDTH: u32 = 330;

/// Where the first entry goes: level with the top of the chart's frame, below its caption.
const TOP: i32 = 56;
/// An entry's line height; a wrapped label's next lines are as high.
const LINE: i32 = 18;
/// The characters of a label line before it wraps (13 px text in the panel).
const WRAP: usize = 40;

/// matplotlib's tab10: every one readable on white.
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A darker shade of a channel: two thirds of it (half made the greys and browns near black).
fn dark(c: u8) -> u8 {
    (u16::from(c) * 2 / 3) as u8
}

/// The colours of a figure: the ten, then a darker shade of each.
pub(super) const COLOURS: usize = 2 * TAB10.len();

/// The colour of palette index `i` (they repeat after [`COLOURS`]).
pub(super) fn colour(i: usize) -> RGBAColor {
    let RGBColor(r, g, b) = TAB10[i % TAB10.len()];
    match i / TAB10.len() % 2 {
        0 => RGBColor(r, g, b).to_rgba(),
        _ => RGBColor(dark(r), dark(g), dark(b)).to_rgba(),
    }
}

/// What an entry shows before its text.
#[derive(Clone, Copy)]
pub(super) enum Sample {
    /// A stroke, dashed or not, with a dot on it or not.
    Line {
        colour: RGBAColor,
        dashed: bool,
        dot: bool,
    },
    /// A point, filled or hollow.
    Dot {
        colour: RGBAColor,
        filled: bool,
    },
    Cross {
        colour: RGBAColor,
    },
}

/// The height a panel needs for entries of these labels (pixels): a figure with many is made taller.
pub(super) fn height<'a>(labels: impl Iterator<Item = &'a str>) -> u32 {
    let lines: i32 = labels.map(|l| LINE * wrap(l).len() as i32 + GAP).sum();
    (TOP + lines + 2 * LINE) as u32
}

/// Between entries (pixels).
const GAP: i32 = 4;

/// Draws `entries` (a sample and its label, wrapped at [`WRAP`] characters) down `panel`; those that
/// do not fit are counted in a last line.
pub(super) fn draw<DB: DrawingBackend>(panel: &DrawingArea<DB, Shift>, entries: &[(String, Sample)]) -> Result<()> {
    let err = |e| anyhow::anyhow!("plotting the legend: {e:?}");
    panel.fill(&WHITE).map_err(err)?;
    let text = ("sans-serif", 13).into_font().color(&BLACK);
    let bottom = panel.dim_in_pixel().1 as i32 - LINE;
    let mut y = TOP;
    for (k, (label, sample)) in entries.iter().enumerate() {
        let lines = wrap(label);
        if y + LINE * lines.len() as i32 > bottom {
            let rest = format!("… and {} more", entries.len() - k);
            panel.draw(&Text::new(rest, (10, y), text.clone())).map_err(err)?;
            break;
        }
        draw_sample(panel, *sample, (10, y + LINE / 2 - 2)).map_err(err)?;
        for (i, line) in lines.iter().enumerate() {
            panel.draw(&Text::new(line.clone(), (40, y + LINE * i as i32), text.clone())).map_err(err)?;
        }
        y += LINE * lines.len() as i32 + GAP;
    }
    Ok(())
}

fn draw_sample<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    sample: Sample,
    (x, y): (i32, i32),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    match sample {
        Sample::Line { colour, dashed, dot } => {
            let style = colour.stroke_width(2);
            match dashed {
                true => {
                    panel.draw(&PathElement::new(vec![(x, y), (x + 8, y)], style))?;
                    panel.draw(&PathElement::new(vec![(x + 13, y), (x + 21, y)], style))?;
                }
                false => panel.draw(&PathElement::new(vec![(x, y), (x + 21, y)], style))?,
            }
            if dot {
                panel.draw(&Circle::new((x + 10, y), 4, colour.filled()))?;
            }
            Ok(())
        }
        Sample::Dot { colour, filled: true } => panel.draw(&Circle::new((x + 10, y), 5, colour.filled())),
        Sample::Dot { colour, filled: false } => panel.draw(&Circle::new((x + 10, y), 5, colour.stroke_width(2))),
        Sample::Cross { colour } => panel.draw(&Cross::new((x + 10, y), 6, colour.stroke_width(3))),
    }
}

/// `label` in lines of at most [`WRAP`] characters, broken after a space, `_`, `,` or `/` where one is
/// near, else mid-word.
fn wrap(label: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest: Vec<char> = label.chars().collect();
    while rest.len() > WRAP {
        let cut = (WRAP / 2..WRAP).rev().find(|&i| matches!(rest[i], ' ' | '_' | ',' | '/')).map_or(WRAP, |i| i + 1);
        lines.push(rest[..cut].iter().collect::<String>().trim_end().to_string());
        rest = rest[cut..].iter().copied().skip_while(|c| *c == ' ').collect();
    }
    lines.push(rest.into_iter().collect());
    lines
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_labels_wrap_at_a_separator() {
        let name = "embed-dim-128_num-heads-2_optim-lr-0.01_tokens-2e5";
        assert_eq!(super::wrap(name), ["embed-dim-128_num-heads-2_optim-lr-0.01_", "tokens-2e5"]);
        assert_eq!(super::wrap("short"), ["short"]);
        let unbroken = "x".repeat(45);
        assert_eq!(super::wrap(&unbroken), ["x".repeat(40), "x".repeat(5)]);
        assert!(super::wrap("L = a·C^-b + e: a=1.2345, b=0.0567, e=0.4321").iter().all(|l| l.chars().count() <= 40));
    }
}
