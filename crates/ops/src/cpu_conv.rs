//! CPU kernels for stride-1, "same"-padded convolutions: im2col + one gemm per group of images,
//! with bias and ReLU fused into the output pass, and a backward pass made of the same pieces
//! (`W^T x grad` then col2im for the input, `grad x cols^T` for the weight).
//!
//! Images are processed in groups whose columns make a gemm at least ~1,024 wide, so that the
//! small deep layers (4x4, 8x8) still run as large matrix products. Groups run in parallel on the
//! rayon pool when there are enough of them, otherwise gemm itself runs in parallel.

use rayon::prelude::*;

/// The float types the kernels run on.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// 0.5.
    const HALF: Self;
}
impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}
impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}

/// Shape of a convolution: `n` images of `c_in x h x w`, `c_out` kernels of `k x k`, padding `k / 2`.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Height (of the input and of the output).
    pub h: usize,
    /// Width (of the input and of the output).
    pub w: usize,
    /// Kernel side (odd).
    pub k: usize,
}

impl ConvShape {
    fn plane(&self) -> usize {
        self.h * self.w
    }
    fn kdim(&self) -> usize {
        self.c_in * self.k * self.k
    }
    /// Images per group: enough for a gemm about 1,024 columns wide.
    fn group(&self) -> usize {
        // Measured on 2 cores: 512, 1024, 2048 and 4096 columns; 1024 was fastest.
        (1024 / self.plane()).clamp(1, self.n.max(1))
    }
}

pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `c (m x n) = [c +] a (m x k) * b (k x n)` with explicit row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    accumulate: bool,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    par: bool,
) {
    assert!(c.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    let parallelism = if par {
        gemm::Parallelism::Rayon(threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every access of the three matrices inside their slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// For a row shifted by `dx` (output x reads source x + dx): the output columns `x0..x1` that
/// have a source pixel, and the first source column `s0`.
fn valid_cols(w: usize, dx: isize) -> (usize, usize, usize) {
    let x0 = (-dx).max(0) as usize;
    let x1 = (w as isize - dx).clamp(0, w as isize) as usize;
    let s0 = (x0 as isize + dx).max(0) as usize;
    (x0.min(w), x1, s0)
}

/// Columns of images `x[g]` (each `c_in x h x w`): `(c_in k k) x (g h w)`, row-major. With
/// `par`, the channels are filled in parallel.
fn im2col<T: Float>(s: &ConvShape, x: &[T], g: usize, cols: &mut [T], par: bool) {
    let (h, w, k) = (s.h, s.w, s.k);
    let p = s.plane();
    let width = g * p;
    let pad = (k / 2) as isize;
    // The k x k rows of channel `c`.
    let channel = |(c, rows): (usize, &mut [T])| {
        for ky in 0..k {
            for kx in 0..k {
                let dst_row = &mut rows[(ky * k + kx) * width..(ky * k + kx + 1) * width];
                let dx = kx as isize - pad;
                for img in 0..g {
                    let src = &x[img * s.c_in * p + c * p..img * s.c_in * p + (c + 1) * p];
                    let dst = &mut dst_row[img * p..(img + 1) * p];
                    for y in 0..h {
                        let sy = y as isize + ky as isize - pad;
                        let out = &mut dst[y * w..(y + 1) * w];
                        if sy < 0 || sy >= h as isize {
                            out.fill(T::ZERO);
                            continue;
                        }
                        let srow = &src[sy as usize * w..(sy as usize + 1) * w];
                        let (x0, x1, s0) = valid_cols(w, dx);
                        out[..x0].fill(T::ZERO);
                        if x1 > x0 {
                            out[x0..x1].copy_from_slice(&srow[s0..s0 + (x1 - x0)]);
                        }
                        out[x1.max(x0)..].fill(T::ZERO);
                    }
                }
            }
        }
    };
    let cols = &mut cols[..s.c_in * k * k * width];
    if par {
        cols.par_chunks_mut(k * k * width)
            .enumerate()
            .for_each(channel);
    } else {
        cols.chunks_mut(k * k * width).enumerate().for_each(channel);
    }
}

/// [`im2col`] transposed: `(g h w) x (c_in k k)`, one row per output pixel, so that the weight
/// gradient's gemm (summing over pixels) reads both operands without packing. With `par`, the
/// images are filled in parallel.
fn im2col_t<T: Float>(s: &ConvShape, x: &[T], g: usize, cols: &mut [T], par: bool) {
    let (h, w, k) = (s.h, s.w, s.k);
    let (p, kd) = (s.plane(), s.kdim());
    let pad = (k / 2) as isize;
    let image = |(img, rows): (usize, &mut [T])| {
        let src = &x[img * s.c_in * p..(img + 1) * s.c_in * p];
        for y in 0..h {
            for xo in 0..w {
                let row = &mut rows[(y * w + xo) * kd..(y * w + xo + 1) * kd];
                for c in 0..s.c_in {
                    let plane = &src[c * p..(c + 1) * p];
                    for ky in 0..k {
                        let out = &mut row[(c * k + ky) * k..(c * k + ky + 1) * k];
                        let sy = y as isize + ky as isize - pad;
                        if sy < 0 || sy >= h as isize {
                            out.fill(T::ZERO);
                            continue;
                        }
                        let srow = &plane[sy as usize * w..(sy as usize + 1) * w];
                        let sx0 = xo as isize - pad;
                        if sx0 >= 0 && sx0 as usize + k <= w {
                            // Inside the image: k neighbours in a row.
                            out.copy_from_slice(&srow[sx0 as usize..sx0 as usize + k]);
                            continue;
                        }
                        for (kx, o) in out.iter_mut().enumerate() {
                            let sx = xo as isize + kx as isize - pad;
                            *o = if sx < 0 || sx >= w as isize {
                                T::ZERO
                            } else {
                                srow[sx as usize]
                            };
                        }
                    }
                }
            }
        }
    };
    let cols = &mut cols[..g * p * kd];
    if par {
        cols.par_chunks_mut(p * kd).enumerate().for_each(image);
    } else {
        cols.chunks_mut(p * kd).enumerate().for_each(image);
    }
}

/// Adds columns back into images (the adjoint of [`im2col`]): `dx[g] += col2im(cols)`.
fn col2im<T: Float>(s: &ConvShape, cols: &[T], g: usize, dx: &mut [T], par: bool) {
    let (h, w, k) = (s.h, s.w, s.k);
    let p = s.plane();
    let width = g * p;
    let pad = (k / 2) as isize;
    // Plane `q` of `dx`: image `q / c_in`, channel `q % c_in`, from that channel's k x k rows.
    let plane = |(q, dst): (usize, &mut [T])| {
        let (img, c) = (q / s.c_in, q % s.c_in);
        for ky in 0..k {
            for kx in 0..k {
                let row = (c * k + ky) * k + kx;
                let src = &cols[row * width + img * p..row * width + (img + 1) * p];
                let dxo = kx as isize - pad;
                for y in 0..h {
                    let sy = y as isize + ky as isize - pad;
                    if sy < 0 || sy >= h as isize {
                        continue;
                    }
                    let (x0, x1, s0) = valid_cols(w, dxo);
                    if x1 <= x0 {
                        continue;
                    }
                    let drow = &mut dst[sy as usize * w + s0..sy as usize * w + s0 + (x1 - x0)];
                    for (d, v) in drow.iter_mut().zip(&src[y * w + x0..y * w + x1]) {
                        *d += *v;
                    }
                }
            }
        }
    };
    let dx = &mut dx[..g * s.c_in * p];
    if par {
        dx.par_chunks_mut(p).enumerate().for_each(plane);
    } else {
        dx.chunks_mut(p).enumerate().for_each(plane);
    }
}

/// `relu?(conv(x, w) + b)` by im2col + gemm, for every kernel size: `x` is `(n, c_in, h, w)`,
/// `w` is `(c_out, c_in, k, k)`, `b` is `(c_out)`. (The `winograd` module is faster for 3x3
/// kernels with enough channels; `conv::conv2d` picks.)
pub fn forward_im2col<T: Float>(s: &ConvShape, x: &[T], w: &[T], b: &[T], relu: bool) -> Vec<T> {
    let (p, kd, co) = (s.plane(), s.kdim(), s.c_out);
    let g = s.group();
    let mut out = vec![T::ZERO; s.n * co * p];
    let groups = s.n.div_ceil(g);
    let par_groups = groups >= threads();
    let run = |(gi, out_chunk): (usize, &mut [T])| {
        let n0 = gi * g;
        let gn = g.min(s.n - n0);
        let mut cols = vec![T::ZERO; kd * gn * p];
        im2col(s, &x[n0 * s.c_in * p..], gn, &mut cols, !par_groups);
        let mut tmp = vec![T::ZERO; co * gn * p];
        gemm(
            co,
            gn * p,
            kd,
            &mut tmp,
            false,
            w,
            kd,
            1,
            &cols,
            gn * p,
            1,
            !par_groups,
        );
        for img in 0..gn {
            for o in 0..co {
                let src = &tmp[o * gn * p + img * p..o * gn * p + (img + 1) * p];
                let dst = &mut out_chunk[(img * co + o) * p..(img * co + o + 1) * p];
                let bias = b[o];
                if relu {
                    for (d, v) in dst.iter_mut().zip(src) {
                        let t = *v + bias;
                        *d = if t > T::ZERO { t } else { T::ZERO };
                    }
                } else {
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = *v + bias;
                    }
                }
            }
        }
    };
    if par_groups {
        out.par_chunks_mut(g * co * p).enumerate().for_each(run);
    } else {
        out.chunks_mut(g * co * p).enumerate().for_each(run);
    }
    out
}

/// `dst = grad`, zeroed where `out` (a ReLU's output, if given) is not positive (PyTorch's
/// rule; NaN counts as not positive); returns the sum of `dst`, added in order.
pub(crate) fn masked_plane<T: Float>(dst: &mut [T], grad: &[T], out: Option<&[T]>) -> T {
    dst.copy_from_slice(grad);
    if let Some(out) = out {
        for (d, r) in dst.iter_mut().zip(out) {
            let positive = *r > T::ZERO;
            if !positive {
                *d = T::ZERO;
            }
        }
    }
    let mut acc = T::ZERO;
    for v in dst.iter() {
        acc += *v;
    }
    acc
}

/// The sums of per-group partial gradients `(dw, db)`, added in the order given (so that
/// results do not depend on thread scheduling), into `lens` zeros.
pub(crate) fn sum_parts<T: Float>(
    parts: impl IntoIterator<Item = (Vec<T>, Vec<T>)>,
    lens: (usize, usize),
) -> (Vec<T>, Vec<T>) {
    let (mut dw, mut db) = (vec![T::ZERO; lens.0], vec![T::ZERO; lens.1]);
    for (a, b) in parts {
        for (x, y) in dw.iter_mut().zip(&a) {
            *x += *y;
        }
        for (x, y) in db.iter_mut().zip(&b) {
            *x += *y;
        }
    }
    (dw, db)
}

/// The gradients `(dx, dw, db)` of [`forward_im2col`] from the output gradient `dy`, by
/// im2col and gemm. Where `relu_out` (the forward's output after its ReLU) is given, the gradient passes
/// only where it is positive (PyTorch's rule). Layers with fewer output channels than
/// input channels (and an odd kernel) take the columns of the output gradient instead: `c_out k
/// k` rows per pixel, not `c_in k k`.
pub fn backward_im2col<T: Float>(
    s: &ConvShape,
    x: &[T],
    w: &[T],
    dy: &[T],
    relu_out: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    if s.c_out < s.c_in && s.k % 2 == 1 {
        // One partial weight gradient per image, summed at the end: measured faster than
        // groups of images as below (cond-unet, whose layers of this kind are 1x1 and its last:
        // backward 537 / 509 / 511 against 584 / 547 / 546 ms), but kept to 16 M values in all;
        // above that, groups as below (as many partials as there).
        let per_part = if s.n * s.c_in * s.c_out * s.k * s.k <= 16 << 20 {
            1
        } else {
            s.group()
        };
        return backward_out_cols(s, x, w, dy, relu_out, per_part);
    }
    backward_in_cols(s, x, w, dy, relu_out)
}

/// [`backward_im2col`] from the columns of the input (`c_in k k` rows per pixel).
fn backward_in_cols<T: Float>(
    s: &ConvShape,
    x: &[T],
    w: &[T],
    dy: &[T],
    relu_out: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (p, kd, co) = (s.plane(), s.kdim(), s.c_out);
    let g = s.group();
    let groups = s.n.div_ceil(g);
    let par_groups = groups >= threads();
    let mut dx = vec![T::ZERO; s.n * s.c_in * p];
    // One (dw, db) accumulator per group, summed at the end.
    let run = |(gi, dx_chunk): (usize, &mut [T])| -> (Vec<T>, Vec<T>) {
        let n0 = gi * g;
        let gn = g.min(s.n - n0);
        // The group's output gradient as (c_out, gn p), masked by the ReLU.
        let mut gy = vec![T::ZERO; co * gn * p];
        let mut db = vec![T::ZERO; co];
        for img in 0..gn {
            for o in 0..co {
                let plane = ((n0 + img) * co + o) * p..((n0 + img) * co + o + 1) * p;
                let dst = &mut gy[o * gn * p + img * p..o * gn * p + (img + 1) * p];
                let out = relu_out.map(|r| &r[plane.clone()]);
                db[o] += masked_plane(dst, &dy[plane], out);
            }
        }
        let mut cols = vec![T::ZERO; kd * gn * p];
        // The columns transposed, one row per pixel: with both operands contiguous along the
        // pixels that it sums over, gemm packs one first (512 -> 512 at 4x4: 15.3 ms against
        // 10.9 ms this way).
        im2col_t(s, &x[n0 * s.c_in * p..], gn, &mut cols, !par_groups);
        // dw (c_out x kd) = gy (c_out x gn p) * cols^T (gn p x kd)
        let mut dw = vec![T::ZERO; co * kd];
        gemm(
            co,
            kd,
            gn * p,
            &mut dw,
            false,
            &gy,
            gn * p,
            1,
            &cols,
            kd,
            1,
            !par_groups,
        );
        // dcols (kd x gn p) = w^T (kd x c_out) * gy (c_out x gn p), reusing the columns buffer
        gemm(
            kd,
            gn * p,
            co,
            &mut cols,
            false,
            w,
            1,
            kd,
            &gy,
            gn * p,
            1,
            !par_groups,
        );
        col2im(s, &cols, gn, dx_chunk, !par_groups);
        (dw, db)
    };
    let (dw, db) = if par_groups {
        let parts: Vec<(Vec<T>, Vec<T>)> = dx
            .par_chunks_mut(g * s.c_in * p)
            .enumerate()
            .map(run)
            .collect();
        sum_parts(parts, (co * kd, co))
    } else {
        sum_parts(
            dx.chunks_mut(g * s.c_in * p).enumerate().map(run),
            (co * kd, co),
        )
    };
    (dx, dw, db)
}

/// [`backward_im2col`] from the columns of the output gradient: `c_out k k` rows per pixel
/// where the input's have `c_in k k`, so that a layer such as a network's last (64 -> 3
/// channels) does not write and read nine copies of its input. With `G` those columns of one
/// image (the gradient shifted by `pad - ky`, `pad - kx`, as [`im2col`] shifts by the flipped
/// offsets) and `W'[c][(o, ky, kx)] = w[o][c][k-1-ky][k-1-kx]`:
/// `dx = W' G` and `dW' = Σ_images x Gᵀ`. Odd kernels only (`pad = (k - 1) / 2`).
fn backward_out_cols<T: Float>(
    s: &ConvShape,
    x: &[T],
    w: &[T],
    dy: &[T],
    relu_out: Option<&[T]>,
    per_part: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (p, k, ci, co) = (s.plane(), s.k, s.c_in, s.c_out);
    let kd = co * k * k;
    let flip =
        |o: usize, c: usize, ky: usize, kx: usize| ((o * ci + c) * k + k - 1 - ky) * k + k - 1 - kx;
    let mut wr = vec![T::ZERO; ci * kd];
    for o in 0..co {
        for c in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    wr[c * kd + (o * k + ky) * k + kx] = w[flip(o, c, ky, kx)];
                }
            }
        }
    }
    // The gradient as the input of a convolution with `c_out` channels, for `im2col`.
    let gs = ConvShape {
        c_in: co,
        c_out: ci,
        ..*s
    };
    // Groups of `per_part` images, each with its partial weight gradient; in parallel when
    // there are enough, else their gemms are.
    let par_groups = s.n.div_ceil(per_part) >= threads();
    let mut dx = vec![T::ZERO; s.n * ci * p];
    // One group: its images' dx in place; returns its dW' and its bias gradient.
    let group = |(gi, dxg): (usize, &mut [T])| -> (Vec<T>, Vec<T>) {
        let mut dwr = vec![T::ZERO; ci * kd];
        let mut db = vec![T::ZERO; co];
        let mut cols = vec![T::ZERO; kd * p];
        let mut g = vec![T::ZERO; co * p];
        for (i, dxi) in dxg.chunks_mut(ci * p).enumerate() {
            let img = gi * per_part + i;
            for (o, dst) in g.chunks_mut(p).enumerate() {
                let plane = (img * co + o) * p..(img * co + o + 1) * p;
                let out = relu_out.map(|r| &r[plane.clone()]);
                db[o] += masked_plane(dst, &dy[plane], out);
            }
            im2col(&gs, &g, 1, &mut cols, !par_groups);
            // dx (c_in x p) = W' (c_in x kd) * G (kd x p)
            gemm(ci, p, kd, dxi, false, &wr, kd, 1, &cols, p, 1, !par_groups);
            // dW' (c_in x kd) += x (c_in x p) * G^T (p x kd)
            let xi = &x[img * ci * p..(img + 1) * ci * p];
            gemm(
                ci,
                kd,
                p,
                &mut dwr,
                i > 0,
                xi,
                p,
                1,
                &cols,
                1,
                p,
                !par_groups,
            );
        }
        (dwr, db)
    };
    let chunk = per_part * ci * p;
    let (dwr, db) = if par_groups {
        let parts: Vec<(Vec<T>, Vec<T>)> =
            dx.par_chunks_mut(chunk).enumerate().map(group).collect();
        sum_parts(parts, (ci * kd, co))
    } else {
        sum_parts(dx.chunks_mut(chunk).enumerate().map(group), (ci * kd, co))
    };
    let mut dw = vec![T::ZERO; co * ci * k * k];
    for o in 0..co {
        for c in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    dw[flip(o, c, ky, kx)] = dwr[c * kd + (o * k + ky) * k + kx];
                }
            }
        }
    }
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways to the gradients of a layer with fewer outputs than inputs agree: from the
    /// input's columns and from the output gradient's, one image per partial weight gradient or
    /// several (with and without the ReLU mask, one and several groups).
    #[test]
    fn output_columns_match_input_columns() {
        for (n, c_in, c_out, h, w, k) in
            [(3, 6, 2, 5, 7, 3), (5, 8, 3, 12, 10, 3), (4, 5, 2, 6, 6, 5)]
        {
            let s = ConvShape {
                n,
                c_in,
                c_out,
                h,
                w,
                k,
            };
            let vals = crate::test_values;
            let x = vals(n * c_in * h * w, 1);
            let wt = vals(c_out * c_in * k * k, 2);
            let dy = vals(n * c_out * h * w, 3);
            let out = vals(n * c_out * h * w, 4);
            for relu_out in [None, Some(&out[..])] {
                let want = backward_in_cols(&s, &x, &wt, &dy, relu_out);
                for per_part in [1, 2, s.group()] {
                    let got = backward_out_cols(&s, &x, &wt, &dy, relu_out, per_part);
                    for (a, b) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
                        let e = a.iter().zip(b).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
                        assert!(e < 1e-12, "{s:?}, {per_part} per part: {e}");
                    }
                }
            }
        }
    }
}
