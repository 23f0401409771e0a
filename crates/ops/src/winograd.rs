//! 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3), forward
//! and backward, on the CPU.
//!
//! Each 2x2 block of outputs is computed from the 4x4 input tile around it: the tile and the
//! kernel are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied element by element and summed
//! over input channels, and transformed back (`Y = Aᵀ M A`). Summing over channels at each of the
//! 16 tile positions is a matrix product, so a layer becomes 16 gemms of
//! `(c_out x c_in) x (c_in x tiles)`: 16 multiplications per 4 outputs instead of 36, 2.25x
//! fewer than im2col + gemm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016).
//!
//! The backward pass is the same algebra run in reverse: with `dM = A dY Aᵀ`, the input's
//! gradient is `B (Uᵀ dM) Bᵀ` added back into the overlapping tiles, and the kernel's is
//! `Gᵀ (Σ_tiles dM Vᵀ) G`; so it too is 16 + 16 gemms with 2.25x fewer multiplications.
//!
//! Images are processed in groups of about `TILES_PER_GROUP` tiles so that the transformed
//! tiles stay in cache between the transforms and the gemms. Groups run in parallel when there
//! are at least as many as threads; otherwise the 16 gemms of a group run in parallel. The
//! forward pass of a plane of 1,024 tiles or more (64x64 pixels) runs in bands of whole tile
//! rows instead, about `TILES_PER_GROUP` tiles each, all bands in parallel (`forward_bands`):
//! a single large image keeps every thread busy in the transforms too.

// The transforms index small fixed arrays by lane and by tile row and column.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use crate::cpu_conv::{gemm, sum_parts, threads, ConvShape, Float};
pub use crate::winograd_tiles::transform_kernels;
use crate::winograd_tiles::{
    kernel_grads, padded, point_stride, tiles, transform_input, transform_input_grad,
    transform_input_t, transform_output, transform_output_grad,
};

/// Tiles per group; each group's transformed input is `16 x c_in x tiles` values.
const TILES_PER_GROUP: usize = 512;

/// Whether a convolution of this shape goes through Winograd: 3x3 kernels with enough channels
/// for the gemms to pay (the 3-channel first layer stays on im2col) and planes of at least 8x8
/// (4x4 planes were left on im2col when the transforms still ran 8 lanes on 2-tile-wide rows,
/// where Winograd was slower: `conv_profile --raw`, 512->512 at 4x4, 71 ms forward against 54;
/// with 4 lanes it measured about even to 15 % faster, within this machine's noise, and is not
/// yet switched on).
///
/// `DENOISE_CONV=im2col` in the environment turns Winograd off (to compare the two).
pub fn applies(s: &ConvShape) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("DENOISE_CONV").is_ok_and(|v| v == "im2col"));
    !off && s.k == 3 && s.c_in >= 8 && s.c_out >= 8 && s.h >= 8 && s.w >= 8
}

/// Bytes of transformed input and products (`16 x (c_in + c_out) x tiles` f32 values) that a
/// group may hold: wide layers get fewer tiles than [`TILES_PER_GROUP`], so that the groups of
/// both threads stay in the shared cache. `conv_profile --raw` on 2 cores of an AVX-512 EPYC, three
/// runs each, 512 tiles against 256 for 256 -> 256 channels at 8x8 (16 MiB a group against 8):
/// forward 11.2-11.4 -> 9.8-10.1 ms, backward 18.6-19.1 -> 16.4-16.5 ms; 128 -> 128 at 16x16
/// (8 MiB at 512 tiles) kept its 512, which measured as fast as 256 or faster.
const GROUP_BYTES: usize = 8 << 20;

/// Images per group: about [`TILES_PER_GROUP`] tiles, fewer for wide layers ([`GROUP_BYTES`]).
fn group(s: &ConvShape) -> usize {
    let (th, tw) = tiles(s);
    let per_tile = 16 * (s.c_in + s.c_out) * std::mem::size_of::<f32>();
    let tiles = TILES_PER_GROUP.min(GROUP_BYTES / per_tile);
    (tiles / (th * tw)).clamp(1, s.n.max(1))
}

