// heads.cu - the encoder's heads [mu | logvar] = inp W + b fused with sampling z = mu + sigma eps and the KL term.
// Forward reads inp, w, b, counters, writes mu_logvar, z, adds to loss[LOSS_KL]; backward writes dmu_logvar.
#include "tile.cuh"

// The second half's meaning is a compile-time policy: logvar = log sigma^2 (ENCODER_GAMMA, the seed's final form)
// or sigma itself (ENCODER_SIGMA, its first form); the buffer is mu_logvar either way.

template <int ENCODER> struct Encoder;

// [mu | logvar]: sigma = exp(logvar / 2); KL = (exp(logvar) + mu^2 - 1 - logvar) / 2. Its backward recovers
// sigma eps as z - mu: d logvar = dz (z - mu) / 2 + (exp(logvar) - 1) / 2.
template <> struct Encoder<ENCODER_GAMMA> {
    static __device__ __forceinline__ float sigma(float logvar) { return expf(0.5f * logvar); }
    static __device__ __forceinline__ double kl(float mu, float logvar)
    {
        return 0.5 * (exp((double)logvar) + (double)mu * mu - 1.0 - logvar);
    }
    static __device__ __forceinline__ float dsecond(float d, float mu, float logvar, const float* z,
                                                    const long long*, int, int, long long e)
    {
        return 0.5f * d * (z[e] - mu) + 0.5f * (expf(logvar) - 1.0f);
    }
};

// [mu | sigma]: KL = (sigma^2 + mu^2 - 1 - log(SIGMA_SMOOTHING + sigma^2)) / 2, the smoothing keeping sigma = 0
// finite. Its backward draws eps again from (seed, noise_stream, step) at the forward's element
// (COUNTER_ROW + r) L + c = COUNTER_ROW L + e, since sigma may be 0 (z - mu would not give it back):
// d sigma = dz eps + sigma - sigma / (SIGMA_SMOOTHING + sigma^2).
template <> struct Encoder<ENCODER_SIGMA> {
    static __device__ __forceinline__ float sigma(float s) { return s; }
    static __device__ __forceinline__ double kl(float mu, float s)
    {
        const double s2 = (double)s * s;
        return 0.5 * (s2 + (double)mu * mu - 1.0 - log(SIGMA_SMOOTHING + s2));
    }
    static __device__ __forceinline__ float dsecond(float d, float, float s, const float*,
                                                    const long long* counters, int noise_stream, int L, long long e)
    {
        const long long drawn = counters[COUNTER_ROW] * L + e;
        const float eps = philox_normal(counters[COUNTER_SEED], noise_stream, counters[COUNTER_STEP], drawn);
        return (float)((double)d * eps + s - s / (SIGMA_SMOOTHING + (double)s * s));
    }
};

// grid (ceil(n / TILE_MN), ceil(L / TILE_MN)), block (TILE_T, TILE_T): each thread owns matching mu and second-half
// columns of its rows, so the sample and the KL term are formed in the epilogue. eps comes from Philox
// (seed, noise_stream, step, (row + r) L + c), row = counters[COUNTER_ROW] the first row of these rows in the batch.
template <int ENCODER>
__global__ void heads_forward(float* z, float* mu_logvar, double* loss, const float* inp, const float* w,
                              const float* b, const long long* counters, int noise_stream, int n, int K, int L)
{
    float mu[TILE_R][TILE_R], second[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.x * TILE_MN, col0 = blockIdx.y * TILE_MN;
    const RowMajor a = {inp, K}, w_mu = {w, 2 * L}, w_second = {w + L, 2 * L};
    tile_product(mu, unused, false, a, w_mu, n, L, K, row0, col0);
    tile_product(second, unused, false, a, w_second, n, L, K, row0, col0);
    const long long seed = counters[COUNTER_SEED], step = counters[COUNTER_STEP], row = counters[COUNTER_ROW];
    double kl = 0.0;
    for_each_output(row0, col0, n, L, [&](int i, int j, int r, int c) {
        const float m = mu[i][j] + b[c], s = second[i][j] + b[L + c];
        mu_logvar[(long long)r * 2 * L + c] = m;
        mu_logvar[(long long)r * 2 * L + L + c] = s;
        const float eps = philox_normal(seed, noise_stream, step, (row + r) * L + c);
        z[(long long)r * L + c] = m + Encoder<ENCODER>::sigma(s) * eps;
        kl += Encoder<ENCODER>::kl(m, s);
    });
    block_sum_add(&loss[LOSS_KL], kl);
}

// dmu_logvar = [dz + mu | d second half]: the decoder's gradient plus the KL term's. One thread per (row, latent
// column); the products that follow are dense_backward_*<ACTIVATION_IDENTITY>.
template <int ENCODER>
__global__ void heads_backward_mu_logvar(float* dmu_logvar, const float* dz, const float* mu_logvar, const float* z,
                                         const long long* counters, int noise_stream, int n, int L)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)n * L) return;
    const long long r = e / L, c = e % L;
    const float m = mu_logvar[r * 2 * L + c], s = mu_logvar[r * 2 * L + L + c], d = dz[e];
    dmu_logvar[r * 2 * L + c] = d + m;
    dmu_logvar[r * 2 * L + L + c] = Encoder<ENCODER>::dsecond(d, m, s, z, counters, noise_stream, L, e);
}
