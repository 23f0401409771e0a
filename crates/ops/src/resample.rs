//! cond-unet's changes of resolution: 2x nearest-neighbour upsampling ([`up2x`]) and 2x2
//! average pooling ([`avg_pool2x2`]) of `(N, C, H, W)` tensors.
//!
//! From candle's ops each is a broadcast copy or two mean reductions that run on one thread,
//! forward and backward; on the CPU (f32 and f64) each is here one op that runs over the planes
//! in parallel. The two are each other's adjoint up to a factor: the gradient of an upsampling
//! sums each 2x2 block of the output's gradient, that of a pooling spreads a quarter of it over
//! the block, so one op (`Resample2x`) with a direction and a scale serves all four passes.
//! Other devices and half precision keep candle's ops (on CUDA those are single kernels already).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_conv::Float;
use candle_core::Result;

/// Nearest-neighbour 2x upsampling: each pixel becomes a 2x2 block.
pub fn up2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if on_cpu(x) {
        return x.contiguous()?.apply_op1(Resample2x::UP);
    }
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((n, c, 2 * h, 2 * w))
}

/// 2x2 average pooling with stride 2 (planes of even height and width).
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if on_cpu(x) && h % 2 == 0 && w % 2 == 0 {
        return x.contiguous()?.apply_op1(Resample2x::POOL);
    }
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.mean(5)?.mean(3)
}

fn on_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && crate::operands::own_kernels_for(x) && x.elem_count() > 0
}

/// `up`: each value (times 1/4 if `quarter`) copied into a 2x2 block; else each 2x2 block
/// summed (times 1/4 if `quarter`).
#[derive(Debug, Clone, Copy)]
struct Resample2x {
    up: bool,
    quarter: bool,
}

impl Resample2x {
    const UP: Self = Self {
        up: true,
        quarter: false,
    };
    const POOL: Self = Self {
        up: false,
        quarter: true,
    };

    fn run<T: Float>(&self, x: &[T], (h, w): (usize, usize)) -> Vec<T> {
        let scale = if self.quarter {
            T::HALF * T::HALF
        } else {
            T::ONE
        };
        let (oh, ow) = if self.up {
            (2 * h, 2 * w)
        } else {
            (h / 2, w / 2)
        };
        let planes = x.len() / (h * w);
        let mut out = vec![T::ZERO; planes * oh * ow];
        // At least 16 Ki values a task, so that small layers do not pay for scheduling.
        let min_planes = (16_384 / (h * w)).max(1);
        out.par_chunks_mut(oh * ow)
            .with_min_len(min_planes)
            .zip(x.par_chunks(h * w).with_min_len(min_planes))
            .for_each(|(dst, src)| {
                if self.up {
                    for (y, row) in src.chunks_exact(w).enumerate() {
                        let (top, bottom) = dst[2 * y * ow..(2 * y + 2) * ow].split_at_mut(ow);
                        for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                            pair.fill(v * scale);
                        }
                        bottom.copy_from_slice(top);
                    }
                } else {
                    for (y, row) in dst.chunks_exact_mut(ow).enumerate() {
                        let (r0, r1) = src[2 * y * w..(2 * y + 2) * w].split_at(w);
                        for (xo, d) in row.iter_mut().enumerate() {
                            // The order of candle's `mean(5).mean(3)`: rows' pairs first.
                            let (a, b) = (r0[2 * xo] + r0[2 * xo + 1], r1[2 * xo] + r1[2 * xo + 1]);
                            *d = (a + b) * scale;
                        }
                    }
                }
            });
        out
    }
}

impl CustomOp1 for Resample2x {
    fn name(&self) -> &'static str {
        if self.up {
            "up-2x"
        } else {
            "avg-pool-2x2"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = self.name();
        let (n, c, h, w) = l.shape().dims4()?;
        if !self.up && (h % 2 != 0 || w % 2 != 0) {
            candle_core::bail!("{what}: {h}x{w} planes are not even");
        }
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(self.run(crate::operands::contiguous(v, l, what)?, (h, w)))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(self.run(crate::operands::contiguous(v, l, what)?, (h, w)))
            }
            _ => candle_core::bail!("{what}: only f32 and f64"),
        };
        let (oh, ow) = if self.up {
            (2 * h, 2 * w)
        } else {
            (h / 2, w / 2)
        };
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let adjoint = Self {
            up: !self.up,
            ..*self
        };
        Ok(Some(grad.contiguous()?.apply_op1(adjoint)?))
    }
}