/// `M[p] = U[p] V[p]` for the 16 tile positions: `(c_out x c_in) x (c_in x t)`.
fn multiply<T: Float>(s: &ConvShape, u: &[T], v: &[T], m: &mut [T], t: usize, par: bool) {
    let (ci, co) = (s.c_in, s.c_out);
    let one = |(pt, mp): (usize, &mut [T])| {
        let (us, vs) = (point_stride(co * ci), point_stride(ci * t));
        let up = &u[pt * us..pt * us + co * ci];
        let vp = &v[pt * vs..pt * vs + ci * t];
        gemm(co, t, ci, mp, false, up, ci, 1, vp, t, 1, false);
    };
    if par {
        m.par_chunks_mut(point_stride(co * t))
            .enumerate()
            .for_each(one);
    } else {
        m.chunks_mut(point_stride(co * t)).enumerate().for_each(one);
    }
}

/// Forward pass for one group: tile rows `rows` of `gn` images, from `x` (whole images) into
/// `out` (the image rows those tiles cover, as [`transform_output`] lays them out).
#[allow(clippy::too_many_arguments)]
fn forward_group<T: Float>(
    s: &ConvShape,
    x: &[T],
    u: &[T],
    bias: &[T],
    relu: bool,
    (gn, rows): (usize, (usize, usize)),
    out: &mut [T],
    scratch: &mut Scratch<T>,
    par: bool,
) {
    let (_, tw) = tiles(s);
    let t = gn * (rows.1 - rows.0) * tw;
    scratch.ensure(
        s,
        16 * point_stride(s.c_in * t),
        16 * point_stride(s.c_out * t),
    );
    let Scratch { v, m, pad } = scratch;
    transform_input(s, x, gn, rows, v, pad);
    multiply(s, u, v, m, t, par);
    transform_output(s, m, bias, relu, rows, out);
}

/// Reused buffers: transformed input, products, one padded plane.
struct Scratch<T> {
    v: Vec<T>,
    m: Vec<T>,
    pad: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new() -> Self {
        Self {
            v: Vec::new(),
            m: Vec::new(),
            pad: Vec::new(),
        }
    }

    fn ensure(&mut self, s: &ConvShape, v: usize, m: usize) {
        let (ph, pw) = padded(s);
        for (buf, len) in [(&mut self.v, v), (&mut self.m, m), (&mut self.pad, ph * pw)] {
            buf.resize(len, T::ZERO);
        }
    }
}

/// `relu?(conv3x3(x, w) + b)` by Winograd F(2x2, 3x3); same contract as [`crate::cpu_conv::forward_im2col`].
pub fn forward<T: Float>(s: &ConvShape, x: &[T], w: &[T], bias: &[T], relu: bool) -> Vec<T> {
    forward_with(s, x, &transform_kernels(s, w), bias, relu)
}

/// [`forward`] with the kernels already transformed by [`transform_kernels`].
pub fn forward_with<T: Float>(s: &ConvShape, x: &[T], u: &[T], bias: &[T], relu: bool) -> Vec<T> {
    debug_assert!(s.k == 3);
    let p = s.h * s.w;
    let (th, tw) = tiles(s);
    if th * tw >= 2 * TILES_PER_GROUP {
        return forward_bands(s, x, u, bias, relu);
    }
    let gsz = group(s);
    let mut out = vec![T::ZERO; s.n * s.c_out * p];
    let groups = s.n.div_ceil(gsz);
    let chunk = gsz * s.c_out * p;
    let run = |scratch: &mut Scratch<T>, (gi, o): (usize, &mut [T]), par: bool| {
        let xg = &x[gi * gsz * s.c_in * p..];
        let gn = o.len() / (s.c_out * p);
        forward_group(s, xg, u, bias, relu, (gn, (0, th)), o, scratch, par);
    };
    if groups >= threads() {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Scratch::new, |sc, item| run(sc, item, false));
    } else {
        let mut sc = Scratch::new();
        for item in out.chunks_mut(chunk).enumerate() {
            run(&mut sc, item, true);
        }
    }
    out
}

