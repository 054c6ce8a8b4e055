// activation.cuh - the layers' activations as compile-time policies: y = forward(z), act'(z) from the output y alone.
// Reads and writes no buffers; no layer keeps its pre-activation, since each act' follows from y.
#pragma once

// Activation<ACTIVATION_ELU> etc.: the codes are the indices in fastvae.constants.ACTIVATIONS (generated #defines).
// A new activation whose derivative follows from its output is its name in that tuple and one specialisation here.

template <int ACTIVATION> struct Activation;     // no specialisation for a code: the instance does not compile

// The linear layers' (the heads' and the output's products, and dense_backward of a linear layer).
template <> struct Activation<ACTIVATION_IDENTITY> {
    static __device__ __forceinline__ float forward(float z) { return z; }
    static __device__ __forceinline__ float grad_from_output(float) { return 1.0f; }
};

// ELU: act'(z) = 1 where y > 0, else exp(z) = y + 1.
template <> struct Activation<ACTIVATION_ELU> {
    static __device__ __forceinline__ float forward(float z) { return z > 0.0f ? z : expm1f(z); }
    static __device__ __forceinline__ float grad_from_output(float y) { return y > 0.0f ? 1.0f : y + 1.0f; }
};

// ReLU: act'(z) = 1 where y > 0, else 0 (at the kink, the left derivative). A NaN passes through the forward.
template <> struct Activation<ACTIVATION_RELU> {
    static __device__ __forceinline__ float forward(float z) { return z < 0.0f ? 0.0f : z; }
    static __device__ __forceinline__ float grad_from_output(float y) { return y > 0.0f ? 1.0f : 0.0f; }
};

// tanh: act'(z) = 1 - y^2.
template <> struct Activation<ACTIVATION_TANH> {
    static __device__ __forceinline__ float forward(float z) { return tanhf(z); }
    static __device__ __forceinline__ float grad_from_output(float y) { return 1.0f - y * y; }
};
