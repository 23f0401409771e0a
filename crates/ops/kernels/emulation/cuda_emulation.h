// Just enough of CUDA to run our kernels (`../*.cu`) on the CPU, for the tests on machines
// without a GPU: one OS thread per CUDA thread, the blocks of a grid one after another,
// `__syncthreads` a barrier, `__shared__` memory a static shared by the block's threads,
// `atomicAdd` under a lock. It checks the kernels' indexing, reductions and arithmetic; it says
// nothing about speed or about the GPU's memory model beyond what the barriers give.
#pragma once

#include <math.h>

#include <barrier>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;
inline std::barrier<> *emulated_barrier = nullptr;
inline std::mutex emulated_atomics;

#define __global__
#define __device__
#define __shared__ static

inline void __syncthreads() { emulated_barrier->arrive_and_wait(); }

template <typename T>
T atomicAdd(T *address, T value) {
    std::lock_guard<std::mutex> lock(emulated_atomics);
    T old = *address;
    *address = old + value;
    return old;
}

// Runs `kernel(args...)` over a one-dimensional grid of one-dimensional blocks.
template <typename Kernel>
void emulate_launch(unsigned int grid, unsigned int block, Kernel kernel) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        blockIdx = {b, 1, 1};
        std::barrier<> barrier(block);
        emulated_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned int t = 0; t < block; ++t) {
            threads.emplace_back([t, &kernel] {
                threadIdx = {t, 1, 1};
                kernel();
            });
        }
        for (auto &th : threads) th.join();
        emulated_barrier = nullptr;
    }
}
