//! Estimating the standard deviation of additive white Gaussian noise from one image.
//!
//! [`estimate_sigma`] is Chen, Zhu and Heng (ICCV 2015, "An efficient statistical method for
//! image noise level estimation"): the image's `p x p x C` patches span a low-rank signal
//! subspace plus noise that adds `sigma^2` to every eigenvalue of their covariance; the
//! smallest eigenvalues belong to noise alone, and the method keeps dropping the largest
//! remaining eigenvalue until the rest have their mean equal to their median, which is then
//! `sigma^2`. [`estimate_sigma_mad`] is Donoho's wavelet estimator (the median absolute
//! diagonal Haar detail / 0.6745), kept as a fast alternative.

/// The smallest height and width [`estimate_sigma`] can estimate from (its smallest patch).
pub const MIN_SIDE: usize = 4;

/// Noise level estimate, on the image's own value scale, of a `(c, h, w)` image.
/// Returns 0 for images smaller than [`MIN_SIDE`] on either side. Channels that repeat an
/// earlier one (a gray picture stored as RGB) count once, and constant channels not at all:
/// they would add patch directions without noise, and so eigenvalues of 0, and the estimate
/// would come out 0 or low.
/// Patches that reach into a flat region (transparent, clipped to black or white, letterboxed:
/// see `flat_pixels`) are left out, so that such regions do not dilute the estimate.
///
/// A single channel (a gray picture) is estimated from its patches of weak texture, as the luma
/// below: over all its patches, a clean photo's fine detail read as noise of sigma 4 to 10.
///
/// A colour picture whose colours hold much less noise than its brightness (a JPEG with
/// subsampled colour, as cameras, phones and most encoders write them; a video frame) gets
/// [`estimate_luma_sigma`] instead: there the subsampling removed the noise from half the patch
/// directions, and the estimate over all channels came out near 0.
pub fn estimate_sigma(img: &[f32], dims: (usize, usize, usize)) -> f64 {
    estimate_sigma_from(img, dims).0
}

/// What [`estimate_sigma`] estimated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The patches of all (distinct) channels.
    Channels,
    /// The luma alone ([`estimate_luma_sigma`]): the colours held much less noise.
    Luma,
}

/// [`estimate_sigma`], and what it estimated from.
pub fn estimate_sigma_from(img: &[f32], (c, h, w): (usize, usize, usize)) -> (f64, Basis) {
    let p = patch_side(h, w);
    if h < p || w < p || c == 0 {
        return (0.0, Basis::Channels);
    }
    let plane = |ch: usize| &img[ch * h * w..(ch + 1) * h * w];
    let mut kept: Vec<usize> = Vec::with_capacity(c);
    for ch in 0..c {
        let constant = plane(ch).iter().all(|&v| v == plane(ch)[0]);
        if !constant && !kept.iter().any(|&k| plane(k) == plane(ch)) {
            kept.push(ch);
        }
    }
    if kept.is_empty() {
        return (0.0, Basis::Channels);
    }
    if kept.len() < c {
        let distinct: Vec<f32> = kept.iter().flat_map(|&k| plane(k)).copied().collect();
        return estimate_sigma_from(&distinct, (kept.len(), h, w));
    }
    let flat = flat_pixels(img, (c, h, w));
    if c == 1 {
        return (weak_texture_estimate(img, (h, w), &flat), Basis::Channels);
    }
    let all = patch_estimate(img, (c, h, w), &flat, f64::INFINITY).map_or(0.0, |(s, _)| s);
    if c == 3 && h.min(w) >= LUMA_MIN_SIDE_FULL {
        let luma = luma_estimate(img, (h, w), &flat, h.min(w) >= LUMA_MIN_SIDE);
        if all < LUMA_FALLBACK * luma {
            return (luma, Basis::Luma);
        }
    }
    (all, Basis::Channels)
}

