"""The cpu-bf16 backend: the cpu backend with every matrix product on AMX tiles, bf16 operands, fp32 accumulation.

Implements the contract of backends/contract.py with the cpu backend's float32 arrays: master weights, gradients,
Adam's moments, activations, sampling, the KL and the loss stay as in cpu.py, whose fused Numba passes (bias +
activation, act' + bias gradient, sampling + KL, loss + dlogits) and Adam are used as they are. Only the products
differ: amx.matmul rounds both operands to bf16 (nearest even) and accumulates in fp32, so a product of K terms
is within 2 * 2**-8 of the sum of |terms| (tests/tolerances.py). Needs AMX (Intel Sapphire Rapids or later):
get_backend("cpu-bf16") says in one line why not elsewhere (`unavailable_reason`). The tile kernels release the GIL
and keep their packing buffers per thread, so the step's row shards run on the cpu backend's `workers` here too.
"""
from . import amx, cpu
from .amx import unavailable_reason  # noqa: F401  (get_backend asks it before using this backend)
from .cpu import (adam_update, asarray, dtype, empty, gather_batch, synchronize, to_host, workers,  # noqa: F401
                  xp, zeros)

name = "cpu-bf16"


def dense_forward(out, inp, w, b, activation):
    amx.matmul(out, inp, w)
    cpu._bias_act(out, b, cpu.ACTIVATION_CODES[activation])


def dense_backward(dinp, dw, db, dout, inp, w, out, activation):
    if activation == "identity":
        cpu._column_sums(db, dout)
    else:
        cpu._act_grad_bias(dout, out, db, cpu.ACTIVATION_CODES[activation])
    amx.matmul(dw, inp.T, dout)
    if dinp is not None:
        amx.matmul(dinp, dout, w.T)


def heads_forward(z, mu_logvar, loss, inp, w, b, counters, noise_stream, encoder):
    amx.matmul(mu_logvar, inp, w)
    cpu._heads_sample_kl(z, mu_logvar, b, loss, counters[cpu.COUNTER_SEED], noise_stream,
                         counters[cpu.COUNTER_STEP], counters[cpu.COUNTER_ROW], cpu.ENCODER_IS_SIGMA[encoder])


def heads_backward(dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, encoder):
    if cpu.ENCODER_IS_SIGMA[encoder]:
        cpu._heads_sigma_grad(dmu_logvar, dz, mu_logvar, counters[cpu.COUNTER_SEED], noise_stream,
                              counters[cpu.COUNTER_STEP], counters[cpu.COUNTER_ROW])
    else:
        cpu._heads_grad(dmu_logvar, dz, mu_logvar, z)
    dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, "identity")


def output_forward(dlogits, loss, inp, w, b, x, reconstruction):
    amx.matmul(dlogits, inp, w)
    cpu._bias_loss_dlogits(dlogits, b, x, loss, cpu.RECONSTRUCTION_IS_MSE[reconstruction])
