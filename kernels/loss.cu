// loss.cu - the output layer fused with its loss: logits = inp W + b, the reconstruction loss against x and dlogits.
// Reads inp, w, b, x; writes dlogits (the logits themselves are never stored), adds to loss[LOSS_RECONSTRUCTION].
#include "tile.cuh"

// The loss is a compile-time policy: sigmoid cross-entropy (RECONSTRUCTION_XENT) or the squared error of
// sigmoid(logits) (RECONSTRUCTION_MSE); dlogits is its gradient with respect to the logits.

// sigmoid(l) from small = exp(-|l|) in (0, 1]: no overflow on either side.
__device__ __forceinline__ float sigmoid_from(float l, float small)
{
    return l >= 0.0f ? 1.0f / (1.0f + small) : small / (1.0f + small);
}

template <int RECONSTRUCTION> struct Reconstruction;

// max(l, 0) - l x + log(1 + exp(-|l|)); d/dl = sigmoid(l) - x.
template <> struct Reconstruction<RECONSTRUCTION_XENT> {
    static __device__ __forceinline__ double loss(float l, float x, float* dl)
    {
        const float small = expf(-fabsf(l));
        *dl = sigmoid_from(l, small) - x;
        return (double)(fmaxf(l, 0.0f) - l * x + log1pf(small));
    }
};

// (p - x)^2 with p = sigmoid(l); d/dl = 2 (p - x) p (1 - p).
template <> struct Reconstruction<RECONSTRUCTION_MSE> {
    static __device__ __forceinline__ double loss(float l, float x, float* dl)
    {
        const float p = sigmoid_from(l, expf(-fabsf(l))), d = p - x;
        *dl = 2.0f * d * p * (1.0f - p);
        return (double)d * d;
    }
};

// grid (ceil(n / TILE_MN), ceil(N / TILE_MN)), block (TILE_T, TILE_T)
template <int RECONSTRUCTION>
__global__ void output_forward(float* dlogits, double* loss, const float* inp, const float* w, const float* b,
                               const float* x, int n, int K, int N)
{
    float acc[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.x * TILE_MN, col0 = blockIdx.y * TILE_MN;
    const RowMajor a = {inp, K}, wm = {w, N};
    tile_product(acc, unused, false, a, wm, n, N, K, row0, col0);
    double total = 0.0;
    for_each_output(row0, col0, n, N, [&](int i, int j, int r, int c) {
        const long long e = (long long)r * N + c;
        total += Reconstruction<RECONSTRUCTION>::loss(acc[i][j] + b[c], x[e], &dlogits[e]);
    });
    block_sum_add(&loss[LOSS_RECONSTRUCTION], total);
}
