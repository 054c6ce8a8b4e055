// tile.cuh - the tiled matrix product under every layer: one TILE_MN x TILE_MN tile of C = A . B per block of
// TILE_T x TILE_T threads, A and B read through loaders that transpose or fuse (dz = dy . act'(y)). Writes nothing.
#pragma once
#include "common.cuh"
#include "activation.cuh"

// TILE_T, TILE_R (outputs per thread per side), TILE_MN and TILE_K (the depth of one shared-memory stage) are
// #defines generated from fastvae/cuda/launch.py, which the gpu backend launches with.

// A row-major matrix: (r, c) at p[r * ld + c]. `inner` says the second index is the contiguous one.
struct RowMajor {
    const float* p; int ld;
    static const bool inner = true;
    __device__ __forceinline__ float operator()(int r, int c) const { return p[(long long)r * ld + c]; }
};

// The transpose of a row-major matrix: (r, c) at p[c * ld + r].
struct Transposed {
    const float* p; int ld;
    static const bool inner = false;
    __device__ __forceinline__ float operator()(int r, int c) const { return p[(long long)c * ld + r]; }
};

// dz = dy * act'(z), formed from the layer's output y as it is read: dz is never stored. y must be a readable
// buffer of dy's shape even for the identity, whose act' ignores it.
template <int ACTIVATION>
struct ActivationGrad {
    const float* dy; const float* y; int ld;
    static const bool inner = true;
    __device__ __forceinline__ float operator()(int r, int c) const
    {
        const long long i = (long long)r * ld + c;
        return dy[i] * Activation<ACTIVATION>::grad_from_output(y[i]);
    }
};

// f(i, j, r, c) for each output acc[i][j] this thread holds, at (r, c) = (row0 + ty + TILE_T i, col0 + tx + TILE_T j),
// where it lies inside the (rows x cols) result: the epilogue of every product kernel.
template <class F>
__device__ __forceinline__ void for_each_output(int row0, int col0, int rows, int cols, F f)
{
    for (int i = 0; i < TILE_R; ++i) {
        const int r = row0 + (int)threadIdx.y + TILE_T * i;
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + (int)threadIdx.x + TILE_T * j;
            if (r < rows && c < cols) f(i, j, r, c);
        }
    }
}

// acc[i][j] = C(row0 + ty + TILE_T i, col0 + tx + TILE_T j) for C = A . B with A (M x K), B (K x N); out-of-range
// elements read as 0. With colsum != 0 the block also sums B's columns over all K (the bias gradient).
// Consecutive threads store consecutive columns (coalesced) and read shared memory without bank conflicts.
template <class LA, class LB>
__device__ __forceinline__ void tile_product(float acc[TILE_R][TILE_R], float colsum[TILE_R], bool want_colsum,
                                             LA a, LB b, int M, int N, int K, int row0, int col0)
{
    __shared__ float As[TILE_K][TILE_MN + 1];
    __shared__ float Bs[TILE_K][TILE_MN];
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * TILE_T + tx;
    for (int i = 0; i < TILE_R; ++i) {
        colsum[i] = 0.0f;
        for (int j = 0; j < TILE_R; ++j) acc[i][j] = 0.0f;
    }
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        // Stage the tiles; consecutive threads walk the operand's contiguous index so global reads coalesce.
        for (int e = t; e < TILE_MN * TILE_K; e += TILE_T * TILE_T) {
            const int kk = LA::inner ? e % TILE_K : e / TILE_MN;
            const int ii = LA::inner ? e / TILE_K : e % TILE_MN;
            const int r = row0 + ii, k = k0 + kk;
            As[kk][ii] = (r < M && k < K) ? a(r, k) : 0.0f;
        }
        for (int e = t; e < TILE_K * TILE_MN; e += TILE_T * TILE_T) {
            const int kk = LB::inner ? e / TILE_MN : e % TILE_K;
            const int jj = LB::inner ? e % TILE_MN : e / TILE_K;
            const int k = k0 + kk, c = col0 + jj;
            Bs[kk][jj] = (k < K && c < N) ? b(k, c) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) {
            float av[TILE_R], bv[TILE_R];
            for (int i = 0; i < TILE_R; ++i) av[i] = As[kk][ty + TILE_T * i];
            for (int j = 0; j < TILE_R; ++j) bv[j] = Bs[kk][tx + TILE_T * j];
            for (int i = 0; i < TILE_R; ++i)
                for (int j = 0; j < TILE_R; ++j) acc[i][j] += av[i] * bv[j];
            if (want_colsum && ty == 0)
                for (int j = 0; j < TILE_R; ++j) colsum[j] += bv[j];
        }
        __syncthreads();    // the next stage overwrites As and Bs
    }
}
