//! Charts as data (what to draw) and their rendering to SVG and PNG with plotters.
//!
//! Three kinds cover every chart of the report: lines (accuracy vs ε, training
//! curves, ROC, CDFs), grouped bars (per class, before/after) and overlaid
//! histograms (score distributions). The legend sits beside the plot, never on it.

use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Error, Result};

/// Okabe & Ito's colour-blind-safe palette (yellow left out: unreadable on white).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(230, 159, 0),   // orange
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
];
const GRID: RGBColor = RGBColor(232, 232, 232);
const FONT: &str = "sans-serif";
const WIDTH: u32 = 760;
const HEIGHT: u32 = 400;
const LEGEND_WIDTH: u32 = 200;

static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Register the embedded font (plotters looks fonts up by family name), so text
/// renders the same on every machine without system font libraries.
fn register_font() {
    REGISTER.call_once(|| {
        // The font is compiled in and known to parse; a failure would only lose text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// How a line is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stroke {
    /// A solid coloured line with markers.
    Solid,
    /// A dashed coloured line with markers.
    Dashed,
    /// A thick black line: the worst case over all attacks.
    Envelope,
}

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points `(x, y)`; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub stroke: Stroke,
    /// Palette index (series of one record share a colour across charts).
    pub colour: usize,
}

/// What a chart shows.
#[derive(Clone, Debug)]
pub enum ChartKind {
    /// Lines over a numeric x axis.
    Lines {
        /// x-axis title with unit.
        x_label: String,
        /// y-axis title with unit.
        y_label: String,
        /// y range (accuracy charts use 0–100).
        y_range: (f64, f64),
        /// The lines.
        series: Vec<Series>,
    },
    /// Grouped bars over categories.
    Bars {
        /// x-axis title.
        x_label: String,
        /// y-axis title with unit.
        y_label: String,
        /// One bar per group in each category.
        categories: Vec<String>,
        /// `(legend entry, one value per category)`.
        groups: Vec<(String, Vec<f64>)>,
        /// y range.
        y_range: (f64, f64),
        /// A horizontal reference line `(legend entry, y)`.
        reference: Option<(String, f64)>,
    },
    /// Overlaid histograms, each normalised to a share of its own group.
    Histogram {
        /// x-axis title with unit.
        x_label: String,
        /// `(legend entry, values)`.
        groups: Vec<(String, Vec<f64>)>,
        /// Number of bins over the common range.
        bins: usize,
        /// A vertical threshold line `(legend entry, x)`.
        threshold: Option<(String, f64)>,
    },
}

/// A chart: the file it is written to, its title and caption, and its data.
#[derive(Clone, Debug)]
pub struct Chart {
    /// File name without extension (`robust-vs-epsilon-linf`).
    pub name: String,
    /// Title drawn above the plot.
    pub title: String,
    /// One sentence saying how to read it (shown under it in the HTML).
    pub caption: String,
    /// The data.
    pub kind: ChartKind,
}

/// A rendered chart.
#[derive(Clone, Debug)]
pub struct RenderedChart {
    /// The chart.
    pub chart: Chart,
    /// SVG text.
    pub svg: String,
    /// PNG bytes (same drawing, rasterised with the embedded font).
    pub png: Vec<u8>,
}

fn draw_err<E: std::fmt::Display>(chart: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Render(format!("chart {chart}: {e}"))
}

impl Chart {
    /// Render to SVG and PNG.
    pub fn render(self) -> Result<RenderedChart> {
        register_font();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(draw_err(&self.name))?;
        }
        let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(draw_err(&self.name))?;
        }
        let png = encode_png(WIDTH, HEIGHT, &rgb, png::ColorType::Rgb)?;
        Ok(RenderedChart {
            chart: self,
            svg,
            png,
        })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let fail = draw_err(&self.name);
        root.fill(&WHITE).map_err(&fail)?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let entries = match &self.kind {
            ChartKind::Lines {
                x_label,
                y_label,
                y_range,
                series,
            } => self.draw_lines(&plot, (x_label, y_label), *y_range, series),
            ChartKind::Bars {
                x_label,
                y_label,
                categories,
                groups,
                y_range,
                reference,
            } => self.draw_bars(
                &plot,
                (x_label, y_label),
                categories,
                groups,
                *y_range,
                reference.as_ref(),
            ),
            ChartKind::Histogram {
                x_label,
                groups,
                bins,
                threshold,
            } => self.draw_histogram(&plot, x_label, groups, *bins, threshold.as_ref()),
        }
        .map_err(&fail)?;
        draw_legend(&legend, &entries).map_err(&fail)
    }

    /// The plot area with the title and room for the axis labels.
    fn axes<'a, DB: DrawingBackend>(
        &self,
        plot: &'a DrawingArea<DB, Shift>,
        x: std::ops::Range<f64>,
        y: std::ops::Range<f64>,
    ) -> Drawn<DB, ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
        ChartBuilder::on(plot)
            .caption(&self.title, (FONT, 18))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(58)
            .build_cartesian_2d(x, y)
    }

    fn draw_lines<DB: DrawingBackend>(
        &self,
        plot: &DrawingArea<DB, Shift>,
        (x_label, y_label): (&str, &str),
        (y0, y1): (f64, f64),
        series: &[Series],
    ) -> Drawn<DB, Vec<LegendEntry>> {
        let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let (x0, x1) = padded_range(xs, 0.0);
        let mut ctx = self.axes(plot, x0..x1, y0..y1)?;
        numeric_mesh(&mut ctx, x_label, y_label)?;
        // The envelope first: attack lines that coincide with it stay visible on top.
        let mut ordered: Vec<&Series> = series
            .iter()
            .filter(|s| s.stroke == Stroke::Envelope)
            .collect();
        ordered.extend(series.iter().filter(|s| s.stroke != Stroke::Envelope));
        let mut entries = Vec::new();
        for s in ordered {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let (colour, width) = match s.stroke {
                Stroke::Envelope => (BLACK, 3),
                _ => (PALETTE[s.colour % PALETTE.len()], 2),
            };
            let style = colour.stroke_width(width);
            match s.stroke {
                Stroke::Dashed => {
                    ctx.draw_series(DashedLineSeries::new(points.clone(), 7, 5, style))?;
                }
                _ => {
                    ctx.draw_series(LineSeries::new(points.clone(), style))?;
                }
            }
            if points.len() <= 40 {
                ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            }
            entries.push(LegendEntry {
                name: s.name.clone(),
                colour,
                mark: match s.stroke {
                    Stroke::Dashed => Mark::Dashed,
                    Stroke::Envelope => Mark::Thick,
                    Stroke::Solid => Mark::Line,
                },
            });
        }
        Ok(entries)
    }

    fn draw_bars<DB: DrawingBackend>(
        &self,
        plot: &DrawingArea<DB, Shift>,
        (x_label, y_label): (&str, &str),
        categories: &[String],
        groups: &[(String, Vec<f64>)],
        (y0, y1): (f64, f64),
        reference: Option<&(String, f64)>,
    ) -> Drawn<DB, Vec<LegendEntry>> {
        let n = categories.len().max(1);
        let mut ctx = self.axes(plot, -0.5f64..(n as f64 - 0.5), y0..y1)?;
        let label = |v: &f64| -> String {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                categories.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        ctx.configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .disable_x_mesh()
            .x_labels(n + 1)
            .y_labels(6)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| tick(*v))
            .draw()?;
        let width = 0.8 / groups.len().max(1) as f64;
        let mut entries = Vec::new();
        for (g, (name, values)) in groups.iter().enumerate() {
            let colour = PALETTE[g % PALETTE.len()];
            let bars = values.iter().enumerate().filter_map(|(i, &v)| {
                if !v.is_finite() {
                    return None;
                }
                let left = i as f64 - 0.4 + g as f64 * width;
                Some(Rectangle::new(
                    [(left, y0.max(0.0_f64.min(y1))), (left + width * 0.92, v)],
                    colour.filled(),
                ))
            });
            ctx.draw_series(bars)?;
            entries.push(LegendEntry {
                name: name.clone(),
                colour,
                mark: Mark::Box,
            });
        }
        if let Some((name, y)) = reference {
            let line = [(-0.5, *y), (n as f64 - 0.5, *y)];
            entries.push(reference_line(&mut ctx, line, name)?);
        }
        Ok(entries)
    }

    fn draw_histogram<DB: DrawingBackend>(
        &self,
        plot: &DrawingArea<DB, Shift>,
        x_label: &str,
        groups: &[(String, Vec<f64>)],
        bins: usize,
        threshold: Option<&(String, f64)>,
    ) -> Drawn<DB, Vec<LegendEntry>> {
        let bins = bins.max(1);
        let all = groups
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .chain(threshold.iter().map(|t| t.1));
        let (x0, x1) = padded_range(all, 0.0);
        let step = (x1 - x0) / bins as f64;
        let shares: Vec<Vec<f64>> = groups
            .iter()
            .map(|(_, values)| bin_shares(values, x0, step, bins))
            .collect();
        let top = shares
            .iter()
            .flatten()
            .copied()
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.08;
        let mut ctx = self.axes(plot, x0..x1, 0.0..top)?;
        numeric_mesh(&mut ctx, x_label, "share of group (%)")?;
        let mut entries = Vec::new();
        for (g, ((name, _), share)) in groups.iter().zip(&shares).enumerate() {
            let colour = PALETTE[g % PALETTE.len()];
            let fill = colour.mix(0.35).filled();
            let outline = colour.stroke_width(1);
            for (b, &s) in share.iter().enumerate() {
                if s <= 0.0 {
                    continue;
                }
                let left = x0 + b as f64 * step;
                let corners = [(left, 0.0), (left + step, s)];
                ctx.draw_series([Rectangle::new(corners, fill)])?;
                ctx.draw_series([Rectangle::new(corners, outline)])?;
            }
            entries.push(LegendEntry {
                name: name.clone(),
                colour,
                mark: Mark::Shaded,
            });
        }
        if let Some((name, x)) = threshold {
            entries.push(reference_line(&mut ctx, [(*x, 0.0), (*x, top)], name)?);
        }
        Ok(entries)
    }
}

