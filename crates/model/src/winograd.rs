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
use crate::simd::Level;

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

/// Tiles along each axis: outputs are covered by 2x2 blocks, the last one cut at an odd edge.
fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.h.div_ceil(2), s.w.div_ceil(2))
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

/// `Bᵀ d` on rows (or `d B` on columns): the input transform's 1-D step.
#[inline(always)]
fn bt<T: Float>(d: [T; 4]) -> [T; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `B v`: the adjoint of [`bt`].
#[inline(always)]
fn b<T: Float>(v: [T; 4]) -> [T; 4] {
    [v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], T::ZERO - v[3]]
}

/// `G g` for a kernel row or column of 3.
#[inline(always)]
fn g<T: Float>(k: [T; 3]) -> [T; 4] {
    let h = T::HALF;
    [
        k[0],
        h * (k[0] + k[1] + k[2]),
        h * (k[0] - k[1] + k[2]),
        k[2],
    ]
}

/// `Gᵀ u`: the adjoint of [`g`].
#[inline(always)]
fn gt<T: Float>(u: [T; 4]) -> [T; 3] {
    let h = T::HALF;
    [
        u[0] + h * (u[1] + u[2]),
        h * (u[1] - u[2]),
        h * (u[1] + u[2]) + u[3],
    ]
}

/// `Aᵀ m`: the output transform's 1-D step.
#[inline(always)]
fn at<T: Float>(m: [T; 4]) -> [T; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// `A y`: the adjoint of [`at`].
#[inline(always)]
fn a<T: Float>(y: [T; 2]) -> [T; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], T::ZERO - y[1]]
}

/// Most tiles handled together in the transforms: one AVX-512 register of f32. The transforms
/// run `N` = 16 lanes on planes at least 16 tiles wide (32x32) where the CPU has AVX-512 (f32
/// only), 4 where a plane is 4 tiles wide (8x8), and 8 otherwise, so that lanes are seldom
/// partial and fill a register.
const L: usize = 16;

/// Distance between the 16 matrices of a transformed layout holding `len` values each: a little
/// more than `len`, so that the 16 streams a transform reads or writes at once do not all fall
/// in the same cache sets when `len` is a power of two.
fn point_stride(len: usize) -> usize {
    len + 32
}

/// `n <= N` values from `src[at..]`, zero-filled.
#[inline(always)]
fn load<T: Float, const N: usize>(src: &[T], at: usize, n: usize) -> [T; N] {
    let mut a = [T::ZERO; N];
    if n == N {
        a.copy_from_slice(&src[at..at + N]);
    } else {
        for (d, s) in a.iter_mut().zip(&src[at..at + n]) {
            *d = *s;
        }
    }
    a
}

/// Lanes `k0 .. k0 + n` of the 16 matrices of a transformed layout (`stride` apart) at offset
/// `at`: one tile per lane, its 16 values row-major.
#[inline(always)]
fn load_tiles<T: Float, const N: usize>(
    src: &[T],
    stride: usize,
    at: usize,
    n: usize,
) -> [[T; N]; 16] {
    let mut x = [[T::ZERO; N]; 16];
    for i in 0..16 {
        x[i] = load(src, i * stride + at, n);
    }
    x
}

/// The first `n <= N` lanes into `dst[at..]`.
#[inline(always)]
fn store<T: Float, const N: usize>(dst: &mut [T], at: usize, n: usize, v: &[T; N]) {
    if n == N {
        dst[at..at + N].copy_from_slice(v);
    } else {
        dst[at..at + n].copy_from_slice(&v[..n]);
    }
}

/// A 1-D transform of `M` inputs to `K` outputs applied lane by lane.
#[inline(always)]
fn lanes<T: Float, const M: usize, const K: usize, const N: usize>(
    f: impl Fn([T; M]) -> [T; K],
    x: [[T; N]; M],
) -> [[T; N]; K] {
    let mut out = [[T::ZERO; N]; K];
    for l in 0..N {
        let mut a = [T::ZERO; M];
        for i in 0..M {
            a[i] = x[i][l];
        }
        let v = f(a);
        for j in 0..K {
            out[j][l] = v[j];
        }
    }
    out
}

