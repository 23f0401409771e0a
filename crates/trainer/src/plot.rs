//! Plots drawn with plotters: the loss plot, `loss.png` (training loss per logged step and
//! validation loss per validation, from `steps.csv` and `metrics.jsonl`), and `eval --plot`'s
//! PSNR against the noise level.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::eval::EvalResult;
use crate::run_dir::{Record, METRICS, PLOT, STEPS};
use crate::{Result, TrainError};

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font for labels; false when none is found (the plot then has no text).
fn font_available() -> bool {
    static ONCE: Once = Once::new();
    static mut FOUND: bool = false;
    ONCE.call_once(|| {
        for p in FONTS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    // SAFETY: written once, inside call_once, before any read.
                    unsafe { FOUND = true };
                    break;
                }
            }
        }
    });
    // SAFETY: only read after call_once has completed.
    unsafe { FOUND }
}

fn perr<E: std::fmt::Debug>(e: E) -> TrainError {
    TrainError::Plot(format!("{e:?}"))
}

/// Reads the metrics of `out_dir` and draws `out_dir/loss.png`.
pub fn plot_losses(out_dir: &Path) -> Result<()> {
    let steps: Vec<(f64, f64)> = std::fs::read_to_string(out_dir.join(STEPS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.first()?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect();
    let records: Vec<Record> = std::fs::read_to_string(out_dir.join(METRICS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let val: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (r.step as f64, r.val_loss))
        .collect();
    let x_max = steps.iter().chain(&val).map(|p| p.0).fold(1.0, f64::max);
    let series = [
        Series {
            label: "train",
            color: BLUE,
            points: steps,
            dots: false,
            width: 2,
        },
        Series {
            label: "validation",
            color: RED,
            points: val,
            dots: true,
            width: 2,
        },
    ];
    // On a log scale: the training loss (EDM's weighted loss, or 1 - SSIM + L1) and the
    // validation loss (MSE) differ by orders of magnitude.
    let img = draw(
        "training and validation loss",
        ("step", "loss (log scale)"),
        0.0..x_max,
        true,
        &series,
    )?;
    crate::eval::save_png_atomic(&img, &out_dir.join(PLOT))
}

/// PSNR against the noise level: the noisy images, the model told the true level and, where
/// evaluated, the model given its estimate; drawn into `path` (PNG, written atomically).
pub fn plot_psnr(results: &[EvalResult], path: &Path) -> Result<()> {
    let curve = |estimated: bool, noisy: bool| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = results
            .iter()
            .filter(|r| r.mean_estimate.is_some() == estimated)
            .map(|r| (r.sigma, if noisy { r.noisy_psnr } else { r.psnr }))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let mut series = vec![
        Series {
            label: "noisy input",
            color: RGBColor(120, 120, 120),
            points: curve(false, true),
            dots: true,
            width: 2,
        },
        Series {
            label: "denoised, true sigma",
            color: BLUE,
            points: curve(false, false),
            dots: true,
            width: 3,
        },
    ];
    let estimated = curve(true, false);
    if !estimated.is_empty() {
        series.push(Series {
            label: "denoised, estimated sigma",
            color: RED,
            points: estimated,
            dots: true,
            width: 1, // thin, on top of the true-sigma line it mostly covers
        });
    }
    let xs: Vec<f64> = results.iter().map(|r| r.sigma).collect();
    let x_min = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !x_min.is_finite() {
        return Err(TrainError::Plot("no results to plot".into()));
    }
    let pad = ((x_max - x_min) * 0.05).max(1.0);
    let img = draw(
        "PSNR against noise level",
        ("noise sigma (0..255)", "PSNR (dB)"),
        (x_min - pad)..(x_max + pad),
        false,
        &series,
    )?;
    crate::eval::save_png_atomic(&img, path)
}

/// One line of a chart, optionally with a dot at each point.
struct Series<'a> {
    label: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    dots: bool,
    /// Line width in pixels.
    width: u32,
}

/// A 900x540 line chart of `series` over `x`, the y range fitted to the finite values (on a
/// log scale with `log_y`: values drawn as their log10, labelled with the values; values of 0 or
/// less left out). Labels and the legend need a system font; without one the chart is drawn
/// without text.
fn draw(
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    x: std::ops::Range<f64>,
    log_y: bool,
    series: &[Series],
) -> Result<image::RgbImage> {
    let scale = |v: f64| if log_y { v.log10() } else { v };
    // Each series' points as drawn: scaled, the non-finite left out.
    let drawn: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, y)| (x, scale(y)))
                .filter(|p| p.1.is_finite())
                .collect()
        })
        .collect();
    let all: Vec<f64> = drawn.iter().flatten().map(|p| p.1).collect();
    if all.is_empty() {
        return Err(TrainError::Plot("nothing to plot yet".into()));
    }
    let y_min = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let y_max = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y_max - y_min) * 0.05).max(1e-4);

    let (w, h) = (900u32, 540u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let text = font_available();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if text {
            builder
                .caption(caption, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(x, (y_min - pad)..(y_max + pad))
            .map_err(perr)?;
        if text {
            let label = |v: &f64| {
                if log_y {
                    // Two significant digits: 1.0, 0.32, 0.032, ...
                    let value = 10f64.powf(*v);
                    let decimals = (1.0 - value.log10().floor()).max(1.0) as usize;
                    format!("{value:.decimals$}")
                } else {
                    format!("{v:.1}")
                }
            };
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .y_label_formatter(&label)
                .draw()
                .map_err(perr)?;
        } else {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_y_mesh()
                .draw()
                .map_err(perr)?;
        }
        for (s, pts) in series.iter().zip(&drawn) {
            if s.dots {
                chart
                    .draw_series(
                        pts.iter()
                            .map(|&p| Circle::new(p, 3 + s.width.min(2), s.color.filled())),
                    )
                    .map_err(perr)?;
            }
            let line = chart
                .draw_series(LineSeries::new(
                    pts.iter().cloned(),
                    s.color.stroke_width(s.width),
                ))
                .map_err(perr)?;
            if text {
                let color = s.color;
                line.label(s.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE)
                .border_style(BLACK)
                .draw()
                .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    Ok(image::RgbImage::from_raw(w, h, buf).expect("buffer size matches"))
}