/// A dashed black reference line (a threshold, a chance level) and its legend entry.
fn reference_line<DB: DrawingBackend>(
    ctx: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    [from, to]: [(f64, f64); 2],
    name: &str,
) -> Drawn<DB, LegendEntry> {
    ctx.draw_series(DashedLineSeries::new(
        vec![from, to],
        7,
        5,
        BLACK.stroke_width(2),
    ))?;
    Ok(LegendEntry {
        name: name.to_string(),
        colour: BLACK,
        mark: Mark::Dashed,
    })
}

/// Grid, tick labels and axis titles of a chart with numbers on both axes.
fn numeric_mesh<DB: DrawingBackend>(
    ctx: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x_label: &str,
    y_label: &str,
) -> Drawn<DB, ()> {
    ctx.configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE)
        .bold_line_style(GRID)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
}

/// A drawing step's result: plotters' error of backend `DB`.
type Drawn<DB, T> = std::result::Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Percent of `values`' finite entries in each of `bins` bins of width `step`
/// from `x0` (the outer bins take what lies beyond them).
fn bin_shares(values: &[f64], x0: f64, step: f64, bins: usize) -> Vec<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let mut counts = vec![0usize; bins];
    for v in &finite {
        let b = (((v - x0) / step).floor().max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    counts
        .iter()
        .map(|&c| 100.0 * c as f64 / finite.len().max(1) as f64)
        .collect()
}

#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dashed,
    Thick,
    Box,
    Shaded,
}

