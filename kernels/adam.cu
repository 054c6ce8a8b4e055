// adam.cu - Adam (TensorFlow's form): adam_begin forms the step's bias-corrected step size once, adam_update sums
// the S partial gradients and updates in one pass. Writes counters[COUNTER_STEP], lr_t, then params, m, v, grads[0].
#include "common.cuh"

// One thread, once per step, before adam_update: t = ++counters[COUNTER_STEP] and the step size with both bias
// corrections, lr_t[0] = lr sqrt(1 - beta2^t) / (1 - beta1^t). Both live in device memory, so a captured CUDA graph
// replays correctly step after step, and the two double-precision pow (slow on GeForce-class cards) run once per step,
// not once per thread.
extern "C" __global__ void adam_begin(double* lr_t, long long* counters, double lr, double beta1, double beta2)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const long long t = counters[COUNTER_STEP] + 1;
    counters[COUNTER_STEP] = t;
    lr_t[0] = lr * sqrt(1.0 - pow(beta2, (double)t)) / (1.0 - pow(beta1, (double)t));
}

// Grid-stride loop: any grid covers the buffer. lr_t[0] was written by adam_begin, launched before on the same stream.
// grads holds `shards` partial gradients of `size` each (row shards of the batch); the step's gradient is their sum,
// formed here in the one pass and left in grads[0..size) (the contract's grads[0]), so no separate reduction kernel.
extern "C" __global__ void adam_update(float* params, float* grads, float* m, float* v, const double* lr_t,
                                       double beta1, double beta2, double eps, long long size, int shards)
{
    const float step = (float)lr_t[0];
    const float b1 = (float)beta1, b2 = (float)beta2, e = (float)eps;
    const float c1 = (float)(1.0 - beta1), c2 = (float)(1.0 - beta2);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        float g = grads[i];
        for (int s = 1; s < shards; ++s) g += grads[s * size + i];
        if (shards > 1) grads[i] = g;       // one shard (the gpu's own steps): grads[0] is the sum already
        const float mi = b1 * m[i] + c1 * g;
        const float vi = b2 * v[i] + c2 * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] -= step * mi / (sqrtf(vi) + e);
    }
}
