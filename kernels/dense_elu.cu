// dense_elu.cu - dense layers y = x W + b (optionally ELU) and their backward: dW = x^T dz with db fused, dx = dz W^T.
// Forward reads inp, w, b and writes out; backward reads dout (and out for ELU'), inp, w and writes dw, db, dinp,
// and dense_elu_store_dz then overwrites dout with dz (the backend contract's observable result).
#include "tile.cuh"

// ---- forward: grid (ceil(N / 32), ceil(n / 32)), block (16, 16); bias and ELU in the epilogue, z never stored
template <bool ELU>
__device__ __forceinline__ void dense_forward_tile(float* out, const float* inp, const float* w, const float* b,
                                                   int n, int K, int N)
{
    float acc[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.y * TILE_MN, col0 = blockIdx.x * TILE_MN;
    const RowMajor a = {inp, K}, wm = {w, N};
    tile_product(acc, unused, false, a, wm, n, N, K, row0, col0);
    for (int i = 0; i < TILE_R; ++i) {
        const int r = row0 + threadIdx.y + TILE_T * i;
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + threadIdx.x + TILE_T * j;
            if (r < n && c < N) {
                const float z = acc[i][j] + b[c];
                out[(long long)r * N + c] = ELU ? elu(z) : z;
            }
        }
    }
}

extern "C" __global__ void dense_forward(float* out, const float* inp, const float* w, const float* b,
                                         int n, int K, int N)
{
    dense_forward_tile<false>(out, inp, w, b, n, K, N);
}

extern "C" __global__ void dense_elu_forward(float* out, const float* inp, const float* w, const float* b,
                                             int n, int K, int N)
{
    dense_forward_tile<true>(out, inp, w, b, n, K, N);
}

// ---- backward, weights: dW (K x N) = inp^T dz, reduced over the n rows; grid (ceil(N / 32), ceil(K / 32)).
// The blocks of the first row of tiles also sum dz's columns: db = sum over rows of dz, no extra pass.
template <class LD>
__device__ __forceinline__ void weight_grad_tile(float* dw, float* db, LD dz, const float* inp, int n, int K, int N)
{
    float acc[TILE_R][TILE_R], colsum[TILE_R];
    const int row0 = blockIdx.y * TILE_MN, col0 = blockIdx.x * TILE_MN;
    const bool want_db = blockIdx.y == 0;
    const Transposed a = {inp, K};
    tile_product(acc, colsum, want_db, a, dz, K, N, n, row0, col0);
    for (int i = 0; i < TILE_R; ++i) {
        const int r = row0 + threadIdx.y + TILE_T * i;
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + threadIdx.x + TILE_T * j;
            if (r < K && c < N) dw[(long long)r * N + c] = acc[i][j];
        }
    }
    if (want_db && threadIdx.y == 0)
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + threadIdx.x + TILE_T * j;
            if (c < N) db[c] = colsum[j];
        }
}

extern "C" __global__ void dense_backward_weights(float* dw, float* db, const float* dout, const float* inp,
                                                  int n, int K, int N)
{
    const RowMajor dz = {dout, N};
    weight_grad_tile(dw, db, dz, inp, n, K, N);
}

extern "C" __global__ void dense_elu_backward_weights(float* dw, float* db, const float* dout, const float* out,
                                                      const float* inp, int n, int K, int N)
{
    const EluGrad dz = {dout, out, N};
    weight_grad_tile(dw, db, dz, inp, n, K, N);
}

// ---- backward, inputs: dinp (n x K) = dz W^T; grid (ceil(K / 32), ceil(n / 32))
template <class LD>
__device__ __forceinline__ void input_grad_tile(float* dinp, LD dz, const float* w, int n, int K, int N)
{
    float acc[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.y * TILE_MN, col0 = blockIdx.x * TILE_MN;
    const Transposed wt = {w, N};
    tile_product(acc, unused, false, dz, wt, n, K, N, row0, col0);
    for (int i = 0; i < TILE_R; ++i) {
        const int r = row0 + threadIdx.y + TILE_T * i;
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + threadIdx.x + TILE_T * j;
            if (r < n && c < K) dinp[(long long)r * K + c] = acc[i][j];
        }
    }
}

extern "C" __global__ void dense_backward_input(float* dinp, const float* dout, const float* w, int n, int K, int N)
{
    const RowMajor dz = {dout, N};
    input_grad_tile(dinp, dz, w, n, K, N);
}

extern "C" __global__ void dense_elu_backward_input(float* dinp, const float* dout, const float* out, const float* w,
                                                    int n, int K, int N)
{
    const EluGrad dz = {dout, out, N};
    input_grad_tile(dinp, dz, w, n, K, N);
}

// ---- the contract's dz: dout = dout * ELU'(y) in place, launched after both products above have read dy
// (they form dz as they read, so no product waits for this pass). One thread per element.
extern "C" __global__ void dense_elu_store_dz(float* dout, const float* out, long long count)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < count) dout[e] *= elu_grad_from_output(out[e]);
}
