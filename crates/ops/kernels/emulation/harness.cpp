// Runs our CUDA kernels on the CPU (cuda_emulation.h) against plain double-precision
// references, on shapes that exercise the grid-stride loops, planes larger and smaller than a
// block, several channels per group, with and without the activations, tied maxima. Prints each check's
// worst relative error and exits 1 if any is over its tolerance. Built and run by
// `crates/model/tests/cuda_kernels_emulated.rs`.
#include "cuda_emulation.h"

#include "../adam.cu"
#include "../bias_act.cu"
#include "../group_norm.cu"
#include "../max_pool.cu"

#include <cstdio>
#include <vector>

static int failures = 0;

static double value(size_t i, int salt) {
    // Deterministic values in [-1, 1).
    unsigned long long h = (i + 1) * 6364136223846793005ULL + (unsigned long long)salt * 1442695040888963407ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (double)(h % 2000000) / 1000000.0 - 1.0;
}

template <typename T>
static std::vector<T> values(size_t n, int salt, double scale = 1.0, double shift = 0.0) {
    std::vector<T> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = (T)(value(i, salt) * scale + shift);
    return v;
}

template <typename T>
static void check(const char *name, const std::vector<T> &got, const std::vector<double> &want, double tol) {
    double scale = 1e-300, worst = 0.0;
    for (double w : want) scale = fmax(scale, fabs(w));
    for (size_t i = 0; i < want.size(); ++i) worst = fmax(worst, fabs((double)got[i] - want[i]) / scale);
    bool ok = worst <= tol && got.size() >= want.size();
    printf("%-48s %s  worst relative error %.2e (tolerance %.0e)\n", name, ok ? "ok  " : "FAIL", worst, tol);
    if (!ok) ++failures;
}

static double sigmoid_d(double y) { return 1.0 / (1.0 + exp(-y)); }

template <typename T>
static void adam(const char *type, double tol) {
    const size_t n = 1000;
    auto m = values<T>(n, 1, 0.1), v = values<T>(n, 2, 0.01, 0.011), g = values<T>(n, 3), p = values<T>(n, 4);
    const double b1 = 0.9, b2 = 0.999, wd = 1e-2, step = 1e-3 / 0.1, bc2 = sqrt(1 - 0.999), eps = 1e-8;
    std::vector<double> wm(n), wv(n), wp(n);
    for (size_t i = 0; i < n; ++i) {
        double gi = (double)g[i] + wd * (double)p[i];
        wm[i] = b1 * (double)m[i] + (1 - b1) * gi;
        wv[i] = b2 * (double)v[i] + (1 - b2) * gi * gi;
        wp[i] = (double)p[i] - step * wm[i] / (sqrt(wv[i]) / bc2 + eps);
    }
    // Two blocks for a thousand values: the grid-stride loops go round twice.
    T tb1 = (T)b1, tk1 = (T)(1 - b1), tb2 = (T)b2, tk2 = (T)(1 - b2), twd = (T)wd;
    T ts = (T)step, tbc = (T)bc2, te = (T)eps;
    if constexpr (sizeof(T) == 4) {
        emulate_launch(2, 256, [&] { adam_moment_float(n, m.data(), g.data(), p.data(), tb1, tk1, twd, 0); });
        emulate_launch(2, 256, [&] { adam_moment_float(n, v.data(), g.data(), p.data(), tb2, tk2, twd, 1); });
        emulate_launch(2, 256, [&] { adam_update_float(n, p.data(), m.data(), v.data(), ts, tbc, te); });
    } else {
        emulate_launch(2, 256, [&] { adam_moment_double(n, m.data(), g.data(), p.data(), tb1, tk1, twd, 0); });
        emulate_launch(2, 256, [&] { adam_moment_double(n, v.data(), g.data(), p.data(), tb2, tk2, twd, 1); });
        emulate_launch(2, 256, [&] { adam_update_double(n, p.data(), m.data(), v.data(), ts, tbc, te); });
    }
    char name[64];
    snprintf(name, sizeof name, "adam %s: m", type);
    check(name, m, wm, tol);
    snprintf(name, sizeof name, "adam %s: v", type);
    check(name, v, wv, tol);
    snprintf(name, sizeof name, "adam %s: p", type);
    check(name, p, wp, tol);
}