struct LegendEntry {
    name: String,
    colour: RGBColor,
    mark: Mark,
}

/// The legend in its own panel right of the plot, so it never covers data.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from((FONT, 13).into_font()).color(&BLACK);
    let mut y = 46;
    for entry in entries {
        let (x, mid) = (6, y + 7);
        match entry.mark {
            Mark::Line => {
                area.draw(&PathElement::new(
                    vec![(x, mid), (x + 26, mid)],
                    entry.colour.stroke_width(2),
                ))?;
                area.draw(&Circle::new((x + 13, mid), 3, entry.colour.filled()))?;
            }
            Mark::Thick => {
                area.draw(&PathElement::new(
                    vec![(x, mid), (x + 26, mid)],
                    entry.colour.stroke_width(4),
                ))?;
            }
            Mark::Dashed => {
                for start in [x, x + 11, x + 22] {
                    area.draw(&PathElement::new(
                        vec![(start, mid), (start + 6, mid)],
                        entry.colour.stroke_width(2),
                    ))?;
                }
            }
            Mark::Box => {
                area.draw(&Rectangle::new(
                    [(x + 4, mid - 6), (x + 22, mid + 6)],
                    entry.colour.filled(),
                ))?;
            }
            Mark::Shaded => {
                let corners = [(x + 4, mid - 6), (x + 22, mid + 6)];
                area.draw(&Rectangle::new(corners, entry.colour.mix(0.35).filled()))?;
                area.draw(&Rectangle::new(corners, entry.colour.stroke_width(1)))?;
            }
        }
        // Long names wrap onto a second line rather than running off the image.
        let mut lines = wrap(&entry.name, 22);
        lines.truncate(2);
        for (k, line) in lines.iter().enumerate() {
            area.draw(&Text::new(
                line.clone(),
                (x + 34, y + k as i32 * 16),
                style.clone(),
            ))?;
        }
        y += 16 * lines.len().max(1) as i32 + 8;
    }
    Ok(())
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let current = lines.last().map(|l| l.chars().count()).unwrap_or(0);
        if current > 0 && current + 1 + word.chars().count() > width {
            lines.push(String::new());
        }
        if let Some(line) = lines.last_mut() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// The finite range of `values`, widened when empty or a single point.
