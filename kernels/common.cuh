// common.cuh - helpers every kernel shares: Philox4x32-10, the Box-Muller normals and a block's sum.
// Reads and writes no buffers itself; each .cu file includes it (fastvae inlines it before NVRTC sees the source).
#pragma once

// The values shared with Python (tile sizes, THREADS, the Philox words, SIGMA_SMOOTHING, the loss and counter
// indices, the settings' codes) are #defines that fastvae.cuda.sources.defines() puts in front of the source.
#ifndef THREADS
#error "compile the kernels through fastvae.cuda.sources (module_source or file_source): it prepends their #defines"
#endif
// block_sum_add halves THREADS partial sums down to one, over a product kernel's TILE_T x TILE_T block: a THREADS of
// another size would drop sums without a word (a review)
static_assert((THREADS & (THREADS - 1)) == 0 && THREADS == TILE_T * TILE_T,
              "THREADS must be a power of two, the TILE_T x TILE_T threads of a product kernel's block");
static_assert(TILE_MN == TILE_T * TILE_R, "a product block's tile is TILE_T threads of TILE_R outputs a side");

typedef unsigned int u32;
typedef unsigned long long u64;

// Philox4x32 with 10 rounds (Salmon et al. 2011), word for word as fastvae/rng.py.
struct u32x4 { u32 x, y, z, w; };

__device__ __forceinline__ u32x4 philox4x32_10(u32x4 c, u32 k0, u32 k1)
{
    for (int round = 0; round < 10; ++round) {
        const u32 hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
        const u32 hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
        const u32x4 next = {hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
        c = next;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    return c;
}

// u in (0, 1) as (x + 0.5) * 2^-32: exact in double. The _rn intrinsics forbid FMA contraction, so the GPU
// rounds exactly as NumPy does and the normals match the CPU's (up to the libms' last bit in log/cos/sin).
__device__ __forceinline__ double uniform_open(u32 x)
{
    return __dmul_rn(__dadd_rn((double)x, 0.5), 0x1p-32);
}

// The standard normal number i of the noise stream (seed, noise_stream, step): Philox block i / 4, lane i % 4;
// lanes (0, 1) and (2, 3) are Box-Muller (cos, sin) pairs, computed in double and rounded once to float.
__device__ __forceinline__ float philox_normal(long long seed, int noise_stream, long long step, long long i)
{
    const u64 block = (u64)i >> 2;
    const int lane = (int)(i & 3);
    const u32x4 ctr = {(u32)block, (u32)(u64)step, (u32)((u64)step >> 32), (u32)noise_stream};
    const u32x4 r = philox4x32_10(ctr, (u32)(u64)seed, (u32)((u64)seed >> 32));
    const double u0 = uniform_open(lane < 2 ? r.x : r.z);
    const double u1 = uniform_open(lane < 2 ? r.y : r.w);
    const double radius = sqrt(__dmul_rn(-2.0, log(u0)));
    const double angle = __dmul_rn(6.283185307179586, u1);    // 2 * pi rounded to double, as NumPy's 2.0 * np.pi
    return (float)__dmul_rn(radius, (lane & 1) ? sin(angle) : cos(angle));
}

// Sum of one double per thread over the block (THREADS threads, a power of two), added once to *total: one
// atomic per block.
__device__ __forceinline__ void block_sum_add(double* total, double mine)
{
    __shared__ double partial[THREADS];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    partial[t] = mine;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half >>= 1) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    if (t == 0) atomicAdd(total, partial[0]);
}
