"""The cpu backends' parameter update: Adam over the flat buffer, and the weight gradients fused with it.

adam_update(workers, ...) sums row shards' partial gradients and updates, split between the workers.
weight_update(workers, ...) forms each weight gradient over the whole batch a chunk of rows at a time and updates that
chunk of parameters at once, while the chunk is still in cache (the contract's weight_update; fastvae.step calls it
after the row shards' backward passes, which then skip their weight gradients). Chunks are fixed by the layer shapes,
not by the worker count, so the result is the same however the work is split. Measured on the project's Xeon
(2 threads, the seed's shapes, batch 150): 1.86 ms for the weight gradients and Adam against 2.21 ms for two row
shards' partial weight gradients (75 rows each: thinner, slower products) and Adam summing them. Inside a step, Adam
writes the parameters with their cache lines prefetched for writing (adam_prefetched), each layer's chunks may start
as soon as every shard is done with that layer (start_items, layer_ready), and the first layer's product skips the
columns of its input that are zero in the whole batch and, in blocks of 8 of the others, the rows that are zero in
all 8 (_zero_columns_skipped, sparse_dw.py).
"""
import functools
import math
import threading

import numpy as np
from numba import njit

from ..atomics import claim, prefetch_for_write
from ..barrier import arrive, arrive_and_wait, depart, wait_for_layer
from ..constants import COUNTER_STEP
from ..params import flat_offsets, update_shapes
from . import sparse_dw
from .capture import call
from .cpu_blas import gemm

# Chunks of the flat buffer: the row shards' partial gradients are summed into grads[0] a chunk at a time, so the
# update reads the sum from L1/L2 (64 KB per array) instead of making a second pass over memory.
_ADAM_CHUNK = 1 << 14
MIN_PART = 1 << 16      # a smaller part would cost more to hand to a thread than it takes to update
# Rows of a weight gradient per sgemm call in weight_update: its chunk (at most 512 x 784 floats, 1.6 MB) is still in
# the core's 2 MB L2 when Adam reads it; smaller chunks made OpenBLAS slower per flop. Measured on the project's Xeon
# inside whole steps (bench/step_breakdown's whole_steps, 2 threads, 3 runs of 4-8 alternated rounds of 200 steps),
# the update phase at 256 / 512 rows: 2.57 / 2.46, 2.51 / 2.47, 2.49 / 2.37 ms; whole layers 2.44, 2.46, 2.39 (an
# earlier measurement of the update alone, 2026-12-05: 64 rows 2.09 ms, 128 1.98, 256 1.86, whole layers 1.92).
WEIGHT_CHUNK_ROWS = 512


def adam_constants(counters, lr, beta1, beta2):
    """(t, lr_t): the step number after this update and TensorFlow's bias-corrected learning rate for it."""
    t = int(counters[COUNTER_STEP]) + 1
    return t, adam_lr(t, lr, beta1, beta2)


