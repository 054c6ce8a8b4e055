// dense.cu - a dense layer y = act(x W + b) and its backward dW = x^T dz (db fused), dx = dz W^T, dz = dy act'(y).
// Forward reads inp, w, b and writes out; backward reads dout (dy, left as it is), out, inp, w, writes dw, db, dinp.
#include "tile.cuh"

// act is a compile-time policy (activation.cuh): one instance per activation, named dense_forward<ACTIVATION_ELU>
// etc. dz is formed from dy and y as the products read them, so it is never stored.

// ---- forward: grid (ceil(n / TILE_MN), ceil(N / TILE_MN)), block (TILE_T, TILE_T); bias and act in the epilogue.
// Row tiles on grid.x in every product (up to 2^31 - 1 of them; grid.y stops at 65535)
template <int ACTIVATION>
__global__ void dense_forward(float* out, const float* inp, const float* w, const float* b, int n, int K, int N)
{
    float acc[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.x * TILE_MN, col0 = blockIdx.y * TILE_MN;
    const RowMajor a = {inp, K}, wm = {w, N};
    tile_product(acc, unused, false, a, wm, n, N, K, row0, col0);
    for_each_output(row0, col0, n, N, [&](int i, int j, int r, int c) {
        out[(long long)r * N + c] = Activation<ACTIVATION>::forward(acc[i][j] + b[c]);
    });
}

// ---- backward, weights: dW (K x N) = inp^T dz, reduced over the n rows; grid (ceil(K / TILE_MN), ceil(N / TILE_MN)).
// The blocks of the first row of tiles (blockIdx.x == 0) also sum dz's columns: db = sum over rows of dz, no
// extra pass.
template <int ACTIVATION>
__global__ void dense_backward_weights(float* dw, float* db, const float* dout, const float* out, const float* inp,
                                       int n, int K, int N)
{
    float acc[TILE_R][TILE_R], colsum[TILE_R];
    const int row0 = blockIdx.x * TILE_MN, col0 = blockIdx.y * TILE_MN;
    const bool want_db = blockIdx.x == 0;
    const Transposed a = {inp, K};
    const ActivationGrad<ACTIVATION> dz = {dout, out, N};
    tile_product(acc, colsum, want_db, a, dz, K, N, n, row0, col0);
    for_each_output(row0, col0, K, N, [&](int i, int j, int r, int c) { dw[(long long)r * N + c] = acc[i][j]; });
    if (want_db && threadIdx.y == 0)
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + (int)threadIdx.x + TILE_T * j;
            if (c < N) db[c] = colsum[j];
        }
}

// ---- backward, inputs: dinp (n x K) = dz W^T; grid (ceil(n / TILE_MN), ceil(K / TILE_MN))
template <int ACTIVATION>
__global__ void dense_backward_input(float* dinp, const float* dout, const float* out, const float* w,
                                     int n, int K, int N)
{
    float acc[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.x * TILE_MN, col0 = blockIdx.y * TILE_MN;
    const ActivationGrad<ACTIVATION> dz = {dout, out, N};
    const Transposed wt = {w, N};
    tile_product(acc, unused, false, dz, wt, n, K, N, row0, col0);
    for_each_output(row0, col0, n, K, [&](int i, int j, int r, int c) { dinp[(long long)r * K + c] = acc[i][j]; });
}