template <typename T>
static void bias_act(const char *type, size_t n, size_t c, size_t plane, int relu, double tol) {
    const size_t numel = n * c * plane;
    auto y = values<T>(numel, 5), b = values<T>(c, 6, 0.5), grad = values<T>(numel, 7);
    std::vector<T> out(numel), packed(numel + c, (T)0);
    std::vector<double> wout(numel), wdy(numel), wdb(c, 0.0);
    for (size_t i = 0; i < numel; ++i) {
        size_t ch = (i / plane) % c;
        double o = (double)y[i] + (double)b[ch];
        if (relu && o <= 0) o = 0;
        wout[i] = o;
    }
    unsigned grid = (unsigned)((numel + 255) / 256);
    if constexpr (sizeof(T) == 4) {
        emulate_launch(grid, 256, [&] { bias_act_fwd_float(numel, plane, c, y.data(), b.data(), out.data(), relu); });
        emulate_launch((unsigned)(n * c), 256, [&] { bias_act_bwd_float(numel, plane, c, grad.data(), out.data(), packed.data(), relu); });
    } else {
        emulate_launch(grid, 256, [&] { bias_act_fwd_double(numel, plane, c, y.data(), b.data(), out.data(), relu); });
        emulate_launch((unsigned)(n * c), 256, [&] { bias_act_bwd_double(numel, plane, c, grad.data(), out.data(), packed.data(), relu); });
    }
    for (size_t i = 0; i < numel; ++i) {
        double d = (!relu || (double)out[i] > 0) ? (double)grad[i] : 0.0;
        wdy[i] = d;
        wdb[(i / plane) % c] += d;
    }
    std::vector<T> dy(packed.begin(), packed.begin() + numel), db(packed.begin() + numel, packed.end());
    char name[96];
    snprintf(name, sizeof name, "bias_act %s n%zu c%zu plane%zu relu%d: out", type, n, c, plane, relu);
    check(name, out, wout, tol);
    snprintf(name, sizeof name, "bias_act %s n%zu c%zu plane%zu relu%d: dy", type, n, c, plane, relu);
    check(name, dy, wdy, tol);
    snprintf(name, sizeof name, "bias_act %s n%zu c%zu plane%zu relu%d: db", type, n, c, plane, relu);
    check(name, db, wdb, tol);
}

// GroupNorm (+ SiLU) in double: the output, and the gradients of sum(out * up).
static void group_norm_reference(const std::vector<double> &x, const std::vector<double> &gamma,
                                 const std::vector<double> &beta, const std::vector<double> &up,
                                 size_t n, size_t groups, size_t cg, size_t hw, double eps, int silu,
                                 std::vector<double> &out, std::vector<double> &dx,
                                 std::vector<double> &dgamma, std::vector<double> &dbeta) {
    const size_t m = cg * hw, c = groups * cg;
    out.assign(x.size(), 0.0);
    dx.assign(x.size(), 0.0);
    dgamma.assign(c, 0.0);
    dbeta.assign(c, 0.0);
    for (size_t p = 0; p < n * groups; ++p) {
        const size_t base = p * m, c0 = (p % groups) * cg;
        double mean = 0, var = 0;
        for (size_t i = 0; i < m; ++i) mean += x[base + i];
        mean /= m;
        for (size_t i = 0; i < m; ++i) var += (x[base + i] - mean) * (x[base + i] - mean);
        var /= m;
        const double rstd = 1 / sqrt(var + eps);
        std::vector<double> xhat(m), dxhat(m);
        double sum_dxhat = 0, sum_dxhat_xhat = 0;
        for (size_t i = 0; i < m; ++i) {
            const size_t ch = c0 + i / hw;
            xhat[i] = (x[base + i] - mean) * rstd;
            const double y = xhat[i] * gamma[ch] + beta[ch];
            const double s = sigmoid_d(y);
            out[base + i] = silu ? y * s : y;
            const double dy = up[base + i] * (silu ? s * (1 + y * (1 - s)) : 1.0);
            dgamma[ch] += dy * xhat[i];
            dbeta[ch] += dy;
            dxhat[i] = dy * gamma[ch];
            sum_dxhat += dxhat[i];
            sum_dxhat_xhat += dxhat[i] * xhat[i];
        }
        for (size_t i = 0; i < m; ++i)
            dx[base + i] = rstd * (dxhat[i] - sum_dxhat / m - xhat[i] * sum_dxhat_xhat / m);
    }
}

