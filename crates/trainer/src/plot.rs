//! The loss plot, `loss.png`: training loss per logged step and validation loss per
//! validation, drawn with plotters from `steps.csv` and `metrics.jsonl`.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::train::{Record, METRICS, PLOT, STEPS};
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
    let all: Vec<f64> = steps
        .iter()
        .chain(&val)
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .collect();
    if all.is_empty() {
        return Err(TrainError::Plot("nothing to plot yet".into()));
    }
    let x_max = steps.iter().chain(&val).map(|p| p.0).fold(1.0, f64::max);
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
                .caption("training and validation loss", ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
            .map_err(perr)?;
        if text {
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
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
        let train = chart
            .draw_series(LineSeries::new(steps.iter().cloned(), BLUE.stroke_width(2)))
            .map_err(perr)?;
        if text {
            train
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 4, RED.filled())))
            .map_err(perr)?;
        let v = chart
            .draw_series(LineSeries::new(val.iter().cloned(), RED.stroke_width(2)))
            .map_err(perr)?;
        if text {
            v.label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .configure_series_labels()
                .background_style(WHITE)
                .border_style(BLACK)
                .draw()
                .map_err(perr)?;
        }
        root.present().map_err(perr)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size matches");
    crate::eval::save_png_atomic(&img, &out_dir.join(PLOT))
}