/// [`forward_with`] for large planes: each image in bands of about [`TILES_PER_GROUP`] tiles
/// (whole tile rows), all bands of all images in parallel, so that the transforms run on every
/// thread and each band's transformed tiles stay in cache; the bands' outputs are then copied
/// into place. The same tiles as in one piece, so the same result, bit for bit.
fn forward_bands<T: Float>(s: &ConvShape, x: &[T], u: &[T], bias: &[T], relu: bool) -> Vec<T> {
    let (p, co) = (s.h * s.w, s.c_out);
    let (th, tw) = tiles(s);
    let band = (TILES_PER_GROUP / tw).max(1);
    let items: Vec<(usize, (usize, usize))> = (0..s.n)
        .flat_map(|img| {
            (0..th)
                .step_by(band)
                .map(move |r0| (img, (r0, (r0 + band).min(th))))
        })
        .collect();
    let parts: Vec<Vec<T>> = items
        .par_iter()
        .map_init(Scratch::new, |scratch, &(img, rows)| {
            let bh = (2 * rows.1).min(s.h) - 2 * rows.0;
            let mut o = vec![T::ZERO; co * bh * s.w];
            let xi = &x[img * s.c_in * p..(img + 1) * s.c_in * p];
            forward_group(s, xi, u, bias, relu, (1, rows), &mut o, scratch, false);
            o
        })
        .collect();
    // Each output plane gathered from its image's bands, planes in parallel; not zeroed first.
    let per_image = th.div_ceil(band);
    let mut out = Vec::with_capacity(s.n * co * p);
    out.spare_capacity_mut()
        .par_chunks_mut(p)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (img, o) = (plane / co, plane % co);
            for b in img * per_image..(img + 1) * per_image {
                let (part, r0) = (&parts[b], items[b].1 .0);
                let len = part.len() / co;
                let rows = &mut dst[2 * r0 * s.w..2 * r0 * s.w + len];
                for (d, v) in rows.iter_mut().zip(&part[o * len..(o + 1) * len]) {
                    d.write(*v);
                }
            }
        });
    // SAFETY: the bands of each image cover its rows `0 .. h` one after another, so every
    // element of every plane was written above.
    unsafe { out.set_len(s.n * co * p) };
    out
}

/// Backward pass for one group: writes the input gradient into `dx` (the group's images) and
/// returns the group's `dU` (`[16][c_out][c_in]`) and bias gradient.
#[allow(clippy::too_many_arguments)]
fn backward_group<T: Float>(
    s: &ConvShape,
    x: &[T],
    u: &[T],
    dy: &[T],
    relu_out: Option<&[T]>,
    dx: &mut [T],
    scratch: &mut Scratch<T>,
    par: bool,
) -> (Vec<T>, Vec<T>) {
    let (th, tw) = tiles(s);
    let (ci, co) = (s.c_in, s.c_out);
    let gn = dx.len() / (ci * s.h * s.w);
    let t = gn * th * tw;
    let (us, vs, ms) = (
        point_stride(co * ci),
        point_stride(ci * t),
        point_stride(co * t),
    );
    scratch.ensure(s, 16 * vs, 16 * ms);
    let Scratch { v, m, pad } = scratch;
    let mut db = vec![T::ZERO; co];
    transform_output_grad(s, dy, relu_out, gn, m, &mut db);
    // V transposed (`t x c_in`), so that the gemm below need not pack it: with both operands
    // contiguous along the tiles it ran at half speed (64 channels: 108 against 229 GFLOP/s).
    let (ph, pw) = padded(s);
    if pad.len() < ci * ph * pw {
        pad.resize(ci * ph * pw, T::ZERO);
    }
    transform_input_t(s, x, gn, v, pad);
    // dU[p] = dM[p] V[p]ᵀ: (c_out x t) x (t x c_in)
    let mut du = vec![T::ZERO; 16 * us];
    let (m, v_ref): (&[T], &[T]) = (m, v);
    let weight_grad = |(pt, dup): (usize, &mut [T])| {
        let mp = &m[pt * ms..pt * ms + co * t];
        let vp = &v_ref[pt * vs..pt * vs + ci * t];
        gemm(co, ci, t, dup, false, mp, t, 1, vp, ci, 1, false);
    };
    if par {
        du.par_chunks_mut(us).enumerate().for_each(weight_grad);
    } else {
        du.chunks_mut(us).enumerate().for_each(weight_grad);
    }
    // dV[p] = U[p]ᵀ dM[p]: (c_in x c_out) x (c_out x t), into the V buffer.
    let input_grad = |(pt, dvp): (usize, &mut [T])| {
        let up = &u[pt * us..pt * us + co * ci];
        let mp = &m[pt * ms..pt * ms + co * t];
        gemm(ci, t, co, dvp, false, up, 1, ci, mp, t, 1, false);
    };
    if par {
        v.par_chunks_mut(vs).enumerate().for_each(input_grad);
    } else {
        v.chunks_mut(vs).enumerate().for_each(input_grad);
    }
    transform_input_grad(s, v, dx, pad);
    (du, db)
}