/// [`estimate_sigma`] falls back on the brightness's estimate when the estimate over all
/// channels is below this share of it. With noise in every channel, both estimate the same
/// sigma (ratios of 0.7 to 1.1 were measured on photos from sigma 5 to 50, and about 1 on clean
/// photos, where both are near 0); in noisy JPEGs with colour subsampling, 0.02 to 0.15.
const LUMA_FALLBACK: f64 = 0.5;

/// The smallest side of a picture whose luma [`estimate_sigma`] also estimates at half size (for
/// JPEG's quantisation, see [`estimate_luma_sigma`]). On smaller ones the half-size luma is too
/// little to tell fine noise from fine detail: clean 128x128 crops of textured photos (JPEG,
/// quality 90) came out at sigma 8 to 15; 256x256 crops at 0.8 to 3.7 clean and 4.2 to 5.5 with
/// noise of sigma 5.
pub const LUMA_MIN_SIDE: usize = 256;

/// The smallest side of a picture whose luma [`estimate_sigma`] consults, at full size only
/// below [`LUMA_MIN_SIDE`]. Crops of 64x64 and 128x128 of the photos of `docs/results.md`, JPEG
/// with colour subsampled: clean 0 to 4.3 (mostly under 2.5), sigma 10 at quality 90 4.8 to
/// 12.4, sigma 25 12.9 to 27.8 (over all channels: 0.3 to 2); on 32x32 CIFAR-10 images the
/// luma alone tells noise from detail too badly.
pub const LUMA_MIN_SIDE_FULL: usize = 64;

/// The luma weights of BT.601, as JPEG's YCbCr uses them.
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// The noise level of each channel of an RGB image, estimated from its luma (BT.601, as JPEG
/// stores it at full resolution): noise of sigma in each channel, independent between channels,
/// has `sigma * |LUMA|` in the luma. A single channel has far fewer patch directions free of
/// image detail than three, so the patches are those of weak texture, as Liu, Tanaka and
/// Okutomi (2013, "Single-image noise level estimation for blind denoising") pick them: those
/// whose sum of squared differences between neighbouring pixels is no more than noise alone
/// gives in 99 % of patches, at the current estimate, repeated until the estimate settles.
/// JPEG's quantisation takes most of the noise out of the finest detail (where the estimate
/// looks), less out of coarser detail: the luma is also estimated at half size (means of 2x2
/// pixels, whose noise is half the pixels'), and the larger of the two estimates is returned.
pub fn estimate_luma_sigma(img: &[f32], (h, w): (usize, usize)) -> f64 {
    luma_estimate(img, (h, w), &flat_pixels(img, (3, h, w)), true)
}

/// [`estimate_luma_sigma`] with the flat pixels already found; at full size only unless
/// `halved`.
fn luma_estimate(img: &[f32], (h, w): (usize, usize), flat: &[bool], halved: bool) -> f64 {
    let plane = |ch: usize| &img[ch * h * w..(ch + 1) * h * w];
    let luma: Vec<f32> = (0..h * w)
        .map(|i| (0..3).map(|ch| LUMA[ch] * plane(ch)[i] as f64).sum::<f64>() as f32)
        .collect();
    let mut sigma = weak_texture_estimate(&luma, (h, w), flat);
    if halved {
        let (hh, wh) = (h / 2, w / 2);
        let mut half = vec![0f32; hh * wh];
        let mut half_flat = vec![false; hh * wh];
        for y in 0..hh {
            for x in 0..wh {
                let at = [(2 * y) * w + 2 * x, (2 * y) * w + 2 * x + 1];
                let quad = [at[0], at[1], at[0] + w, at[1] + w];
                half[y * wh + x] = quad.iter().map(|&i| luma[i]).sum::<f32>() / 4.0;
                half_flat[y * wh + x] = quad.iter().any(|&i| flat[i]);
            }
        }
        sigma = sigma.max(2.0 * weak_texture_estimate(&half, (hh, wh), &half_flat));
    }
    sigma / LUMA.iter().map(|l| l * l).sum::<f64>().sqrt()
}

