// heads.cu - the encoder's heads [mu | gamma] = inp W + b fused with sampling z = mu + exp(gamma / 2) eps and KL.
// Forward reads inp, w, b, counters (seed, step) and writes stats, z, adds KL to loss[1]; backward writes dstats.
// The _sigma kernels are the seed's first form: the heads output sigma itself and the KL has log(1e-10 + sigma^2).
#include "tile.cuh"

// grid (ceil(L / 32), ceil(n / 32)), block (16, 16): each thread owns matching mu and gamma columns of its rows,
// so the sample and the KL term are formed in the epilogue. eps comes from Philox (seed, stream, step, r L + c).
extern "C" __global__ void heads_forward(float* z, float* stats, double* loss, const float* inp, const float* w,
                                         const float* b, const long long* counters, int stream, int n, int K, int L)
{
    float mu[TILE_R][TILE_R], gamma[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.y * TILE_MN, col0 = blockIdx.x * TILE_MN;
    const RowMajor a = {inp, K}, w_mu = {w, 2 * L}, w_gamma = {w + L, 2 * L};
    tile_product(mu, unused, false, a, w_mu, n, L, K, row0, col0);
    tile_product(gamma, unused, false, a, w_gamma, n, L, K, row0, col0);
    const long long seed = counters[0], step = counters[1];
    double kl = 0.0;
    for (int i = 0; i < TILE_R; ++i) {
        const int r = row0 + threadIdx.y + TILE_T * i;
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + threadIdx.x + TILE_T * j;
            if (r < n && c < L) {
                const float m = mu[i][j] + b[c], g = gamma[i][j] + b[L + c];
                stats[(long long)r * 2 * L + c] = m;
                stats[(long long)r * 2 * L + L + c] = g;
                const float eps = philox_normal(seed, stream, step, (long long)r * L + c);
                z[(long long)r * L + c] = m + expf(0.5f * g) * eps;
                kl += 0.5 * (exp((double)g) + (double)m * m - 1.0 - g);
            }
        }
    }
    block_sum_add(&loss[1], kl);
}

// dstats = [dz + mu | dz (z - mu) / 2 + (exp(gamma) - 1) / 2]: the decoder's gradient plus the KL term's.
// One thread per (row, latent column); the products that follow are the plain dense backward.
extern "C" __global__ void heads_backward_stats(float* dstats, const float* dz, const float* stats, const float* z,
                                                int n, int L)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)n * L) return;
    const long long r = e / L, c = e % L;
    const float m = stats[r * 2 * L + c], g = stats[r * 2 * L + L + c], d = dz[e];
    dstats[r * 2 * L + c] = d + m;
    dstats[r * 2 * L + L + c] = 0.5f * d * (z[e] - m) + 0.5f * (expf(g) - 1.0f);
}

// ---- the seed's first form: [mu | sigma] = inp W + b; z = mu + sigma eps; KL = (sigma^2 + mu^2 - 1
// - log(1e-10 + sigma^2)) / 2, the 1e-10 keeping sigma = 0 finite. Same grid and block as heads_forward.
extern "C" __global__ void heads_sigma_forward(float* z, float* stats, double* loss, const float* inp,
                                               const float* w, const float* b, const long long* counters,
                                               int stream, int n, int K, int L)
{
    float mu[TILE_R][TILE_R], sigma[TILE_R][TILE_R], unused[TILE_R];
    const int row0 = blockIdx.y * TILE_MN, col0 = blockIdx.x * TILE_MN;
    const RowMajor a = {inp, K}, w_mu = {w, 2 * L}, w_sigma = {w + L, 2 * L};
    tile_product(mu, unused, false, a, w_mu, n, L, K, row0, col0);
    tile_product(sigma, unused, false, a, w_sigma, n, L, K, row0, col0);
    const long long seed = counters[0], step = counters[1];
    double kl = 0.0;
    for (int i = 0; i < TILE_R; ++i) {
        const int r = row0 + threadIdx.y + TILE_T * i;
        for (int j = 0; j < TILE_R; ++j) {
            const int c = col0 + threadIdx.x + TILE_T * j;
            if (r < n && c < L) {
                const float m = mu[i][j] + b[c], s = sigma[i][j] + b[L + c];
                stats[(long long)r * 2 * L + c] = m;
                stats[(long long)r * 2 * L + L + c] = s;
                const float eps = philox_normal(seed, stream, step, (long long)r * L + c);
                z[(long long)r * L + c] = m + s * eps;
                const double s2 = (double)s * s;
                kl += 0.5 * (s2 + (double)m * m - 1.0 - log(1e-10 + s2));
            }
        }
    }
    block_sum_add(&loss[1], kl);
}

// dstats = [dz + mu | dz eps + sigma - sigma / (1e-10 + sigma^2)]; eps is drawn again from (seed, stream, step)
// because sigma may be 0 (it cannot be recovered from z). One thread per (row, latent column).
extern "C" __global__ void heads_sigma_backward_stats(float* dstats, const float* dz, const float* stats,
                                                      const long long* counters, int stream, int n, int L)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)n * L) return;
    const long long r = e / L, c = e % L;
    const float m = stats[r * 2 * L + c], s = stats[r * 2 * L + L + c], d = dz[e];
    const float eps = philox_normal(counters[0], stream, counters[1], e);
    dstats[r * 2 * L + c] = d + m;
    dstats[r * 2 * L + L + c] = (float)((double)d * eps + s - s / (1e-10 + (double)s * s));
}