def adam_lr(t, lr, beta1, beta2):
    """TensorFlow's bias-corrected learning rate for Adam's step t (1, 2, ...), in Python's float64 (the bits every
    path uses: step_chunks computes a chunk's in advance)."""
    return lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_block(p, g, m, v, lr_t, beta1, beta2, eps):
    """Adam on equal-length 1-D slices: p, m, v updated with the gradient g. LLVM vectorises the unit-stride loop
    (8 lanes here) and checks aliasing once per call. No fast-math: with it LLVM computed the vector body and the
    scalar remainder differently (1-3 parameters in 250,000 differed in their last bit when the same update was split
    at other places); without it every element gets the same bits wherever a call starts, at the same speed
    (memory-bound: 0.36 ms per thread for half the seed's parameters either way, the Xeon)."""
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    c1 = np.float32(1.0 - beta1)
    c2 = np.float32(1.0 - beta2)
    lr = np.float32(lr_t)
    e = np.float32(eps)
    for i in range(g.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr * mi / (np.sqrt(vi) + e)


# Adam writes the parameters a block of this many at a time, each block's lines prefetched for writing while the block
# before it is updated (adam_prefetched). 1024-4096 were alike (2026-12-06, the Xeon, in steps; 16384 a little slower).
PREFETCH_BLOCK = 1024


@njit(cache=True, nogil=True, error_model="numpy")
def adam_prefetched(p, g, m, v, lr_t, beta1, beta2, eps):
    """adam_block on equal-length 1-D slices, PREFETCH_BLOCK elements at a time, p's cache lines of the next block
    prefetched for writing (PREFETCHW) first: the same arithmetic, so the same bits.

    Why: the step's row shards read every weight on both cores just before the update writes them. Measured on the
    project's Xeon (2026-12-06, two threads, the update's items after a shards' phase against after another update):
    storing into p alone took 0.23 against 0.095 ms per thread, into m and v (which nothing else reads) 0.24 against
    0.19, and Adam 0.70 against 0.35 (the rate it gets from DRAM); reading them was not slower. With p's lines
    prefetched for writing, Adam after the shards took 0.42-0.45 ms per thread (m and v prefetched too: 0.46)."""
    n = g.size
    _prefetch_for_write(p, 0, min(n, PREFETCH_BLOCK))
    for start in range(0, n, PREFETCH_BLOCK):
        stop = min(n, start + PREFETCH_BLOCK)
        _prefetch_for_write(p, stop, min(n, stop + PREFETCH_BLOCK))
        adam_block(p[start:stop], g[start:stop], m[start:stop], v[start:stop], lr_t, beta1, beta2, eps)


@njit(inline="always", cache=True, nogil=True)
def _adam_zero_gradient(params, m, v, lo, hi, zeros, lr_t, beta1, beta2, eps):
    """adam_prefetched on params[lo:hi] with a zero gradient, PREFETCH_BLOCK at a time from `zeros` (that long):
    adam_block's arithmetic on zeros (a loop written without g would be reassociated by LLVM, whose bits then
    differ), and no second variant of adam_prefetched to compile (0.4 s of a cold first step)."""
    for start in range(lo, hi, PREFETCH_BLOCK):
        stop = min(hi, start + PREFETCH_BLOCK)
        adam_prefetched(params[start:stop], zeros[:stop - start], m[start:stop], v[start:stop], lr_t, beta1, beta2,
                        eps)


@njit(inline="always", cache=True, nogil=True)
def _prefetch_for_write(a, lo, hi):
    """Every cache line of a[lo:hi] (16 floats apart) prefetched for writing."""
    for i in range(lo, hi, 16):
        prefetch_for_write(a, i)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_range(params, grads, m, v, lo, hi, lr_t, beta1, beta2, eps):
    """Adam over params[lo:hi] with the gradient sum(grads[:, lo:hi], axis 0), left in grads[0], a chunk at a time
    (the sum is read back from L1/L2)."""
    for start in range(lo, hi, _ADAM_CHUNK):
        stop = min(hi, start + _ADAM_CHUNK)
        g = grads[0, start:stop]
        for s in range(1, grads.shape[0]):
            gs = grads[s, start:stop]
            for i in range(g.size):
                g[i] += gs[i]
        adam_prefetched(params[start:stop], g, m[start:stop], v[start:stop], lr_t, beta1, beta2, eps)


def adam_update(workers, params, grads, m, v, counters, lr, beta1, beta2, eps):
    """TensorFlow's Adam (the seed's): bias correction folded into lr_t, eps added to sqrt(v). The buffer is split
    between the workers (memory-bound: 0.37 ms on two threads against 0.71 on one, 1.3 M parameters)."""
    t, lr_t = adam_constants(counters, lr, beta1, beta2)
    parts = parts_for(workers, params.size)
    # part boundaries on multiples of 16 elements: whole 64-byte lines where the buffers are 64-byte aligned (NumPy
    # aligns to 16 bytes), so at most the line at each boundary is written by two threads
    bounds = [min(params.size, (params.size * k // parts + 15) // 16 * 16) for k in range(parts)] + [params.size]
    workers.run(lambda k: adam_range(params, grads, m, v, bounds[k], bounds[k + 1], lr_t, beta1, beta2, eps), parts)
    counters[COUNTER_STEP] = t


# ---------------------------------------------------------------- weight gradients fused with Adam

@functools.lru_cache(maxsize=64)
def plan(shapes, chunk_rows):
    """items int64 (I, 4) = (layer, first row, end row, offset in the flat buffer): every weight cut into chunks of
    chunk_rows rows (a multiple of 32), each layer's bias one more item (rows -1, -1, at its offset), layer by layer.
    The threads claim them from both ends (next_item()): whoever is free takes the next from its end, so a thread
    that started late or got slower items does less, and each thread's items are whole layers but for the one where
    the two ends meet (a layer's dz is packed, and its input and dz read into a core's caches, by one thread)."""
    offsets, _ = flat_offsets(shapes)
    items = []
    for l, ((fan_in, fan_out), (w_off, b_off)) in enumerate(zip(shapes, offsets)):
        for r0 in range(0, fan_in, chunk_rows):
            items.append((l, r0, min(fan_in, r0 + chunk_rows), w_off + r0 * fan_out))
        items.append((l, -1, -1, b_off))
    return np.array(items, np.int64)


@njit(inline="always", cache=True, nogil=True)
def next_item(counter, count, from_back):
    """The index of this thread's next item of `count`, or `count` when none is left. counter int64 [3], zeros at
    the start: [claimed in all, claimed from the front, claimed from the back]. A thread takes items 0, 1, ... from
    the front, or count - 1, count - 2, ... from the back (from_back); the total, claimed first, lets at most
    `count` claims through, so the two ends never take the same item (measured on the Xeon, cpu-bf16: the update
    1.34 -> 1.2x ms on two threads, against one shared counter, with which both threads packed every layer's dz)."""
    if claim(counter[0:1]) >= count:
        return count
    if from_back:
        return count - 1 - claim(counter[2:3])
    return claim(counter[1:2])


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def column_sums(db, d):
    """db = sum over rows of d (each column's sum in row order; the lanes are columns)."""
    db[:] = 0.0
    for r in range(d.shape[0]):
        row = d[r]
        for j in range(db.size):
            db[j] += row[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _weight_items(params, grads, m, v, inputs, douts, items, counter, from_back, lr_t, beta1, beta2, eps, scratch,
                  wait, leader, ready):
    """The items of plan() this thread claims (next_item()): each chunk's gradient rows by sgemm (the batch is the
    reduction) into grads, or into `scratch` when grads is None, then Adam on them while they are in cache. Unless
    `wait` is None, first the barrier (fastvae.barrier: nothing is done when the job was aborted), and last
    barrier.depart (`leader`: this is part 0); see start_items() for `ready`."""
    if wait is not None:
        go, from_back = start_items(wait, ready, from_back)
        if not go:
            return
    while True:
        it = next_item(counter, items.shape[0], from_back)
        if it >= items.shape[0]:
            break
        if not layer_ready(wait, ready, items[it, 0]):
            return
        layer, r0, r1, at = items[it, 0], items[it, 1], items[it, 2], items[it, 3]
        dz = douts[layer]
        if r0 < 0:
            bias_item(params, grads, m, v, at, dz, scratch, lr_t, beta1, beta2, eps)
            continue
        n = dz.shape[1]
        size = (r1 - r0) * n
        if layer == 0 and _zero_columns_skipped(params, grads, m, v, inputs[0], dz, r0, r1, at, scratch, lr_t, beta1,
                                                beta2, eps):
            continue
        if grads is None:
            g = scratch[:size]
        else:
            g = grads[at:at + size]
        gemm(g.reshape((r1 - r0, n)), inputs[layer][:, r0:r1], True, dz, False)
        adam_prefetched(params[at:at + size], g, m[at:at + size], v[at:at + size], lr_t, beta1, beta2, eps)
    if wait is not None:
        depart(wait, leader)


# The first layer's weight gradient skips the columns of its input (the data) that are zero in every row of the batch
# where they make at least this share of a chunk: MNIST's borders, 218-285 of 784 pixels in every batch of 150.
ZERO_COLUMNS_SHARE = 0.125


@njit(cache=True, nogil=True, error_model="numpy")
def _zero_columns_skipped(params, grads, m, v, x, dz, r0, r1, at, scratch, lr_t, beta1, beta2, eps):
    """Rows r0..r1 of the first layer's weight (at params[at:]) updated with their gradient x[:, r0:r1].T @ dz, the
    product over the columns of x with a nonzero only (packed into `scratch` first, in sparse_dw.order()) and, in
    each block of them, over the rows with a nonzero only (sparse_dw.product), into grads[at:] when grads is given
    (the other rows zeroed there), else into `scratch` (the other rows' gradient, exactly zero, never formed:
    _adam_zero_gradient): True. False (nothing done: the caller's sgemm then) where too few columns are zero
    (ZERO_COLUMNS_SHARE): a rule of the data alone, so the path, hence the bits, are the same whether grads is given
    or not and whichever thread takes the chunk. `scratch` should hold zero_columns_scratch()'s floats (else a buffer
    is allocated for the call: a thread's scratch only grows, and its size must not decide the path)."""
    rows, width = x.shape[0], r1 - r0
    n = dz.shape[1]
    nonzero = np.zeros(width, np.uint8)
    for r in range(rows):
        row = x[r, r0:r1]
        for c in range(width):
            nonzero[c] |= row[c] != 0
    cols = np.empty(width, np.int64)                    # the kept columns, in the product's order
    kept = sparse_dw.order(nonzero, r0, x.shape[1], cols)
    blocks = sparse_dw.padded(kept)
    if width - kept < ZERO_COLUMNS_SHARE * width:
        return False
    if blocks * (n + rows) > scratch.size:
        scratch = np.empty(blocks * (n + rows), np.float32)
    xk = scratch[blocks * n:blocks * (n + rows)].reshape((rows, blocks))
    for r in range(rows):
        row, packed = x[r], xk[r]
        for k in range(kept):
            packed[k] = row[cols[k]]
        for k in range(kept, blocks):
            packed[k] = 0.0
    dest = np.empty(blocks, np.int64)                   # the row of g each kept column's gradient goes to
    if grads is not None:                               # g: the chunk's rows in grads, the zero columns' zeroed
        g = grads[at:at + width * n].reshape((width, n))
        for c in range(width):
            if not nonzero[c]:
                g[c] = 0.0
        for k in range(kept):
            dest[k] = cols[k] - r0
    else:                                               # g: the kept columns' rows only, in index order
        rank = np.empty(width, np.int64)
        k = 0
        for c in range(width):
            rank[c] = k
            k += nonzero[c]
        for k in range(kept):
            dest[k] = rank[cols[k] - r0]
        g = scratch[:max(kept, 1) * n].reshape((max(kept, 1), n))
    sparse_dw.product(g, xk, kept, dz, dest, np.empty(rows, np.int32))
    if grads is not None:
        adam_prefetched(params[at:at + width * n], grads[at:at + width * n], m[at:at + width * n],
                        v[at:at + width * n], lr_t, beta1, beta2, eps)
        return True
    g = g.reshape(-1)
    zeros = np.zeros(PREFETCH_BLOCK, np.float32)
    k = c = 0
    while c < width:                                    # each run of kept columns takes g's next rows; the others
        end = c + 1                                     # a zero gradient
        while end < width and nonzero[end] == nonzero[c]:
            end += 1
        lo, hi = at + c * n, at + end * n
        if nonzero[c]:
            adam_prefetched(params[lo:hi], g[k:k + hi - lo], m[lo:hi], v[lo:hi], lr_t, beta1, beta2, eps)
            k += hi - lo
        else:
            _adam_zero_gradient(params, m, v, lo, hi, zeros, lr_t, beta1, beta2, eps)
        c = end
    return True


def zero_columns_scratch(shapes, rows, chunk_rows):
    """The floats _zero_columns_skipped may use of its scratch for a first layer of shapes[0] at `rows` rows: the
    gradient's and the packed input's, for a whole chunk of kept columns."""
    fan_in, n = shapes[0]
    return sparse_dw.padded(min(chunk_rows, fan_in)) * (n + rows)


@njit(inline="always", cache=True, nogil=True)
def start_items(wait, ready, from_back):
    """(go, from_back) at the start of an update part with the barrier `wait`. Without `ready` (None), the part waits
    at the barrier for every row shard (go False: the job was aborted). With it (an int64 array the shards mark as
    they finish each layer's backward: barrier.mark), the part only arrives, and waits for each item's layer instead
    (layer_ready); the first part to arrive takes items from the back (the last layers, which the shards finish
    first), the second from the front, and so on."""
    if ready is None:
        return arrive_and_wait(wait), from_back
    return True, arrive(wait) % 2 == 0


@njit(inline="always", cache=True, nogil=True)
def layer_ready(wait, ready, layer):
    """Whether an item of `layer` may be worked on (start_items): at once without `ready`, else once every shard has
    marked the layer (False: the job was aborted; the part stops)."""
    if wait is None or ready is None:
        return True
    return wait_for_layer(wait, ready, layer)


@njit(cache=True, nogil=True, error_model="numpy")
def bias_item(params, grads, m, v, at, dz, scratch, lr_t, beta1, beta2, eps):
    """A layer's bias at params[at:]: its gradient, dz's column sums (fp32 on every backend: no product), into grads
    or, when grads is None, `scratch`; then Adam on it."""
    n = dz.shape[1]
    if grads is None:
        g = scratch[:n]
    else:
        g = grads[at:at + n]
    column_sums(g, dz)
    adam_block(params[at:at + n], g, m[at:at + n], v[at:at + n], lr_t, beta1, beta2, eps)


_SCRATCH = threading.local()


def scratch(size):
    """This thread's float32 scratch of at least `size` (a gradient chunk that is not kept). A replay recorded with it
    (fastvae.step_chunks) runs on the thread that recorded it only, so it needs no copy of its own (1.6 MB a thread
    at the seed's shapes)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < size:
        buf = _SCRATCH.buf = aligned_empty(size, np.float32)     # (the bf16 tiles store into it)
    return buf


def aligned_empty(size, dtype):
    """A new 1-D array of `size` elements of a 4-byte dtype starting on a 64-byte boundary (NumPy aligns to 16
    bytes only): whole cache lines for rows whose length is a multiple of 16 elements (amx.aligned_words)."""
    raw = np.empty(size + 16, dtype)
    start = (-(raw.ctypes.data // 4)) % 16
    return raw[start:start + size]


def as_layers(inputs, douts):
    """The layers' arrays as Numba takes them: tuples of C-ordered float32 (n, K_l) and (n, N_l) arrays."""
    for a in (*inputs, *douts):
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError("weight_update takes C-ordered float32 inputs and douts")
    return tuple(inputs), tuple(douts)


def parts_for(workers, size):
    """How many threads an update of `size` parameters uses."""
    return max(1, min(workers.count, size // MIN_PART))


class Update:
    """What a weight_update of either cpu backend starts from: the layers' `shapes` (checked against params: a
    ValueError otherwise), the `items` of plan() in `chunk_rows`-row chunks, `inputs` and `douts` as Numba takes
    them, an unclaimed `counter` (next_item()), Adam's step `t` and `lr_t`, and `parts`, the threads to run on: part k
    claims from the back when k is odd (from_back(k)), unless it waits per layer (start_items: then by the order in
    which the parts arrive)."""

    def __init__(self, workers, params, counters, inputs, douts, lr, beta1, beta2, chunk_rows):
        self.shapes = update_shapes(inputs, douts, params.size)
        self.items = plan(self.shapes, chunk_rows)
        self.inputs, self.douts = as_layers(inputs, douts)
        self.t, self.lr_t = adam_constants(counters, lr, beta1, beta2)
        self.counter = np.zeros(3, np.int64)
        self.parts = parts_for(workers, params.size)

    @staticmethod
    def from_back(part):
        return part % 2 == 1


def _scratch_size(shapes, rows):
    """Floats of a thread's scratch for _weight_items: a whole chunk of a gradient not kept, or the first layer's
    kept columns (zero_columns_scratch), whichever is larger."""
    return max(WEIGHT_CHUNK_ROWS * max(n for _, n in shapes), zero_columns_scratch(shapes, rows, WEIGHT_CHUNK_ROWS))


def weight_update_parts(workers, params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    """The contract's weight_update_parts on the cpu backend (fp32 sgemm for the gradient chunks): (parts, part,
    finish), part(k, wait=None, ready=None) claiming chunks until none is left (any number of threads at once; with
    the barrier `wait`, waiting there first, or per layer with `ready` (start_items), and departing from it last),
    finish() advancing the step."""
    u = Update(workers, params, counters, inputs, douts, lr, beta1, beta2, WEIGHT_CHUNK_ROWS)
    size = _scratch_size(u.shapes, u.inputs[0].shape[0])

    def part(k, wait=None, ready=None):
        _weight_items(params, grads, m, v, u.inputs, u.douts, u.items, u.counter, u.from_back(k), u.lr_t, beta1,
                      beta2, eps, scratch(size), wait, k == 0, ready)

    def finish():
        counters[COUNTER_STEP] = u.t
    return u.parts, part, finish


@njit(cache=True, nogil=True, error_model="numpy")
def weight_items_step(cursor, params, grads, m, v, inputs, douts, items, counters, lr_ts, beta1, beta2, eps, scratch,
                      barriers, leader, ready):
    """_weight_items for step j = cursor[0] of a chunk (fastvae.step_chunks): its claim counter counters[j], its
    Adam lr_ts[j] and its barrier barriers[j], waiting per layer on `ready`."""
    j = cursor[0]
    _weight_items(params, grads, m, v, inputs, douts, items, counters[j], False, lr_ts[j], beta1, beta2, eps, scratch,
                  barriers[j], leader, ready)


def weight_update_steps(params, grads, m, v, inputs, douts, beta1, beta2, eps, steps):
    """The cpu backend's weight_update_steps (fastvae.step_chunks): part(k), thread k's share of each step's update
    as one recordable kernel call (weight_items_step) reading the step's claim counter, lr_t and barrier from `steps`
    (its `cursors`, `counters`, `lr_ts`, `barriers` and `ready`); the step counter is advanced by
    cpu_steps.step_finish."""
    shapes = update_shapes(inputs, douts, params.size)
    items = plan(shapes, WEIGHT_CHUNK_ROWS)
    inputs, douts = as_layers(inputs, douts)
    size = _scratch_size(shapes, inputs[0].shape[0])

    cursors, counters, lr_ts, barriers, ready = steps.cursors, steps.counters, steps.lr_ts, steps.barriers, steps.ready

    def part(k):                            # (holding the arrays, not `steps`, which holds this: no reference cycle)
        call(weight_items_step, cursors[k], params, grads, m, v, inputs, douts, items, counters, lr_ts, beta1, beta2,
             eps, scratch(size), barriers, k == 0, ready)
    return part


def weight_update(workers, params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    """The contract's weight_update: weight_update_parts' parts on the workers, then its finish."""
    run_update(workers, weight_update_parts(workers, params, grads, m, v, counters, inputs, douts, lr, beta1, beta2,
                                            eps))


def run_update(workers, parts_part_finish):
    """A weight_update_parts answer (parts, part, finish) run: part(k) on `parts` of the workers, then finish()."""
    parts, part, finish = parts_part_finish
    workers.run(part, parts)
    finish()
