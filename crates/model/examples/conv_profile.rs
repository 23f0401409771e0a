//! Times the convolutions of a seed-unet training step on the CPU (batch 64): our fused
//! im2col + gemm op against candle's conv2d and its backward.
//! `cargo run --release -p denoise-model --example conv_profile`

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use denoise_model::layers::Conv2d;
use denoise_model::params::ParamStore;
use denoise_ops::conv::reference_conv;

fn time<F: FnMut() -> Tensor>(name: &str, reps: usize, flops: f64, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{name:40} {:8.1} ms {:7.1} GFLOP/s",
        s * 1e3,
        flops / s / 1e9
    );
}

fn main() -> candle_core::Result<()> {
    if std::env::args().any(|a| a == "--raw") {
        raw();
        return Ok(());
    }
    let dev = Device::Cpu;
    let n = 64;
    for (c_in, c_out, hw) in [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)] {
        let mut store = ParamStore::new(&dev, 0);
        let conv = Conv2d::new(&mut store, "c", c_in, c_out, 3, true).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (n, c_in, hw, hw), &dev)?)?;
        let g = Tensor::randn(0f32, 1f32, (n, c_out, hw, hw), &dev)?;
        let flops = 2.0 * (n * c_in * c_out * 9 * hw * hw) as f64;
        println!("-- {c_in}->{c_out} at {hw}x{hw}");
        time("ours: forward", 3, flops, || {
            conv.forward(x.as_tensor()).unwrap()
        });
        time("ours: forward + backward", 3, 3.0 * flops, || {
            let y = conv.forward(x.as_tensor()).unwrap();
            let gr = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            gr.get(x.as_tensor()).unwrap().clone()
        });
        let (w, b) = (conv.weight.as_tensor(), conv.bias.as_tensor());
        time("candle: forward", 2, flops, || {
            reference_conv(x.as_tensor(), w, b, 1, true).unwrap()
        });
        time("candle: forward + backward", 1, 3.0 * flops, || {
            let y = reference_conv(x.as_tensor(), w, b, 1, true).unwrap();
            let gr = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            gr.get(x.as_tensor()).unwrap().clone()
        });
    }
    Ok(())
}

type Fwd = fn(&denoise_ops::cpu_conv::ConvShape, &[f32], &[f32], &[f32], bool) -> Vec<f32>;
type Bwd =
    fn(&denoise_ops::cpu_conv::ConvShape, &[f32], &[f32], &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>);

/// The raw kernels on slices, without candle around them: Winograd against im2col. Run with glibc's allocator tuned as `denoise` does:
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647`.
#[allow(dead_code)]
pub fn raw() {
    use denoise_ops::cpu_conv::{backward_im2col, forward_im2col, ConvShape};
    use denoise_ops::winograd;
    let im2col_bwd =
        |s: &ConvShape, x: &[f32], w: &[f32], dy: &[f32]| backward_im2col(s, x, w, dy, None);
    // `--raw 8` runs only the 8x8 layer.
    let only: Option<usize> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    for (c_in, c_out, hw) in [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)] {
        if only.is_some_and(|o| o != hw) {
            continue;
        }
        let s = ConvShape {
            n: 64,
            c_in,
            c_out,
            h: hw,
            w: hw,
            k: 3,
        };
        let x: Vec<f32> = (0..64 * c_in * hw * hw)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..c_out * c_in * 9)
            .map(|i| (i % 5) as f32 * 0.01)
            .collect();
        let b = vec![0.1f32; c_out];
        let dy: Vec<f32> = (0..64 * c_out * hw * hw)
            .map(|i| (i % 3) as f32 * 0.1)
            .collect();
        for (name, fwd, bwd) in [
            // Winograd on every shape here, including the 4x4 one that `denoise` runs by im2col.
            (
                "winograd",
                winograd::forward::<f32> as Fwd,
                winograd::backward::<f32> as Bwd,
            ),
            ("im2col", forward_im2col::<f32>, im2col_bwd),
        ] {
            // Best of three, after one warm-up.
            let (mut tf, mut tb) = (f64::MAX, f64::MAX);
            for _ in 0..4 {
                let t = Instant::now();
                std::hint::black_box(fwd(&s, &x, &w, &b, true));
                tf = tf.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                std::hint::black_box(bwd(&s, &x, &w, &dy));
                tb = tb.min(t.elapsed().as_secs_f64());
            }
            println!(
                "raw {c_in:>3}->{c_out:<3} at {hw:>2}x{hw:<2} {name:9} forward {:6.1} ms, backward {:6.1} ms",
                tf * 1e3,
                tb * 1e3,
            );
        }
    }
}
