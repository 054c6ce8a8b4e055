"""The cpu backends' parameter update: Adam over the flat buffer, and the weight gradients fused with it.

adam_update(workers, ...) sums row shards' partial gradients and updates, split between the workers.
weight_update(workers, ...) forms each weight gradient over the whole batch a chunk of rows at a time and updates that
chunk of parameters at once, while the chunk is still in cache (the contract's weight_update; fastvae.step calls it
after the row shards' backward passes, which then skip their weight gradients). Chunks are fixed by the layer shapes,
not by the worker count, so the result is the same however the work is split. Measured on the project's Xeon
(2 threads, the seed's shapes, batch 150): 1.86 ms for the weight gradients and Adam against 2.21 ms for two row
shards' partial weight gradients (75 rows each: thinner, slower products) and Adam summing them.
"""
import functools
import math

import numpy as np
from numba import njit

from ..constants import COUNTER_STEP
from ..params import flat_offsets, update_shapes
from .cpu_blas import gemm

# Chunks of the flat buffer: the row shards' partial gradients are summed into grads[0] a chunk at a time, so the
# update reads the sum from L1/L2 (64 KB per array) instead of making a second pass over memory.
_ADAM_CHUNK = 1 << 14
MIN_PART = 1 << 16      # a smaller part would cost more to hand to a thread than it takes to update
# Rows of a weight gradient per sgemm call in weight_update: its chunk (at most 256 x 784 floats, 0.8 MB) is still in
# the core's 2 MB L2 when Adam reads it; smaller chunks made OpenBLAS slower per flop (measured: 64 rows 2.09 ms,
# 128 1.98, 256 1.86, whole layers 1.92 per step on 2 threads).
WEIGHT_CHUNK_ROWS = 256


def adam_constants(counters, lr, beta1, beta2):
    """(t, lr_t): the step number after this update and TensorFlow's bias-corrected learning rate for it."""
    t = int(counters[COUNTER_STEP]) + 1
    return t, lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def adam_range(params, grads, m, v, lo, hi, lr_t, beta1, beta2, eps):
    """Adam over params[lo:hi] with the gradient sum(grads[:, lo:hi], axis 0), left in grads[0]. Slices per chunk:
    LLVM vectorises the unit-stride loops (8 lanes here) and checks aliasing once per chunk."""
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    c1 = np.float32(1.0 - beta1)
    c2 = np.float32(1.0 - beta2)
    lr = np.float32(lr_t)
    e = np.float32(eps)
    for start in range(lo, hi, _ADAM_CHUNK):
        stop = min(hi, start + _ADAM_CHUNK)
        g = grads[0, start:stop]
        for s in range(1, grads.shape[0]):
            gs = grads[s, start:stop]
            for i in range(g.size):
                g[i] += gs[i]
        p, mc, vc = params[start:stop], m[start:stop], v[start:stop]
        for i in range(g.size):
            gi = g[i]
            mi = b1 * mc[i] + c1 * gi
            vi = b2 * vc[i] + c2 * gi * gi
            mc[i] = mi
            vc[i] = vi
            p[i] -= lr * mi / (np.sqrt(vi) + e)


def adam_update(workers, params, grads, m, v, counters, lr, beta1, beta2, eps):
    """TensorFlow's Adam (the seed's): bias correction folded into lr_t, eps added to sqrt(v). The buffer is split
    between the workers (memory-bound: 0.37 ms on two threads against 0.71 on one, 1.3 M parameters)."""
    t, lr_t = adam_constants(counters, lr, beta1, beta2)
    parts = max(1, min(workers.count, params.size // MIN_PART))
    # part boundaries on multiples of 16 elements: whole 64-byte lines where the buffers are 64-byte aligned (NumPy
    # aligns to 16 bytes), so at most the line at each boundary is written by two threads
    bounds = [min(params.size, (params.size * k // parts + 15) // 16 * 16) for k in range(parts)] + [params.size]
    workers.run(lambda k: adam_range(params, grads, m, v, bounds[k], bounds[k + 1], lr_t, beta1, beta2, eps), parts)
    counters[COUNTER_STEP] = t


# ---------------------------------------------------------------- weight gradients fused with Adam

@functools.lru_cache(maxsize=64)
def plan(shapes, chunk_rows, parts):
    """(items, bounds): items int64 (I, 4) = (layer, first row, end row, offset in the flat buffer): every weight cut
    into chunks of chunk_rows rows (a multiple of 32), each layer's bias one more item (rows -1, -1, at its offset);
    bounds: parts + 1 item indices cutting the list into contiguous runs of about equal work (rows x fan-out for a
    weight chunk; a bias costs about a quarter row)."""
    offsets, _ = flat_offsets(shapes)
    items, cost = [], []
    for l, ((fan_in, fan_out), (w_off, b_off)) in enumerate(zip(shapes, offsets)):
        for r0 in range(0, fan_in, chunk_rows):
            r1 = min(fan_in, r0 + chunk_rows)
            items.append((l, r0, r1, w_off + r0 * fan_out))
            cost.append((r1 - r0) * fan_out)
        items.append((l, -1, -1, b_off))
        cost.append(fan_out / 4)
    total = np.cumsum(cost)
    bounds = [0] + [int(np.searchsorted(total, total[-1] * k / parts)) + 1 for k in range(1, parts)] + [len(items)]
    bounds = [min(b, len(items)) for b in bounds]
    return np.array(items, np.int64), bounds


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def column_sums(db, d):
    """db = sum over rows of d (reassociation allowed: lanes accumulate in parallel)."""
    db[:] = 0.0
    for r in range(d.shape[0]):
        row = d[r]
        for j in range(db.size):
            db[j] += row[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _weight_items(params, grads, m, v, inputs, douts, items, lo, hi, lr_t, beta1, beta2, eps):
    """items[lo:hi] of plan(): each chunk's gradient rows by sgemm (the batch is the reduction), then Adam on them."""
    g2 = grads.reshape((1, grads.size))
    for it in range(lo, hi):
        layer, r0, r1, at = items[it, 0], items[it, 1], items[it, 2], items[it, 3]
        dz = douts[layer]
        n = dz.shape[1]
        if r0 < 0:
            column_sums(grads[at:at + n], dz)
            adam_range(params, g2, m, v, at, at + n, lr_t, beta1, beta2, eps)
            continue
        gemm(grads[at:at + (r1 - r0) * n].reshape((r1 - r0, n)), inputs[layer][:, r0:r1], True, dz, False)
        adam_range(params, g2, m, v, at, at + (r1 - r0) * n, lr_t, beta1, beta2, eps)


def as_layers(inputs, douts):
    """The layers' arrays as Numba takes them: tuples of C-ordered float32 (n, K_l) and (n, N_l) arrays."""
    for a in (*inputs, *douts):
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError("weight_update takes C-ordered float32 inputs and douts")
    return tuple(inputs), tuple(douts)


def weight_update(workers, params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    """The contract's weight_update on the cpu backend (fp32 sgemm for the gradient chunks), split between the
    workers in runs of chunks of about equal work."""
    shapes = update_shapes(inputs, douts, params.size)
    parts = max(1, min(workers.count, params.size // MIN_PART))
    items, bounds = plan(shapes, WEIGHT_CHUNK_ROWS, parts)
    inputs, douts = as_layers(inputs, douts)
    t, lr_t = adam_constants(counters, lr, beta1, beta2)
    workers.run(lambda k: _weight_items(params, grads, m, v, inputs, douts, items, bounds[k], bounds[k + 1], lr_t,
                                        beta1, beta2, eps), parts)
    counters[COUNTER_STEP] = t