/// Liu et al.'s iteration on one channel: Chen et al.'s estimate from all patches, then from
/// the patches of weak texture at that estimate, until it settles.
fn weak_texture_estimate(plane: &[f32], (h, w): (usize, usize), flat: &[bool]) -> f64 {
    let p = patch_side(h, w);
    let n = (p * p) as f64;
    // Noise alone gives a patch a sum of squared differences of sigma^2 times a sum of
    // 4 p (p - 1) weighted chi-square terms, which Liu et al. take as Gamma(n / 2, 2 sigma^2
    // 4 p (p - 1) / n), that is sigma^2 4 p (p - 1) / n times a chi-square of n degrees.
    let per_sigma2 = 4.0 * (p * (p - 1)) as f64 / n * chi_square_quantile_99(n);
    let Some((mut sigma, _)) = patch_estimate(plane, (1, h, w), flat, f64::INFINITY) else {
        return 0.0;
    };
    for _ in 0..10 {
        // Too few weak-texture patches for a covariance of full rank: keep the last estimate.
        let next = match patch_estimate(plane, (1, h, w), flat, sigma * sigma * per_sigma2) {
            Some((next, count)) if count >= 2 * p * p => next,
            _ => break,
        };
        let settled = (next - sigma).abs() <= 1e-3 * sigma;
        sigma = next;
        if settled {
            break;
        }
    }
    sigma
}

/// The 99th percentile of a chi-square distribution of `k` degrees of freedom, by Wilson and
/// Hilferty's cube-root normal approximation (within 0.2 % from 16 degrees up).
fn chi_square_quantile_99(k: f64) -> f64 {
    const Z99: f64 = 2.326_347_874;
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + Z99 * a.sqrt()).powi(3)
}

/// The side of the square patches: 7 on images of at least 64 pixels a side, else [`MIN_SIDE`].
fn patch_side(h: usize, w: usize) -> usize {
    if h.min(w) >= 64 {
        7
    } else {
        MIN_SIDE
    }
}

