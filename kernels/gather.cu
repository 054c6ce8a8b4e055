// gather.cu - a batch x = data[idx] from the data set on the device (uint8 scaled by 1/255, or float32 as is).
// Reads data, idx; writes x (n x cols). One thread per element of x.
#include "common.cuh"

extern "C" __global__ void gather_u8(float* x, const unsigned char* data, const long long* idx, int n, int cols)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)n * cols) return;
    const long long r = e / cols, c = e % cols;
    // v / 255 correctly rounded (no fast-math: IEEE division), as the cpu backend and (data / 255).astype(float32)
    x[e] = (float)data[idx[r] * cols + c] / 255.0f;
}

extern "C" __global__ void gather_f32(float* x, const float* data, const long long* idx, int n, int cols)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)n * cols) return;
    const long long r = e / cols, c = e % cols;
    x[e] = data[idx[r] * cols + c];
}
