// Adam's update as three element-wise kernels, one launch each per parameter tensor (instead of
// the dozen kernels and temporaries of candle's element-wise ops). The Rust side,
// `crates/trainer/src/adam_ops.rs`, runs the same arithmetic on the CPU.
//
//   moment:  m <- beta m + keep g'                (square = 0; keep = 1 - beta, from f64)
//            v <- beta v + keep g'^2              (square = 1), with g' = g + weight_decay p
//   update:  p <- p - step_size m / (sqrt(v) / bc2_sqrt + eps)

#define ADAM_KERNELS(T, SQRT)                                                                  \
    extern "C" __global__ void adam_moment_##T(const size_t n, T *m, const T *g, const T *p,   \
                                               const T beta, const T keep,                     \
                                               const T weight_decay, const int square) {       \
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;                  \
             i += (size_t)blockDim.x * gridDim.x) {                                            \
            T gi = g[i] + weight_decay * p[i];                                                 \
            T x = square ? gi * gi : gi;                                                       \
            m[i] = beta * m[i] + keep * x;                                                     \
        }                                                                                      \
    }                                                                                          \
    extern "C" __global__ void adam_update_##T(const size_t n, T *p, const T *m, const T *v,   \
                                               const T step_size, const T bc2_sqrt,            \
                                               const T eps) {                                  \
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;                  \
             i += (size_t)blockDim.x * gridDim.x) {                                            \
            p[i] -= step_size * m[i] / (SQRT(v[i]) / bc2_sqrt + eps);                          \
        }                                                                                      \
    }

ADAM_KERNELS(float, sqrtf)
ADAM_KERNELS(double, sqrt)
