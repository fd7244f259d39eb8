//! `gemma-embed bench --plot out.png|out.svg`: throughput per workload (one line per setting)
//! and, for online runs, latency against the offered load (one line per workload and batch
//! budget, p50 and p99).
//!
//! Drawn with plotters' own bitmap and SVG backends. Text goes through ab_glyph and needs a
//! TrueType font file at run time (there is no system font lookup, so no fontconfig or freetype
//! dependency): `$GEMMA_EMBED_FONT`, else the first of the usual sans-serif paths of Debian,
//! Fedora, Arch, macOS and Windows, else any `.ttf` under the system font folders.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::{Latency, WorkloadResult};
use crate::{Error, Result};

const SIZE_ONE_PANEL: (u32, u32) = (1000, 500);
const SIZE_TWO_PANELS: (u32, u32) = (1000, 950);

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];
const FONT_DIRS: &[&str] = &["/usr/share/fonts", "/usr/local/share/fonts"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => Err(Error::Bench(format!(
            "--plot {}: the file must end in .png or .svg",
            path.display()
        ))),
    }
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Bench(format!("--plot: {e}"))
}

/// The font file to draw text with, or why there is none.
fn find_font() -> std::result::Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("GEMMA_EMBED_FONT") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "--plot: GEMMA_EMBED_FONT={} is not a file",
                path.display()
            ))
        };
    }
    if let Some(path) = FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    let mut found = Vec::new();
    for dir in FONT_DIRS {
        collect_ttf(Path::new(dir), &mut found);
    }
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        format!(
            "--plot needs a TrueType font to draw text and found none (looked at \
             GEMMA_EMBED_FONT, {} and any .ttf under {}); install one (Debian: \
             `apt-get install fonts-dejavu-core`) or set GEMMA_EMBED_FONT=/path/to/font.ttf",
            FONT_CANDIDATES.join(", "),
            FONT_DIRS.join(", ")
        )
    })
}

fn collect_ttf(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_ttf(&path, found);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ttf"))
        {
            found.push(path);
        }
    }
}

/// Check that `path` can be plotted to (a .png or .svg name, a usable font), before the bench
/// runs; registers the font with plotters. Returns the font file used.
pub fn prepare(path: &Path) -> Result<PathBuf> {
    format_of(path)?;
    static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let font = find_font()?;
        let bytes = std::fs::read(&font).map_err(|e| format!("--plot: {}: {e}", font.display()))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("--plot: {} is not a usable TrueType font", font.display()))?;
        Ok(font)
    })
    .clone()
    .map_err(Error::Bench)
}

/// Draw the charts of `results` to `path` (.png or .svg).
pub fn write(path: &Path, results: &[WorkloadResult], title: &str) -> Result<()> {
    let format = format_of(path)?;
    prepare(path)?;
    let online = results.iter().any(|r| r.latency.is_some());
    let size = if online {
        SIZE_TWO_PANELS
    } else {
        SIZE_ONE_PANEL
    };
    let io_error = |e: std::io::Error| Error::Bench(format!("--plot {}: {e}", path.display()));
    match format {
        Format::Png => {
            let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
            draw(
                BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area(),
                results,
                title,
            )?;
            let file = std::fs::File::create(path).map_err(io_error)?;
            let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(plot_error)?;
            writer.write_image_data(&pixels).map_err(plot_error)?;
            writer.finish().map_err(plot_error)
        }
        Format::Svg => {
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, size).into_drawing_area(),
                results,
                title,
            )?;
            std::fs::write(path, svg).map_err(io_error)
        }
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    results: &[WorkloadResult],
    title: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let online: Vec<&WorkloadResult> = results.iter().filter(|r| r.latency.is_some()).collect();
    if online.is_empty() {
        throughput_panel(&root, results)?;
    } else {
        let panels = root.split_evenly((2, 1));
        throughput_panel(&panels[0], results)?;
        latency_panel(&panels[1], &online)?;
    }
    root.present().map_err(plot_error)
}