template <typename T>
static void group_norm(const char *type, size_t n, size_t groups, size_t cg, size_t hw, int silu, double tol) {
    const size_t c = groups * cg, numel = n * c * hw;
    const double eps = 1e-5;
    auto x = values<T>(numel, 8, 2.0, 0.3), up = values<T>(numel, 9);
    auto gamma = values<T>(c, 10, 0.5, 1.0), beta = values<T>(c, 11, 0.5);
    std::vector<T> gb(gamma);
    gb.insert(gb.end(), beta.begin(), beta.end());
    std::vector<T> out(numel), packed(numel + 2 * c, (T)0);
    unsigned grid = (unsigned)(n * groups);
    if constexpr (sizeof(T) == 4) {
        emulate_launch(grid, 256, [&] { group_norm_fwd_float(groups, cg, hw, x.data(), gamma.data(), beta.data(), out.data(), eps, silu); });
        emulate_launch(grid, 256, [&] { group_norm_bwd_float(numel, groups, cg, hw, x.data(), up.data(), gb.data(), packed.data(), eps, silu); });
    } else {
        emulate_launch(grid, 256, [&] { group_norm_fwd_double(groups, cg, hw, x.data(), gamma.data(), beta.data(), out.data(), eps, silu); });
        emulate_launch(grid, 256, [&] { group_norm_bwd_double(numel, groups, cg, hw, x.data(), up.data(), gb.data(), packed.data(), eps, silu); });
    }
    auto d = [](const std::vector<T> &v) { return std::vector<double>(v.begin(), v.end()); };
    std::vector<double> wout, wdx, wdg, wdb;
    group_norm_reference(d(x), d(gamma), d(beta), d(up), n, groups, cg, hw, eps, silu, wout, wdx, wdg, wdb);
    // The reference's own gradient against finite differences, on a few inputs.
    if (sizeof(T) == 8) {
        std::vector<double> xd = d(x), o1, o2, t1, t2, t3;
        double worst = 0;
        for (size_t i = 0; i < numel; i += numel / 7 + 1) {
            const double h = 1e-6;
            xd[i] += h;
            group_norm_reference(xd, d(gamma), d(beta), d(up), n, groups, cg, hw, eps, silu, o1, t1, t2, t3);
            xd[i] -= 2 * h;
            group_norm_reference(xd, d(gamma), d(beta), d(up), n, groups, cg, hw, eps, silu, o2, t1, t2, t3);
            xd[i] += h;
            double l1 = 0, l2 = 0;
            for (size_t j = 0; j < numel; ++j) {
                l1 += o1[j] * (double)up[j];
                l2 += o2[j] * (double)up[j];
            }
            worst = fmax(worst, fabs((l1 - l2) / (2 * h) - wdx[i]));
        }
        printf("%-48s %s  finite differences off by %.2e\n", "group_norm reference dx", worst < 1e-6 ? "ok  " : "FAIL", worst);
        if (worst >= 1e-6) ++failures;
    }
    std::vector<T> dx(packed.begin(), packed.begin() + numel);
    std::vector<T> dg(packed.begin() + numel, packed.begin() + numel + c), db(packed.begin() + numel + c, packed.end());
    char name[96];
    const char *parts[] = {"out", "dx", "dgamma", "dbeta"};
    const std::vector<T> *got[] = {&out, &dx, &dg, &db};
    const std::vector<double> *want[] = {&wout, &wdx, &wdg, &wdb};
    for (int k = 0; k < 4; ++k) {
        snprintf(name, sizeof name, "group_norm %s n%zu g%zu cg%zu hw%zu silu%d: %s", type, n, groups, cg, hw, silu, parts[k]);
        check(name, *got[k], *want[k], tol);
    }
}

template <typename T>
static void max_pool(const char *type, size_t planes, size_t h, size_t w) {
    // Values on a coarse grid, so that many windows have tied maxima.
    std::vector<T> x(planes * h * w);
    for (size_t i = 0; i < x.size(); ++i) x[i] = (T)floor(value(i, 12) * 2.0);
    const size_t oh = h / 2, ow = w / 2, outputs = planes * oh * ow;
    auto grad = values<T>(outputs, 13);
    std::vector<T> out(outputs), dx(x.size(), (T)7);
    std::vector<double> wout(outputs), wdx(x.size(), 0.0);
    for (size_t p = 0; p < planes; ++p)
        for (size_t y = 0; y < oh; ++y)
            for (size_t xo = 0; xo < ow; ++xo) {
                const size_t o = (p * oh + y) * ow + xo, b = p * h * w + 2 * y * w + 2 * xo;
                const size_t at[4] = {b, b + 1, b + w, b + w + 1};
                size_t best = at[0];
                for (size_t k : at)
                    if ((double)x[k] > (double)x[best]) best = k;
                wout[o] = (double)x[best];
                wdx[best] = (double)grad[o];
            }
    // One block of 32 threads for every output: the grid-stride loop goes round.
    if constexpr (sizeof(T) == 4) {
        emulate_launch(1, 32, [&] { max_pool_fwd_float(outputs, h, w, x.data(), out.data()); });
        emulate_launch(1, 32, [&] { max_pool_bwd_float(outputs, h, w, x.data(), grad.data(), dx.data()); });
    } else {
        emulate_launch(1, 32, [&] { max_pool_fwd_double(outputs, h, w, x.data(), out.data()); });
        emulate_launch(1, 32, [&] { max_pool_bwd_double(outputs, h, w, x.data(), grad.data(), dx.data()); });
    }
    char name[96];
    snprintf(name, sizeof name, "max_pool %s planes%zu %zux%zu (ties): out", type, planes, h, w);
    check(name, out, wout, 0.0);
    snprintf(name, sizeof name, "max_pool %s planes%zu %zux%zu (ties): dx", type, planes, h, w);
    check(name, dx, wdx, 0.0);
}

int main() {
    adam<float>("f32", 1e-6);
    adam<double>("f64", 1e-14);
    for (int relu = 0; relu < 2; ++relu) {
        bias_act<float>("f32", 2, 3, 300, relu, 1e-6);
        bias_act<double>("f64", 3, 5, 9, relu, 1e-14);
    }
    for (int silu = 0; silu < 2; ++silu) {
        group_norm<float>("f32", 2, 3, 2, 300, silu, 1e-5);
        group_norm<double>("f64", 2, 2, 3, 9, silu, 1e-12);
        group_norm<double>("f64", 1, 1, 4, 70, silu, 1e-12);
    }
    max_pool<float>("f32", 3, 6, 10);
    max_pool<double>("f64", 2, 4, 4);
    printf("%d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