/// `f` along the rows of 4x4 tiles (16 lanes arrays, row-major), then along their columns:
/// `out[i][j]` for `i, j < K`, the separable 2-D transform `F d Fᵀ` of each tile.
#[inline(always)]
fn tile_2d<T: Float, const K: usize, const N: usize>(
    f: impl Fn([T; 4]) -> [T; K] + Copy,
    x: &[[T; N]; 16],
) -> [[[T; N]; K]; K] {
    let mut r = [[[T::ZERO; N]; K]; 4];
    for i in 0..4 {
        r[i] = lanes(f, [x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]]);
    }
    let mut out = [[[T::ZERO; N]; K]; K];
    for j in 0..K {
        let col = lanes(f, [r[0][j], r[1][j], r[2][j], r[3][j]]);
        for i in 0..K {
            out[i][j] = col[i];
        }
    }
    out
}

/// Defines `fn $name` that runs `$body` with 16, 8 or 4 lanes (see [`L`]), compiled for
/// AVX-512 or AVX2 where the CPU has them ([`Level`]) so that the lanes are one register wide.
/// `$body` and everything it calls are `#[inline(always)]`, so that they are compiled into each
/// copy. The lanes are tiles, each computed alone, so the lane count changes no result.
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident => $body:ident ($s:ident: $sty:ty, $($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        fn $name<T: Float>($s: $sty, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,fma")]
            fn avx2<T: Float, const N: usize>($s: $sty, $($arg: $ty),*) {
                $body::<T, N>($s, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx,avx2,fma,avx512f")]
            fn avx512<T: Float, const N: usize>($s: $sty, $($arg: $ty),*) {
                $body::<T, N>($s, $($arg),*)
            }
            fn run<T: Float, const N: usize>(level: Level, $s: $sty, $($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                match level {
                    // SAFETY: the CPU has the features each copy is compiled for.
                    Level::Avx512 => return unsafe { avx512::<T, N>($s, $($arg),*) },
                    Level::Avx2 => return unsafe { avx2::<T, N>($s, $($arg),*) },
                    Level::Baseline => {}
                }
                let _ = level;
                $body::<T, N>($s, $($arg),*)
            }
            let level = Level::get();
            let tw = tiles($s).1;
            if tw <= 4 {
                run::<T, 4>(level, $s, $($arg),*)
            } else if tw >= L && level == Level::Avx512 && std::mem::size_of::<T>() == 4 {
                run::<T, L>(level, $s, $($arg),*)
            } else {
                run::<T, 8>(level, $s, $($arg),*)
            }
        }
    };
}

/// `U = G g Gᵀ` for every kernel of `w` (`(c_out, c_in, 3, 3)`): the transformed kernels that
/// [`forward_with`] and [`backward_with`] take, so that a caller can compute them once for both.
pub fn transform_kernels<T: Float>(s: &ConvShape, w: &[T]) -> Vec<T> {
    let (ci, co) = (s.c_in, s.c_out);
    let us = point_stride(co * ci);
    let mut u = vec![T::ZERO; 16 * us];
    for o in 0..co {
        for i in 0..ci {
            let k = &w[(o * ci + i) * 9..(o * ci + i + 1) * 9];
            // Columns first: G applied to each kernel column gives 4 rows of 3.
            let mut rows = [[T::ZERO; 3]; 4];
            for x in 0..3 {
                let c = g([k[x], k[3 + x], k[6 + x]]);
                for (r, v) in rows.iter_mut().zip(c) {
                    r[x] = v;
                }
            }
            for (r, row) in rows.iter().enumerate() {
                for (c, v) in g(*row).into_iter().enumerate() {
                    u[(r * 4 + c) * us + o * ci + i] = v;
                }
            }
        }
    }
    u
}

/// `Gᵀ dU G` back to kernel gradients `(c_out, c_in, 3, 3)`.
fn kernel_grads<T: Float>(s: &ConvShape, du: &[T]) -> Vec<T> {
    let (ci, co) = (s.c_in, s.c_out);
    let us = point_stride(co * ci);
    let mut dw = vec![T::ZERO; co * ci * 9];
    for o in 0..co {
        for i in 0..ci {
            let mut t = [[T::ZERO; 4]; 4];
            for (p, v) in t.iter_mut().flatten().enumerate() {
                *v = du[p * us + o * ci + i];
            }
            let mut rows = [[T::ZERO; 4]; 3];
            for c in 0..4 {
                let col = gt([t[0][c], t[1][c], t[2][c], t[3][c]]);
                for (r, v) in rows.iter_mut().zip(col) {
                    r[c] = v;
                }
            }
            let k = &mut dw[(o * ci + i) * 9..(o * ci + i + 1) * 9];
            for (r, row) in rows.iter().enumerate() {
                k[r * 3..r * 3 + 3].copy_from_slice(&gt(*row));
            }
        }
    }
    dw
}

/// A plane with a zero row and column before it and zeros after it up to whole 4x4 tiles and
/// whole lanes of them: `(2 th + 2) x (2 tw' + 2)`, `tw'` being `tw` rounded up to [`L`].
fn padded(s: &ConvShape) -> (usize, usize) {
    let (th, tw) = tiles(s);
    (2 * th + 2, 2 * tw.next_multiple_of(L) + 2)
}

/// The rows of the padded plane (see [`padded`]) that tile rows `r0 .. r1` read, `2 r0 ..
/// 2 r1 + 2`, into `pad`: its row `i` is the image's row `2 r0 + i - 1`, or zeros.
#[inline(always)]
fn pad_rows<T: Float>(s: &ConvShape, src: &[T], (r0, r1): (usize, usize), pad: &mut [T]) {
    let (_, pw) = padded(s);
    let rows = 2 * (r1 - r0) + 2;
    pad[..rows * pw].fill(T::ZERO);
    for i in 0..rows {
        let Some(y) = (2 * r0 + i).checked_sub(1).filter(|&y| y < s.h) else {
            continue;
        };
        pad[i * pw + 1..i * pw + 1 + s.w].copy_from_slice(&src[y * s.w..(y + 1) * s.w]);
    }
}

/// The 4 columns of tiles `k0 .. k0 + N` in a padded row: tile `k` reads columns `2k .. 2k + 4`.
#[inline(always)]
fn tile_cols<T: Float, const N: usize>(row: &[T], k0: usize) -> [[T; N]; 4] {
    let r = &row[2 * k0..2 * k0 + 2 * N + 2];
    let mut out = [[T::ZERO; N]; 4];
    for l in 0..N {
        for (j, o) in out.iter_mut().enumerate() {
            o[l] = r[2 * l + j];
        }
    }
    out
}

simd_fn! {
    /// `V = Bᵀ d B` for the tiles in tile rows `rows` (`r0 .. r1`) of `gn` images, laid out
    /// `[16][c_in][t]` with `t = gn (r1 - r0) tw`.
    fn transform_input => transform_input_body(s: &ConvShape, x: &[T], gn: usize, rows: (usize, usize), v: &mut [T], pad: &mut [T])
}

#[inline(always)]
fn transform_input_body<T: Float, const N: usize>(
    s: &ConvShape,
    x: &[T],
    gn: usize,
    (r0, r1): (usize, usize),
    v: &mut [T],
    pad: &mut [T],
) {
    let (_, tw) = tiles(s);
    let (_, pw) = padded(s);
    let nr = r1 - r0;
    let (p, t) = (s.h * s.w, gn * nr * tw);
    let stride = point_stride(s.c_in * t);
    for img in 0..gn {
        for c in 0..s.c_in {
            pad_rows(
                s,
                &x[(img * s.c_in + c) * p..(img * s.c_in + c + 1) * p],
                (r0, r1),
                pad,
            );
            for r in 0..nr {
                let base = c * t + (img * nr + r) * tw;
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    for (i, row) in input_tiles::<T, N>(pad, pw, r, k0).iter().enumerate() {
                        for (j, val) in row.iter().enumerate() {
                            store(v, (i * 4 + j) * stride + base + k0, n, val);
                        }
                    }
                }
            }
        }
    }
}

/// `V = Bᵀ d B` of tiles `k0 .. k0 + N` of tile row `r` of a padded plane (rows `pw` wide).
#[inline(always)]
fn input_tiles<T: Float, const N: usize>(
    pad: &[T],
    pw: usize,
    r: usize,
    k0: usize,
) -> [[[T; N]; 4]; 4] {
    // (No `array::from_fn` in these bodies: its closures are not compiled for AVX2.)
    let mut d = [[T::ZERO; N]; 16];
    for i in 0..4 {
        let cols = tile_cols(&pad[(2 * r + i) * pw..(2 * r + i + 1) * pw], k0);
        d[4 * i..4 * i + 4].copy_from_slice(&cols);
    }
    tile_2d(bt, &d)
}

simd_fn! {
    /// [`transform_input`] of `gn` whole images into the transposed layout: each of the 16
    /// matrices `t x c_in`, a tile's channels side by side, as the weight gradient's gemm reads
    /// them without packing. `pads` holds the padded planes of one image's channels.
    fn transform_input_t => transform_input_t_body(s: &ConvShape, x: &[T], gn: usize, v: &mut [T], pads: &mut [T])
}

#[inline(always)]
fn transform_input_t_body<T: Float, const N: usize>(
    s: &ConvShape,
    x: &[T],
    gn: usize,
    v: &mut [T],
    pads: &mut [T],
) {
    let (th, tw) = tiles(s);
    let (ph, pw) = padded(s);
    let (ci, p, plane) = (s.c_in, s.h * s.w, ph * pw);
    let t = gn * th * tw;
    let stride = point_stride(ci * t);
    for img in 0..gn {
        for c in 0..ci {
            let src = &x[(img * ci + c) * p..(img * ci + c + 1) * p];
            pad_rows(s, src, (0, th), &mut pads[c * plane..(c + 1) * plane]);
        }
        for r in 0..th {
            for k0 in (0..tw).step_by(N) {
                let n = N.min(tw - k0);
                let tile0 = (img * th + r) * tw + k0;
                // Channels innermost: the 16 x n values each channel writes sit next to the
                // previous channel's, in the same cache lines.
                for c in 0..ci {
                    let pad = &pads[c * plane..(c + 1) * plane];
                    for (i, row) in input_tiles::<T, N>(pad, pw, r, k0).iter().enumerate() {
                        for (j, val) in row.iter().enumerate() {
                            let at = (i * 4 + j) * stride + tile0 * ci + c;
                            for l in 0..n {
                                v[at + l * ci] = val[l];
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `Y = relu?(Aᵀ M A + bias)` from the products of tile rows `rows` (`r0 .. r1`) of `gn`
    /// images into `out`: the image rows `2 r0 ..` that those tiles cover, each plane of the
    /// `gn` images `(min(2 r1, h) - 2 r0) x w`.
    fn transform_output => transform_output_body(s: &ConvShape, m: &[T], bias: &[T], relu: bool, rows: (usize, usize), out: &mut [T])
}

#[inline(always)]
fn transform_output_body<T: Float, const N: usize>(
    s: &ConvShape,
    m: &[T],
    bias: &[T],
    relu: bool,
    (r0, r1): (usize, usize),
    out: &mut [T],
) {
    let (_, tw) = tiles(s);
    let nr = r1 - r0;
    let p = ((2 * r1).min(s.h) - 2 * r0) * s.w;
    let gn = out.len() / (s.c_out * p);
    let t = gn * nr * tw;
    let tp = point_stride(s.c_out * t);
    for img in 0..gn {
        for o in 0..s.c_out {
            let dst = &mut out[(img * s.c_out + o) * p..(img * s.c_out + o + 1) * p];
            let bo = bias[o];
            for ty in r0..r1 {
                let base = o * t + (img * nr + ty - r0) * tw;
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    let tile = tile_2d(at, &load_tiles::<T, N>(m, tp, base + k0, n));
                    let x0 = 2 * k0;
                    let len = (2 * n).min(s.w - x0);
                    for row in 0..2 {
                        let y = 2 * ty + row;
                        if y >= s.h {
                            break;
                        }
                        let mut il = [T::ZERO; 2 * L];
                        for l in 0..N {
                            for c in 0..2 {
                                let v = tile[row][c][l] + bo;
                                // NaN maps to zero, as in the im2col path.
                                let positive = v > T::ZERO;
                                il[2 * l + c] = if relu && !positive { T::ZERO } else { v };
                            }
                        }
                        let at_ = (y - 2 * r0) * s.w + x0;
                        if len == 2 * N {
                            dst[at_..at_ + 2 * N].copy_from_slice(&il[..2 * N]);
                        } else {
                            dst[at_..at_ + len].copy_from_slice(&il[..len]);
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `dM = A dY Aᵀ` for every output tile of `gn` images, laid out like `M`, with `dY` zeroed
    /// where `relu_out` (the forward's output, if it went through a ReLU) is not positive; adds
    /// the bias gradient (the sum of `dY`) into `db`.
    fn transform_output_grad => transform_output_grad_body(
        s: &ConvShape,
        dy: &[T],
        relu_out: Option<&[T]>,
        gn: usize,
        m: &mut [T],
        db: &mut [T],
    )
}

#[inline(always)]
fn transform_output_grad_body<T: Float, const N: usize>(
    s: &ConvShape,
    dy: &[T],
    relu_out: Option<&[T]>,
    gn: usize,
    m: &mut [T],
    db: &mut [T],
) {
    let (th, tw) = tiles(s);
    let p = s.h * s.w;
    let co = s.c_out;
    let t = gn * th * tw;
    let tp = point_stride(co * t);
    for img in 0..gn {
        for o in 0..co {
            let plane = (img * co + o) * p..(img * co + o + 1) * p;
            let src = &dy[plane.clone()];
            let out = relu_out.map(|r| &r[plane]);
            let mut sum = [[T::ZERO; 16]; 2];
            for ty in 0..th {
                let base = o * t + (img * th + ty) * tw;
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    let x0 = 2 * k0;
                    let len = (2 * n).min(s.w - x0);
                    // [row][even/odd column] of the tiles' 2x2 gradients, zero past the edges.
                    let mut g = [[[T::ZERO; N]; 2]; 2];
                    for (r, gr) in g.iter_mut().enumerate() {
                        let y = 2 * ty + r;
                        if y >= s.h {
                            break;
                        }
                        let mut il = [T::ZERO; 2 * L];
                        let run = y * s.w + x0..y * s.w + x0 + len;
                        if len == 2 * N {
                            il[..2 * N].copy_from_slice(&src[run.start..run.start + 2 * N]);
                        } else {
                            il[..len].copy_from_slice(&src[run.clone()]);
                        }
                        if let Some(out) = out {
                            // PyTorch's rule: the gradient passes where the output is positive.
                            for (g, o) in il.iter_mut().zip(&out[run]) {
                                let positive = *o > T::ZERO;
                                if !positive {
                                    *g = T::ZERO;
                                }
                            }
                        }
                        // 16 sums per tile row whatever the lane count, each adding the same
                        // values in the same order, so that the bias gradient does not
                        // depend on it.
                        for half in il[..2 * N].chunks(16) {
                            for (acc, g) in sum[r].iter_mut().zip(half) {
                                *acc += *g;
                            }
                        }
                        for l in 0..N {
                            gr[0][l] = il[2 * l];
                            gr[1][l] = il[2 * l + 1];
                        }
                    }
                    let ce = lanes(a, [g[0][0], g[1][0]]);
                    let cd = lanes(a, [g[0][1], g[1][1]]);
                    for i in 0..4 {
                        for (j, val) in lanes(a, [ce[i], cd[i]]).iter().enumerate() {
                            store(m, (i * 4 + j) * tp + base + k0, n, val);
                        }
                    }
                }
            }
            for g in sum.into_iter().flatten() {
                db[o] += g;
            }
        }
    }
}

simd_fn! {
    /// `dX = Σ B dV Bᵀ` over the overlapping tiles of `gn` images, into `dx`.
    fn transform_input_grad => transform_input_grad_body(s: &ConvShape, dv: &[T], dx: &mut [T], pad: &mut [T])
}

#[inline(always)]
fn transform_input_grad_body<T: Float, const N: usize>(
    s: &ConvShape,
    dv: &[T],
    dx: &mut [T],
    pad: &mut [T],
) {
    let (th, tw) = tiles(s);
    let (ph, pw) = padded(s);
    let (ci, p) = (s.c_in, s.h * s.w);
    let gn = dx.len() / (ci * p);
    let t = gn * th * tw;
    let vp = point_stride(ci * t);
    for img in 0..gn {
        for c in 0..ci {
            pad[..ph * pw].fill(T::ZERO);
            for ty in 0..th {
                let base = c * t + (img * th + ty) * tw;
                // The last lane's right half, added after the next lanes' left halves.
                let mut carry = [[T::ZERO; 2]; 4];
                for k0 in (0..tw).step_by(N) {
                    let n = N.min(tw - k0);
                    // Lanes past `n` load as zeros and add nothing.
                    let dd = tile_2d(b, &load_tiles::<T, N>(dv, vp, base + k0, n));
                    for i in 0..4 {
                        let at_ = (2 * ty + i) * pw + 2 * k0;
                        let row = &mut pad[at_..at_ + 2 * N + 2];
                        // Tile k covers columns 2k .. 2k + 4: two passes, so that no pass
                        // writes a column twice. A column shared by tiles k - 1 and k gets
                        // tile k's part first, then tile k - 1's, at every lane count (so the
                        // sums, and the bits, do not depend on it): the last lane's right half
                        // waits for the next group of lanes.
                        for l in 0..N {
                            row[2 * l] += dd[i][0][l];
                            row[2 * l + 1] += dd[i][1][l];
                        }
                        row[0] += carry[i][0];
                        row[1] += carry[i][1];
                        for l in 0..N - 1 {
                            row[2 * l + 2] += dd[i][2][l];
                            row[2 * l + 3] += dd[i][3][l];
                        }
                        carry[i] = [dd[i][2][N - 1], dd[i][3][N - 1]];
                    }
                }
                // The plane's last tile, if the last group of lanes was full.
                let end = 2 * tw.next_multiple_of(N);
                for (i, [c0, c1]) in carry.into_iter().enumerate() {
                    pad[(2 * ty + i) * pw + end] += c0;
                    pad[(2 * ty + i) * pw + end + 1] += c1;
                }
            }
            let dst = &mut dx[(img * ci + c) * p..(img * ci + c + 1) * p];
            for y in 0..s.h {
                dst[y * s.w..(y + 1) * s.w]
                    .copy_from_slice(&pad[(y + 1) * pw + 1..(y + 1) * pw + 1 + s.w]);
            }
        }
    }
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

/// `relu?(conv3x3(x, w) + b)` by Winograd F(2x2, 3x3); same contract as [`crate::cpu_conv::forward`].
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