/// Chen, Zhu and Heng's estimate from the `p x p x c` patches (`p` from [`patch_side`]) that
/// do not reach into a `flat` pixel and whose texture (their sum of squared differences between
/// horizontal and vertical neighbours, over all channels) is below `max_texture`, with the
/// number of patches it used; `None` when none is left.
fn patch_estimate(
    img: &[f32],
    (c, h, w): (usize, usize, usize),
    flat: &[bool],
    max_texture: f64,
) -> Option<(f64, usize)> {
    let p = patch_side(h, w);
    if h < p || w < p {
        return None;
    }
    let dim = c * p * p;
    // At most about 40,000 patches: a regular stride on large images.
    let positions = (h - p + 1) * (w - p + 1);
    let stride = ((positions as f64 / 40_000.0).sqrt().ceil() as usize).max(1);
    let mut mean = vec![0f64; dim];
    let mut cov = vec![0f64; dim * dim];
    let mut v = vec![0f64; dim];
    let mut count = 0usize;
    for y in (0..=h - p).step_by(stride) {
        for x in (0..=w - p).step_by(stride) {
            // A patch in or at a flat region holds no noise there: counted, such patches
            // would scale the noise eigenvalues down by their share of the image.
            if (y..y + p).any(|yy| flat[yy * w + x..yy * w + x + p].iter().any(|&f| f)) {
                continue;
            }
            let mut k = 0;
            for ch in 0..c {
                for dy in 0..p {
                    let row = ch * h * w + (y + dy) * w + x;
                    for dx in 0..p {
                        v[k] = img[row + dx] as f64;
                        k += 1;
                    }
                }
            }
            if max_texture.is_finite() && texture(&v, p) > max_texture {
                continue;
            }
            for i in 0..dim {
                mean[i] += v[i];
                let vi = v[i];
                let r = &mut cov[i * dim..i * dim + i + 1];
                for (j, cij) in r.iter_mut().enumerate() {
                    *cij += vi * v[j];
                }
            }
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    let n = count as f64;
    for m in mean.iter_mut() {
        *m /= n;
    }
    for i in 0..dim {
        for j in 0..=i {
            let val = cov[i * dim + j] / n - mean[i] * mean[j];
            cov[i * dim + j] = val;
            cov[j * dim + i] = val;
        }
    }
    let mut eig = symmetric_eigenvalues(&mut cov, dim);
    eig.sort_by(|a, b| a.total_cmp(b));
    let mut tau = eig[0].max(0.0);
    for k in (1..=dim).rev() {
        let part = &eig[..k];
        tau = part.iter().sum::<f64>() / k as f64;
        let above = part.iter().filter(|&&e| e > tau).count();
        let below = part.iter().filter(|&&e| e < tau).count();
        if above == below {
            break;
        }
    }
    Some((tau.max(0.0).sqrt(), count))
}

/// The sum of squared differences between horizontal and vertical neighbours in a patch of
/// `p x p` pixels per channel (Liu et al.'s trace of the gradient covariance).
fn texture(v: &[f64], p: usize) -> f64 {
    let mut t = 0.0;
    for plane in v.chunks_exact(p * p) {
        for y in 0..p {
            for x in 0..p {
                let a = plane[y * p + x];
                if x + 1 < p {
                    t += (plane[y * p + x + 1] - a).powi(2);
                }
                if y + 1 < p {
                    t += (plane[(y + 1) * p + x] - a).powi(2);
                }
            }
        }
    }
    t
}

/// Pixels equal, in every channel, to each of their four neighbours (those in the image): the
/// inside of a flat region (transparent, clipped to black or white, letterboxed), where there is
/// no noise. Noise makes such a pixel unlikely elsewhere: in 8 bits at sigma 2, a single channel
/// has 1 in 2,500 pixels so.
fn flat_pixels(img: &[f32], (c, h, w): (usize, usize, usize)) -> Vec<bool> {
    let mut flat = vec![true; h * w];
    for ch in 0..c {
        let plane = &img[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                let v = plane[y * w + x];
                let same = (x == 0 || plane[y * w + x - 1] == v)
                    && (x + 1 == w || plane[y * w + x + 1] == v)
                    && (y == 0 || plane[(y - 1) * w + x] == v)
                    && (y + 1 == h || plane[(y + 1) * w + x] == v);
                flat[y * w + x] &= same;
            }
        }
    }
    flat
}

/// Donoho's estimate: median(|HH|) / 0.6745 over the finest diagonal Haar details of each
/// channel.
pub fn estimate_sigma_mad(img: &[f32], (c, h, w): (usize, usize, usize)) -> f64 {
    let mut hh = Vec::with_capacity(c * (h / 2) * (w / 2));
    for ch in 0..c {
        let at = |y: usize, x: usize| img[ch * h * w + y * w + x] as f64;
        for y in (0..h - h % 2).step_by(2) {
            for x in (0..w - w % 2).step_by(2) {
                hh.push(((at(y, x) - at(y, x + 1) - at(y + 1, x) + at(y + 1, x + 1)) / 2.0).abs());
            }
        }
    }
    if hh.is_empty() {
        return 0.0;
    }
    let mid = hh.len() / 2;
    let (_, m, _) = hh.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m / 0.6745
}

/// Eigenvalues of a symmetric `n x n` matrix (row-major, overwritten) by cyclic Jacobi rotations.
pub fn symmetric_eigenvalues(a: &mut [f64], n: usize) -> Vec<f64> {
    let norm: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-13 * norm {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_known_eigenvalues() {
        // Q diag(1, 2, 5) Q^T for a rotation Q.
        let (c, s) = (0.6f64, 0.8f64);
        let q = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let d = [1.0, 2.0, 5.0];
        let mut a = vec![0.0; 9];
        for i in 0..3 {
            for j in 0..3 {
                a[i * 3 + j] = (0..3).map(|k| q[i][k] * d[k] * q[j][k]).sum();
            }
        }
        let mut e = symmetric_eigenvalues(&mut a, 3);
        e.sort_by(|a, b| a.total_cmp(b));
        for (x, y) in e.iter().zip(d) {
            assert!((x - y).abs() < 1e-10, "{e:?}");
        }
    }
}
