// GroupNorm with an optional SiLU, forward and backward, one block of 256 threads per (image,
// group). `crates/model/src/norm.rs` runs the same arithmetic on the CPU (statistics accumulated
// in double there as here).
//
//   forward:   out = act(x * scale + shift), scale = gamma rstd, shift = beta - mean scale
//   backward:  packed = [dx (numel), dgamma (c), dbeta (c)], dgamma and dbeta zeroed beforehand
//              and accumulated with one atomic add per (image, channel).

#define THREADS 256

__device__ double block_sum(double v, double *s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    double r = s[0];
    __syncthreads();
    return r;
}

__device__ inline float sigmoid_t(float y) { return 1.0f / (1.0f + expf(-y)); }
__device__ inline double sigmoid_t(double y) { return 1.0 / (1.0 + exp(-y)); }

template <typename T>
__device__ void stats(const T *xg, size_t m, double eps, double *s, double &mean, double &rstd) {
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < m; i += blockDim.x) acc += (double)xg[i];
    mean = block_sum(acc, s) / (double)m;
    acc = 0.0;
    for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
        double d = (double)xg[i] - mean;
        acc += d * d;
    }
    rstd = 1.0 / sqrt(block_sum(acc, s) / (double)m + eps);
}

template <typename T>
__device__ void forward(size_t groups, size_t cg, size_t hw, const T *x, const T *gamma,
                        const T *beta, T *out, double eps, int silu, double *s) {
    const size_t p = blockIdx.x, m = cg * hw, c0 = (p % groups) * cg;
    const T *xg = x + p * m;
    T *og = out + p * m;
    double mean, rstd;
    stats(xg, m, eps, s, mean, rstd);
    for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
        const size_t k = c0 + i / hw;
        const double ga = (double)gamma[k] * rstd;
        const T scale = (T)ga, shift = (T)((double)beta[k] - mean * ga);
        const T y = xg[i] * scale + shift;
        og[i] = silu ? y * sigmoid_t(y) : y;
    }
}

template <typename T>
__device__ void backward(size_t numel, size_t groups, size_t cg, size_t hw, const T *x,
                         const T *dy, const T *gb, T *packed, double eps, int silu, double *s) {
    const size_t p = blockIdx.x, m = cg * hw, c = groups * cg, c0 = (p % groups) * cg;
    const T *xg = x + p * m;
    const T *dg = dy + p * m;
    T *dxg = packed + p * m;
    double mean, rstd;
    stats(xg, m, eps, s, mean, rstd);
    const T mean_t = (T)mean, rstd_t = (T)rstd;
    // dxhat = dy' gamma (dy' after the SiLU's derivative);
    // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
    double s1 = 0.0, s2 = 0.0;
    for (size_t k = 0; k < cg; ++k) {
        const T ga = gb[c0 + k], be = gb[c + c0 + k];
        double dgk = 0.0, dbk = 0.0;
        for (size_t j = threadIdx.x; j < hw; j += blockDim.x) {
            const size_t i = k * hw + j;
            const T xhat = (xg[i] - mean_t) * rstd_t;
            T d = dg[i];
            if (silu) {
                const T y = xhat * ga + be;
                const T sg = sigmoid_t(y);
                d = d * sg * ((T)1 + y * ((T)1 - sg));
            }
            dgk += (double)(d * xhat);
            dbk += (double)d;
            dxg[i] = d * ga;
        }
        dgk = block_sum(dgk, s);
        dbk = block_sum(dbk, s);
        if (threadIdx.x == 0) {
            atomicAdd(&packed[numel + c0 + k], (T)dgk);
            atomicAdd(&packed[numel + c + c0 + k], (T)dbk);
        }
        s1 += dbk * (double)ga;
        s2 += dgk * (double)ga;
    }
    // block_sum's barriers make every dxhat written above visible to every thread.
    const T s1t = (T)(s1 / (double)m), s2t = (T)(s2 / (double)m);
    for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
        const T xhat = (xg[i] - mean_t) * rstd_t;
        dxg[i] = rstd_t * (dxg[i] - s1t - xhat * s2t);
    }
}

#define GROUP_NORM_KERNELS(T)                                                                  \
    extern "C" __global__ void group_norm_fwd_##T(size_t groups, size_t cg, size_t hw,         \
                                                  const T *x, const T *gamma, const T *beta,   \
                                                  T *out, double eps, int silu) {              \
        __shared__ double s[THREADS];                                                          \
        forward<T>(groups, cg, hw, x, gamma, beta, out, eps, silu, s);                         \
    }                                                                                          \
    extern "C" __global__ void group_norm_bwd_##T(size_t numel, size_t groups, size_t cg,      \
                                                  size_t hw, const T *x, const T *dy,          \
                                                  const T *gb, T *packed, double eps,          \
                                                  int silu) {                                  \
        __shared__ double s[THREADS];                                                          \
        backward<T>(numel, groups, cg, hw, x, dy, gb, packed, eps, silu, s);                   \
    }

GROUP_NORM_KERNELS(float)
GROUP_NORM_KERNELS(double)
