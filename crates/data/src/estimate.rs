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
/// earlier one (a gray picture stored as RGB) count once: their copies would add patch
/// directions without noise, and so eigenvalues of 0, and the estimate would come out 0.
/// Patches that reach into a flat region (transparent, clipped to black or white, letterboxed:
/// see `flat_pixels`) are left out, so that such regions do not dilute the estimate.
pub fn estimate_sigma(img: &[f32], (c, h, w): (usize, usize, usize)) -> f64 {
    let p = if h.min(w) >= 64 { 7 } else { MIN_SIDE };
    if h < p || w < p || c == 0 {
        return 0.0;
    }
    let plane = |ch: usize| &img[ch * h * w..(ch + 1) * h * w];
    let mut kept: Vec<usize> = Vec::with_capacity(c);
    for ch in 0..c {
        if !kept.iter().any(|&k| plane(k) == plane(ch)) {
            kept.push(ch);
        }
    }
    if kept.len() < c {
        let distinct: Vec<f32> = kept.iter().flat_map(|&k| plane(k)).copied().collect();
        return estimate_sigma(&distinct, (kept.len(), h, w));
    }
    let dim = c * p * p;
    // At most about 40,000 patches: a regular stride on large images.
    let positions = (h - p + 1) * (w - p + 1);
    let stride = ((positions as f64 / 40_000.0).sqrt().ceil() as usize).max(1);
    let flat = flat_pixels(img, (c, h, w));
    let mut mean = vec![0f64; dim];
    let mut cov = vec![0f64; dim * dim];
    let mut v = vec![0f64; dim];
    let mut count = 0usize;
    for y in (0..=h - p).step_by(stride) {
        for x in (0..=w - p).step_by(stride) {
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
            // A patch in or at a flat region holds no noise there: counted, such patches
            // would scale the noise eigenvalues down by their share of the image.
            if (y..y + p).any(|yy| flat[yy * w + x..yy * w + x + p].iter().any(|&f| f)) {
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
        return 0.0;
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
    tau.max(0.0).sqrt()
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
