"""cpu-bf16's weight_update: each weight gradient 32 rows at a time on amx.tiles() (AMX, or AVX512-BF16), Adam on
those rows at once, and the updated rows written straight into the weight's tile layouts (the next step's products
load them without packing them again).

Reads each layer's input (n, K_l) and dz (n, N_l), float32; writes params, m, v (float32, the flat layout of
fastvae.params), grads where given, and the bf16 packs of the weights (amx's B layout, as the weight and as its
transpose). A gradient block is dw[r0:r1] = inp[:, r0:r1].T @ dz: bf16 operands rounded to nearest even, fp32
accumulation over the whole batch (the reduction), stored into grads or a per-thread scratch and read back by Adam
from L1. The bias gradients are fp32 column sums.
"""
import functools

import numpy as np
from numba import njit

from .amx import BLOCK, TILE, _pack_b, _padded, _pair, pack_b_columns, pack_b_rows, tiles
from .bf16_pairs import column_pairs
from .transpose import transpose16
from ..barrier import depart
from .cpu_update import adam_block, bias_item, layer_ready, next_item, start_items

# Rows of a weight per work item (a multiple of BLOCK, so no pair of rows or 16-row strip of a pack is written by
# two threads): the unit in which cpu_update.plan splits the layers between the workers.
CHUNK_ROWS = 64


