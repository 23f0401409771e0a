// 2x2 max pooling with stride 2, forward and backward, one thread per output value (grid-stride).
// The backward sends each output's gradient, whole, to its window's first maximum in scan order
// (top-left, top-right, bottom-left, bottom-right), as PyTorch does; the window's other three
// inputs get zero. `crates/model/src/layers.rs` runs the same on the CPU.

template <typename T>
__device__ int argmax4(const T *v) {
    int best = 0;
    for (int i = 1; i < 4; ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

template <typename T>
__device__ void window(const T *x, size_t o, size_t h, size_t w, size_t offsets[4], T v[4]) {
    const size_t oh = h / 2, ow = w / 2;
    const size_t p = o / (oh * ow), r = o % (oh * ow), y = r / ow, xo = r % ow;
    const size_t base = p * h * w + 2 * y * w + 2 * xo;
    offsets[0] = base;
    offsets[1] = base + 1;
    offsets[2] = base + w;
    offsets[3] = base + w + 1;
    for (int i = 0; i < 4; ++i) v[i] = x[offsets[i]];
}

#define MAX_POOL_KERNELS(T)                                                                    \
    extern "C" __global__ void max_pool_fwd_##T(const size_t outputs, const size_t h,          \
                                                const size_t w, const T *x, T *out) {          \
        for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < outputs;            \
             o += (size_t)blockDim.x * gridDim.x) {                                            \
            size_t offsets[4];                                                                 \
            T v[4];                                                                            \
            window(x, o, h, w, offsets, v);                                                    \
            out[o] = v[argmax4(v)];                                                            \
        }                                                                                      \
    }                                                                                          \
    extern "C" __global__ void max_pool_bwd_##T(const size_t outputs, const size_t h,          \
                                                const size_t w, const T *x, const T *grad,     \
                                                T *dx) {                                       \
        for (size_t o = blockIdx.x * (size_t)blockDim.x + threadIdx.x; o < outputs;            \
             o += (size_t)blockDim.x * gridDim.x) {                                            \
            size_t offsets[4];                                                                 \
            T v[4];                                                                            \
            window(x, o, h, w, offsets, v);                                                    \
            const int best = argmax4(v);                                                       \
            for (int i = 0; i < 4; ++i) dx[offsets[i]] = i == best ? grad[o] : (T)0;           \
        }                                                                                      \
    }

MAX_POOL_KERNELS(float)
MAX_POOL_KERNELS(double)
