// adam.cu - Adam (TensorFlow's form) over the whole flat parameter buffer in one launch, then the step counter.
// Reads grads, counters; updates params, m, v in place; adam_advance then sets counters[COUNTER_STEP] = t.
#include "common.cuh"

// t = counters[COUNTER_STEP] + 1 is read from device memory, so a captured CUDA graph replays correctly step after
// step.
// Grid-stride loop: any grid covers the buffer.
extern "C" __global__ void adam_update(float* params, const float* grads, float* m, float* v,
                                       const long long* counters, double lr, double beta1, double beta2,
                                       double eps, long long size)
{
    const double t = (double)(counters[COUNTER_STEP] + 1);
    const float lr_t = (float)(lr * sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t)));
    const float b1 = (float)beta1, b2 = (float)beta2, e = (float)eps;
    const float c1 = (float)(1.0 - beta1), c2 = (float)(1.0 - beta2);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grads[i];
        const float mi = b1 * m[i] + c1 * g;
        const float vi = b2 * v[i] + c2 * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] -= lr_t * mi / (sqrtf(vi) + e);
    }
}

// A separate one-thread launch: every block of adam_update must have read the old t before it changes.
extern "C" __global__ void adam_advance(long long* counters)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) counters[COUNTER_STEP] += 1;
}