@njit(cache=True, nogil=True)
def _pack_a_columns(dst, src, c0, c1, words):
    """dst (BLOCK, kq) uint32 = A = src[:, c0:c1].T (src (n, K) C-ordered float32 bits) in bf16 pairs along src's
    rows (the batch: the product's reduction), zero-padded. Each 16 columns x 16 pairs of rows: the pairs of two
    rows of src 16 columns at a time (bf16_pairs.column_pairs, consecutive loads) into `words` (16 x 16 uint32),
    then transposed into dst in vector registers (transpose16). Measured on the Xeon: the first layer's input
    (150 x 784) in 24 us against 58 gathering each column's words one by one, src's rows apart. A group of fewer
    than 16 columns (K, or c1 - c0, not a multiple of 16) goes word by word."""
    dst[:, :] = 0
    n, k = src.shape
    kq = dst.shape[1]
    flat_src, flat_dst, flat_words = src.reshape(-1), dst.reshape(-1), words.reshape(-1)
    width = c1 - c0
    full = width & ~15
    for i0 in range(0, full, TILE):
        for q0 in range(0, (n + 1) // 2, TILE):
            for qq in range(TILE):
                q = q0 + qq
                if 2 * q + 1 < n:
                    column_pairs(flat_src, 2 * q * k + c0 + i0, (2 * q + 1) * k + c0 + i0, flat_words, qq * TILE)
                elif 2 * q < n:                     # n odd: the last row is paired with zero
                    for c in range(TILE):
                        words[qq, c] = _pair(src[2 * q, c0 + i0 + c], np.uint32(0))
                else:
                    words[qq, :] = 0
            transpose16(flat_words, 0, TILE, flat_dst, i0 * kq + q0, kq)
    for i in range(full, width):
        d, c = dst[i], c0 + i
        for q in range(n // 2):
            d[q] = _pair(src[2 * q, c], src[2 * q + 1, c])
        if n % 2:
            d[n // 2] = _pair(src[n - 1, c], np.uint32(0))


@functools.lru_cache(maxsize=64)
def scratch_sizes(rows, widths):
    """(a_scratch, b_scratch, g_scratch) lengths weight_items needs for a batch of `rows` and layers of fan-outs
    `widths` (g_scratch: a block of gradient rows when grads is not kept)."""
    kq = _padded(max(rows, 1), 32) // 2
    return BLOCK * kq, max(_padded(n, BLOCK) for n in widths) * kq, BLOCK * max(widths)


@njit(cache=True, nogil=True, error_model="numpy")
def weight_items(params, grads, m, v, inputs, douts, forward_packs, transposed_packs, items, counter, from_back, lr_t,
                 beta1, beta2, eps, a_scratch, b_scratch, g_scratch, block, cfg, wait, leader, ready):
    """The items of cpu_update.plan this thread claims (cpu_update.next_item) (chunks of rows a multiple of BLOCK,
    biases): each chunk's gradient on the tiles a block of 32 rows at a time, into grads (or g_scratch when grads is
    None: not kept, and not written out to memory), then Adam on the block, then the block's new weights into the
    layer's packs (forward_packs[l] as B of inp @ w, transposed_packs[l] as B of dz @ w.T; amx.NO_PACK where a layer has
    none).
    dz is packed as B once per layer per call. Unless `wait` is None, first the barrier (fastvae.barrier: nothing is
    done when the job was aborted; per layer with `ready`: cpu_update.start_items), and last barrier.depart (`leader`:
    this is part 0)."""
    if wait is not None:
        go, from_back = start_items(wait, ready, from_back)
        if not go:
            return
    bits = params.view(np.uint32)
    words = np.empty((TILE, TILE), np.uint32)          # _pack_a_columns' 16 x 16 block
    packed_layer = -1
    pb = b_scratch[:0].reshape((0, 0, TILE))
    while True:
        it = next_item(counter, items.shape[0], from_back)
        if it >= items.shape[0]:
            break
        if not layer_ready(wait, ready, items[it, 0]):
            return
        layer, r0, r1, at = items[it, 0], items[it, 1], items[it, 2], items[it, 3]
        dz = douts[layer]
        rows, n = dz.shape
        if r0 < 0:
            bias_item(params, grads, m, v, at, dz, g_scratch, lr_t, beta1, beta2, eps)
            continue
        kq = _padded(max(rows, 1), 32) // 2
        if layer != packed_layer:
            strips = _padded(n, BLOCK) // TILE
            pb = b_scratch[:strips * kq * TILE].reshape((strips, kq, TILE))
            _pack_b(pb, dz.view(np.uint32), False)
            packed_layer = layer
        inp = inputs[layer].view(np.uint32)
        fan_in = inp.shape[1]
        base = at - r0 * n                                  # the weight's row 0 in the flat buffer
        w = bits[base:base + fan_in * n].reshape((fan_in, n))
        pf, pt = forward_packs[layer], transposed_packs[layer]
        pa = a_scratch[:BLOCK * kq].reshape((BLOCK, kq))
        for b0 in range(r0, r1, BLOCK):
            b1 = min(r1, b0 + BLOCK)
            _pack_a_columns(pa, inp, b0, b1, words)
            g0, g1 = base + b0 * n, base + b1 * n
            if grads is None:
                g = g_scratch[:g1 - g0]
            else:
                g = grads[g0:g1]
            tiles(g.reshape((b1 - b0, n)), pa, pb, cfg, block)
            adam_block(params[g0:g1], g, m[g0:g1], v[g0:g1], lr_t, beta1, beta2, eps)
            if pf.size:
                pack_b_rows(pf, w, b0, b1)
            if pt.size:
                pack_b_columns(pt, w, b0, b1)
    if wait is not None:
        depart(wait, leader)


@njit(cache=True, nogil=True, error_model="numpy")
def weight_items_step(cursor, params, grads, m, v, inputs, douts, forward_packs, transposed_packs, items, counters,
                      lr_ts, beta1, beta2, eps, a_scratch, b_scratch, g_scratch, block, cfg, barriers, leader, ready):
    """weight_items for step j = cursor[0] of a chunk (fastvae.step_chunks): its claim counter counters[j], its Adam
    lr_ts[j] and its barrier barriers[j], waiting per layer on `ready`."""
    j = cursor[0]
    weight_items(params, grads, m, v, inputs, douts, forward_packs, transposed_packs, items, counters[j], False,
                 lr_ts[j], beta1, beta2, eps, a_scratch, b_scratch, g_scratch, block, cfg, barriers[j], leader, ready)


@njit(cache=True, nogil=True)
def copy_packs(sources, targets):
    """targets[i][...] = sources[i] for each pair: the further packs of a weight (WeightPacks.of_buffer's copies),
    after the update has rewritten the first."""
    for i in range(len(sources)):
        targets[i][...] = sources[i]
