// Bias and optional ReLU after a convolution, forward and backward, one kernel each (in place of
// candle's broadcast add, ReLU, and their backward passes: a mask, products, temporaries, and
// reductions for the bias gradient). `crates/model/src/bias_act.rs` runs the same arithmetic on
// the CPU.
//
//   forward:   out = y + b[c], then max(out, 0) where relu
//   backward:  dy = grad where out > 0 (all of grad without relu), db[c] = sum of dy over the
//              images and the plane; written packed: dy (n c plane values) then db (c values),
//              db zeroed beforehand. One block of 256 threads per (image, channel) plane.

#define BIAS_ACT_KERNELS(T)                                                                    \
    extern "C" __global__ void bias_act_fwd_##T(const size_t numel, const size_t plane,        \
                                                const size_t channels, const T *y, const T *b, \
                                                T *out, const int relu) {                      \
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < numel;              \
             i += (size_t)blockDim.x * gridDim.x) {                                            \
            T v = y[i] + b[(i / plane) % channels];                                            \
            out[i] = (relu && v <= (T)0) ? (T)0 : v;                                           \
        }                                                                                      \
    }                                                                                          \
    extern "C" __global__ void bias_act_bwd_##T(const size_t numel, const size_t plane,        \
                                                const size_t channels, const T *grad,          \
                                                const T *out, T *packed, const int relu) {     \
        __shared__ T partial[256];                                                             \
        const size_t p = blockIdx.x;                                                           \
        const T *g = grad + p * plane;                                                         \
        const T *o = out + p * plane;                                                          \
        T *d = packed + p * plane;                                                             \
        T acc = (T)0;                                                                          \
        for (size_t i = threadIdx.x; i < plane; i += blockDim.x) {                             \
            T v = (relu && !(o[i] > (T)0)) ? (T)0 : g[i];                                      \
            d[i] = v;                                                                          \
            acc += v;                                                                          \
        }                                                                                      \
        partial[threadIdx.x] = acc;                                                            \
        __syncthreads();                                                                       \
        for (unsigned int k = blockDim.x / 2; k > 0; k >>= 1) {                                \
            if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];             \
            __syncthreads();                                                                   \
        }                                                                                      \
        if (threadIdx.x == 0) atomicAdd(&packed[numel + p % channels], partial[0]);            \
    }

BIAS_ACT_KERNELS(float)
BIAS_ACT_KERNELS(double)