/// Distinct values in first-seen order.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Tokens/s per workload, one line per setting.
fn throughput_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    results: &[WorkloadResult],
) -> Result<()> {
    let names = distinct(results.iter().map(|r| r.name.as_str()));
    let settings = distinct(results.iter().map(WorkloadResult::setting_label));
    let top = results.iter().map(|r| r.tokens_per_s).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("throughput per workload", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0..names.len().saturating_sub(1)).into_segmented(),
            0.0..top.max(1.0),
        )
        .map_err(plot_error)?;
    let label = |x: &SegmentValue<usize>| match x {
        SegmentValue::CenterOf(i) => names.get(*i).map_or(String::new(), |n| n.to_string()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .x_labels(names.len())
        .x_label_formatter(&label)
        .x_desc("workload")
        .y_desc("tokens/s (median run)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(plot_error)?;
    for (k, setting) in settings.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let points: Vec<(SegmentValue<usize>, f64)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                results
                    .iter()
                    .find(|r| r.name == *name && r.setting_label() == *setting)
                    .map(|r| (SegmentValue::CenterOf(i), r.tokens_per_s))
            })
            .collect();
        draw_line(&mut chart, points, color.stroke_width(2), 4, setting)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// A labelled line through `points` with a filled marker of `marker_radius` pixels at each.
fn draw_line<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    points: Vec<(X::ValueType, Y::ValueType)>,
    style: ShapeStyle,
    marker_radius: i32,
    label: &str,
) -> Result<()>
where
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points.clone(), style))
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, marker_radius, style.filled())),
        )
        .map_err(plot_error)?;
    Ok(())
}

/// The legend of the labelled lines, in a box at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_error)
}

/// The offered load of an online row: its concurrency or its arrival rate.
fn offered_load(row: &WorkloadResult) -> f64 {
    row.concurrency
        .map_or(row.rate.unwrap_or(0.0), |c| c as f64)
}

/// p50 and p99 latency against the offered load (concurrency or rate; a run sweeps one of the
/// two), one pair of lines per workload and budget.
fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    online: &[&WorkloadResult],
) -> Result<()> {
    let groups = distinct(online.iter().map(|r| (r.name.as_str(), r.max_batch_tokens)));
    let right = online.iter().map(|r| offered_load(r)).fold(0.0, f64::max) * 1.1;
    let top = online
        .iter()
        .filter_map(|r| r.latency.map(|l| l.p99_ms))
        .fold(0.0, f64::max)
        * 1.15;
    let load_desc = if online.iter().any(|r| r.rate.is_some()) {
        "offered rate (requests/s, Poisson arrivals)"
    } else {
        "concurrency (closed-loop clients)"
    };
    let mut chart = ChartBuilder::on(area)
        .caption("latency vs load (online)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..right.max(1.0), 0.0..top.max(1.0))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(load_desc)
        .y_desc("latency (ms)")
        .draw()
        .map_err(plot_error)?;
    for (k, (name, budget)) in groups.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let mut rows: Vec<&&WorkloadResult> = online
            .iter()
            .filter(|r| r.name == *name && r.max_batch_tokens == *budget)
            .collect();
        rows.sort_by(|a, b| offered_load(a).total_cmp(&offered_load(b)));
        let p50 = |l: &Latency| l.p50_ms;
        let p99 = |l: &Latency| l.p99_ms;
        for (percentile, ms, style) in [
            ("p50", p50 as fn(&Latency) -> f64, color.stroke_width(2)),
            ("p99", p99, color.mix(0.45).stroke_width(2)),
        ] {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| r.latency.as_ref().map(|l| (offered_load(r), ms(l))))
                .collect();
            let label = format!("{name} mbt={budget} {percentile}");
            draw_line(&mut chart, points, style, 3, &label)?;
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_png_and_svg_names_are_accepted() {
        assert_eq!(format_of(Path::new("a/b.PNG")).unwrap(), Format::Png);
        assert_eq!(format_of(Path::new("b.svg")).unwrap(), Format::Svg);
        let err = format_of(Path::new("b.jpg")).unwrap_err().to_string();
        assert!(
            err.contains("b.jpg") && err.contains(".png or .svg"),
            "{err}"
        );
    }

    #[test]
    fn distinct_keeps_first_seen_order() {
        assert_eq!(distinct([3, 1, 3, 2, 1].into_iter()), vec![3, 1, 2]);
    }
}