fn padded_range(values: impl Iterator<Item = f64>, default_low: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (default_low, default_low + 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.03;
    (lo - pad, hi + pad)
}

/// Tick labels: few digits, no float noise (0.30000000000000004 → 0.3).
fn tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs();
    let text = if magnitude >= 100.0 {
        format!("{v:.0}")
    } else if magnitude >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Encode raw 8-bit pixels as PNG (deterministic: fixed filter and compression).
pub(crate) fn encode_png(
    width: u32,
    height: u32,
    pixels: &[u8],
    colour: png::ColorType,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(colour);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Default);
        encoder.set_filter(png::FilterType::Sub);
        let mut writer = encoder
            .write_header()
            .map_err(|e| Error::Render(format!("PNG header: {e}")))?;
        writer
            .write_image_data(pixels)
            .map_err(|e| Error::Render(format!("PNG data: {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_float_noise() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(50.0), "50");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1.25), "1.25");
        assert_eq!(tick(250.0), "250");
    }

    #[test]
    fn ranges_survive_empty_single_and_nan_input() {
        assert_eq!(padded_range([].into_iter(), 0.0), (0.0, 1.0));
        assert_eq!(padded_range([f64::NAN].into_iter(), 0.0), (0.0, 1.0));
        let (lo, hi) = padded_range([0.3].into_iter(), 0.0);
        assert!(lo < 0.3 && hi > 0.3);
    }

    #[test]
    fn legend_names_wrap() {
        assert_eq!(
            wrap("worst case over every attack", 12),
            ["worst case", "over every", "attack"]
        );
    }
}