/// Gradients `(dx, dw, db)` from the output gradient `dy` (already masked by any ReLU), as
/// [`crate::cpu_conv::backward_im2col`] with no `relu_out`.
pub fn backward<T: Float>(s: &ConvShape, x: &[T], w: &[T], dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    backward_with(s, x, &transform_kernels(s, w), dy, None)
}

/// [`backward`] with the kernels already transformed by [`transform_kernels`], and `dy` not yet
/// masked: where `relu_out` (the forward's output after its ReLU) is given, the gradient passes
/// only where it is positive.
pub fn backward_with<T: Float>(
    s: &ConvShape,
    x: &[T],
    u: &[T],
    dy: &[T],
    relu_out: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    debug_assert!(s.k == 3);
    let (ci, co) = (s.c_in, s.c_out);
    let p = s.h * s.w;
    let gsz = group(s);
    let mut dx = vec![T::ZERO; s.n * ci * p];
    let groups = s.n.div_ceil(gsz);
    let run = |scratch: &mut Scratch<T>, (gi, d): (usize, &mut [T]), par: bool| {
        let n0 = gi * gsz;
        let xg = &x[n0 * ci * p..];
        let dyg = &dy[n0 * co * p..];
        let outg = relu_out.map(|r| &r[n0 * co * p..]);
        backward_group(s, xg, u, dyg, outg, d, scratch, par)
    };
    // One dU and db per group, summed in group order so that results do not depend on
    // scheduling.
    let parts: Vec<(Vec<T>, Vec<T>)> = if groups >= threads() {
        dx.par_chunks_mut(gsz * ci * p)
            .enumerate()
            .map_init(Scratch::new, |sc, item| run(sc, item, false))
            .collect()
    } else {
        let mut sc = Scratch::new();
        dx.chunks_mut(gsz * ci * p)
            .enumerate()
            .map(|item| run(&mut sc, item, true))
            .collect()
    };
    let (du, db) = sum_parts(parts, (16 * point_stride(co * ci), co));
    (dx, kernel_grads(s, &du), db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Level;

    /// Every SIMD copy of the transforms, at its own lane count (4, 8 or 16 tiles), gives the
    /// same bits: the lanes are tiles, each computed alone, and the bias gradient is summed in
    /// the same order whatever the lane count.
    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let _lock = crate::simd::TEST_LOCK.lock();
        // Planes 4, 7, 16 and 35 tiles wide (the last with partial lanes), and one in bands.
        for (n, c_in, c_out, h, w) in [
            (3, 8, 16, 8, 8),
            (2, 16, 8, 16, 14),
            (2, 8, 8, 32, 32),
            (1, 8, 12, 9, 70),
            (1, 8, 8, 66, 64),
        ] {
            let s = ConvShape {
                n,
                c_in,
                c_out,
                h,
                w,
                k: 3,
            };
            let vals = |len: usize, seed: u64| -> Vec<f32> {
                crate::test_values(len, seed)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect()
            };
            let x = vals(n * c_in * h * w, 1);
            let k = vals(c_out * c_in * 9, 2);
            let b = vals(c_out, 3);
            let dy = vals(n * c_out * h * w, 4);
            let run = |level: Level| {
                level.run(|| {
                    let y = forward(&s, &x, &k, &b, true);
                    let (dx, dw, db) = backward(&s, &x, &k, &dy);
                    [y, dx, dw, db]
                })
            };
            let levels = Level::all();
            let first = run(levels[0]);
            for &level in &levels[1..] {
                let other = run(level);
                for (name, a, b) in [("y", 0), ("dx", 1), ("dw", 2), ("db", 3)]
                    .map(|(name, i)| (name, &first[i], &other[i]))
                {
                    let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "{name} of {s:?} differs at {level:?}");
                }
            }
        }
    }
}
