// adam.cu - Adam (TensorFlow's form): adam_begin counts the step, adam_update sums the S partial gradients and updates
// in one pass. Writes counters[COUNTER_STEP], then params, m, v, grads[0].
#include "common.cuh"

// One thread, once per step, before adam_update: t = ++counters[COUNTER_STEP], in device memory, so that a captured
// CUDA graph replays correctly step after step.
extern "C" __global__ void adam_begin(long long* counters)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    counters[COUNTER_STEP] += 1;
}

// Grid-stride loop: any grid covers the buffer. counters[COUNTER_STEP] = t was written by adam_begin, launched before on
// the same stream. grads holds `shards` partial gradients of `size` each (row shards of the batch); the step's gradient
// is their sum, formed here in the one pass and left in grads[0..size) (the contract's grads[0]), so no separate
// reduction kernel.
extern "C" __global__ void adam_update(float* params, float* grads, float* m, float* v, const long long* counters,
                                       double lr, double beta1, double beta2, double eps, long long size, int shards)
{
    // The step size with both bias corrections, lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), from this model's own t,
    // by one thread of each block: the two double-precision pow (slow on GeForce-class cards) run once per block (at
    // most ADAM_BLOCKS a step), not once per thread. (It was one buffer of the backend's, written by adam_begin: two
    // models stepping in two threads could each update with the other's, a review's catch.)
    __shared__ float step;
    if (threadIdx.x == 0) {
        const double t = (double)counters[COUNTER_STEP];
        step = (float)(lr * sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t)));
    }
    __syncthreads();
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
