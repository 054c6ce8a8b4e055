"""Matrix products on Intel AMX tiles from Numba: bf16 operands (rounded to nearest even), fp32 accumulation; where
the CPU has no AMX, tiles() runs the same packed operands through AVX512-BF16 instead (avx512bf16.py).

Reads float32 operands a (m, k) and b (k, n), C-ordered or transposed views of C-ordered arrays (packed as they
are read); writes out (m, n) float32. One entry point, `matmul(out, a, b)`, serves a dense layer's three products:
out = inp @ w, dw = inp.T @ dz and dinp = dz @ w.T. Each call rounds and packs a into bf16 rows and b into the
VNNI pair layout the tiles load (16-column strips, so a B tile is 1 KiB of consecutive memory), both zero-padded
to whole tiles (any size works: padded terms add 0), then runs 32 x 32 output blocks of 2 x 2 accumulator tiles
(each loaded A and B tile feeds two tdpbf16ps) and stores each block into `out` (edge blocks via a scratch).

AMX needs, once per process, the kernel's permission for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM): without
it the first tile instruction kills the process with SIGILL, so `require()` asks for it and every entry point here
calls `require()` first. Tile numbers are immediates of the instructions, so they are literal constants below.
The tile configuration (ldtilecfg) is per thread; each product loads it and releases the tiles when done.
"""
import ctypes
import functools
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from ..errors import UserError
from . import avx512bf16
from .avx512bf16 import vector_product
from .bf16_pairs import column_pairs, row_pairs
from .capture import private
from .cpu_update import aligned_empty
from .transpose import transpose16

ARCH_REQ_XCOMP_PERM = 0x1023   # linux/arch/x86/include/uapi/asm/prctl.h
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158           # x86-64 syscall number
TILE = 16                      # rows of every tile; 16 fp32 or 32 bf16 per 64-byte row
BLOCK = 32                     # an output block: 2 x 2 tiles of 16 x 16
NEEDED_FEATURES = ("amx-tile", "amx-bf16")


def _target_features():
    """The features Numba compiles for (the host's, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set)."""
    flags = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return {f[1:] for f in flags.split(",") if f.startswith("+")}


@functools.cache
def unavailable_reason():
    """None where AMX bf16 products can run in this process, else one line saying why not. Asks the kernel for the
    tile state (once per process) when the CPU and Numba's target both have AMX."""
    missing = [f for f in NEEDED_FEATURES if f not in _target_features()]
    if missing:
        target = "this CPU" if config.CPU_NAME is None and config.CPU_FEATURES is None else "Numba's target CPU"
        return f"{target} has no {' / '.join(missing)} (AMX; Intel Sapphire Rapids or later)"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                          ctypes.c_long(XFEATURE_XTILEDATA))
    except (OSError, AttributeError) as exc:
        return f"cannot ask the kernel for the AMX tile state ({exc})"
    if rc != 0:
        return f"the kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: errno {ctypes.get_errno()})"
    return None


# The engine under tiles(): AMX where Numba's target has it, else AVX512-BF16's vdpbf16ps (avx512bf16.py: the same
# packed operands, so everything else here serves both). A compile-time constant for Numba, which prunes the other
# branch: the AMX intrinsics cannot even be compiled for a target without AMX. Numba's cache keys every kernel by
# the target's CPU name and features, so code built for one engine is never loaded where the other one runs.
USE_AMX = all(f in _target_features() for f in NEEDED_FEATURES)


def engine_unavailable_reason():
    """None where tiles() can run in this process (AMX, or without it AVX512-BF16), else one line saying why."""
    if USE_AMX:
        return unavailable_reason()
    reason = avx512bf16.unavailable_reason()
    return None if reason is None else f"{unavailable_reason()}, and no AVX512-BF16 either ({reason})"


def require():
    """Raise UserError (one line) unless tiles() can run in this process; after it returns, its code is safe (for AMX:
    the kernel has granted the tile state)."""
    reason = engine_unavailable_reason()
    if reason is not None:
        raise UserError(f"bf16 products are unavailable: {reason}")


# ---------------------------------------------------------------- the LLVM intrinsics, one Numba intrinsic each

_I8, _I64 = ir.IntType(8), ir.IntType(64)
_VOIDP = ir.IntType(8).as_pointer()


def _call(builder, name, arg_types, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), arg_types), name)
    builder.call(fn, args)


def _tile_number(tile):
    """The immediate for a tile argument; None (no match: Numba retries with literal types) unless it is a literal."""
    if not isinstance(tile, types.IntegerLiteral):
        return None
    if not 0 <= tile.literal_value < 8:
        raise TypeError(f"an AMX tile number must be 0..7, got {tile.literal_value}")
    return ir.Constant(_I8, tile.literal_value)


def _address(context, builder, array_type, array, offset):
    """i8* to element `offset` of a contiguous array."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [offset]), _VOIDP)


@intrinsic
def _ldtilecfg(typingctx, cfg):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.ldtilecfg", [_VOIDP], [_address(context, builder, cfg, args[0], _I64(0))])
    return types.void(cfg), codegen


@intrinsic
def _tilerelease(typingctx):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
    return types.void(), codegen


@intrinsic
def _tilezero(typingctx, tile):
    number = _tile_number(tile)
    if number is None:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [number])
    return types.void(tile), codegen


def _memory_intrinsic(llvm_name):
    @intrinsic
    def tile_memory(typingctx, tile, array, offset, stride):
        """tile <-> array[offset:], rows `stride` bytes apart."""
        number = _tile_number(tile)
        if number is None:
            return None

        def codegen(context, builder, sig, args):
            off = context.cast(builder, args[2], sig.args[2], types.int64)
            step = context.cast(builder, args[3], sig.args[3], types.int64)
            _call(builder, llvm_name, [_I8, _VOIDP, _I64],
                  [number, _address(context, builder, array, args[1], off), step])
        return types.void(tile, array, offset, stride), codegen
    return tile_memory


_tileloadd64 = _memory_intrinsic("llvm.x86.tileloadd64")
_tilestored64 = _memory_intrinsic("llvm.x86.tilestored64")


@intrinsic
def _tdpbf16ps(typingctx, acc, a, b):
    numbers = [_tile_number(t) for t in (acc, a, b)]
    if None in numbers:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbf16ps", [_I8] * 3, numbers)
    return types.void(acc, a, b), codegen


def tile_config():
    """The 64-byte ldtilecfg block: palette 1; tiles 0-7 all 16 rows of 64 bytes (fp32 accumulators 16 x 16,
    bf16 A tiles 16 x 32, VNNI B tiles 16 pair-rows x 16 columns)."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:] = 64
    cfg[48:56] = TILE
    return cfg


# ---------------------------------------------------------------- bf16 rounding and packing

@njit(inline="always", cache=True)
def bf16_bits(u):
    """The bf16 bit pattern nearest the float32 with bits `u` (uint32), ties to even; a NaN stays a (quiet) NaN."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def round_to_bf16(x):
    """float32 array -> the float32 values of its nearest bf16 (the operands the tiles multiply); for tests."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return (_round_array(bits).astype(np.uint32) << 16).view(np.float32)


@njit(cache=True, nogil=True)
def _round_array(bits):
    out = np.empty(bits.shape, np.uint16)
    flat_in, flat_out = bits.reshape(-1), out.reshape(-1)
    for i in range(flat_in.size):
        flat_out[i] = bf16_bits(flat_in[i])
    return out


@njit(inline="always", cache=True)
def _padded(n, multiple):
    return -(-n // multiple) * multiple


@njit(inline="always", cache=True)
def _pair(lo, hi):
    """Two float32 bit patterns as one uint32 of bf16s: lo in the low half (the first of a VNNI pair)."""
    return np.uint32(bf16_bits(lo)) | (np.uint32(bf16_bits(hi)) << np.uint32(16))


@njit(inline="always", cache=True, nogil=True)
def _rows_paired(dst, src, i0, i1, d0):
    """dst[d0 + i - i0] = row i of src (C-ordered float32 bits, k columns) as bf16 pairs along the row, for
    i0 <= i < i1: the first k // 2 words (and, k odd, the last column paired with zero); dst's further words are not
    written. 32 columns at a time in vector registers (bf16_pairs.row_pairs), the rest one pair at a time."""
    k = src.shape[1]
    width = dst.shape[1]
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    body = k & ~31
    for i in range(i0, i1):
        at, d_at = i * k, (d0 + i - i0) * width
        for c in range(0, body, 32):
            row_pairs(flat_src, at + c, flat_dst, d_at + c // 2)
        s, row = src[i], dst[d0 + i - i0]
        for q in range(body // 2, k // 2):
            row[q] = _pair(s[2 * q], s[2 * q + 1])
        if k % 2:
            row[k // 2] = _pair(s[k - 1], np.uint32(0))


@njit(cache=True, nogil=True)
def _pack_a(dst, src, transposed):
    """dst (m_p, k_p / 2) uint32 = A (m, k) as bf16 rows (two per uint32), zero-padded. A = src, or src.T when
    `transposed`; src is C-ordered and read along its rows either way (the transposed case pairs two of its rows)."""
    dst[:, :] = 0
    if transposed:
        k, m = src.shape
        zero = np.zeros(m, np.uint32)
        for q in range((k + 1) // 2):
            s0 = src[2 * q]
            s1 = src[2 * q + 1] if 2 * q + 1 < k else zero
            for i in range(m):
                dst[i, q] = _pair(s0[i], s1[i])
    else:
        m, k = src.shape
        _rows_paired(dst, src, 0, m, 0)


@njit(cache=True, nogil=True)
def _pack_b(dst, src, transposed):
    """dst (n_p / 16, k_p / 2, 16) uint32: B (k, n) in VNNI pairs, one 16-column strip after another, so that a B
    tile (16 pair-rows x 16 columns) is 1 KiB of consecutive memory: dst[t, p, c] holds B[2 p, 16 t + c] (low half)
    and B[2 p + 1, 16 t + c]. B = src, or src.T when `transposed` (src C-ordered, read along its rows); zero-padded."""
    dst[:, :, :] = 0
    if transposed:
        pack_b_columns(dst, src, 0, src.shape[0])
    else:
        pack_b_rows(dst, src, 0, src.shape[0])


@njit(cache=True, nogil=True)
def pack_b_rows(dst, src, r0, r1):
    """Rows r0..r1 of B = src (k, n) into dst (_pack_b's layout), r0 even; the padding is left as it is."""
    k, n = src.shape
    strip = dst.shape[1] * TILE
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    zero = np.zeros(n, np.uint32)
    for p in range(r0 // 2, (r1 + 1) // 2):
        s0 = src[2 * p]
        if 2 * p + 1 < k:
            s1 = src[2 * p + 1]
            for t in range(n >> 4):
                column_pairs(flat_src, 2 * p * n + TILE * t, (2 * p + 1) * n + TILE * t, flat_dst, t * strip + TILE * p)
            tail = n & ~15
        else:                                       # k odd: the last row is paired with zeros
            s1 = zero
            tail = 0
        for j in range(tail, n):
            dst[j >> 4, p, j & 15] = _pair(s0[j], s1[j])


@njit(cache=True, nogil=True)
def pack_b_columns(dst, src, j0, j1):
    """Columns j0..j1 of B = src.T (src (n, k) C-ordered: rows j0..j1 of src) into dst (_pack_b's layout); j0 a
    multiple of 16, j1 one too or src's last row: the rest of a strip is written as zero padding. Each strip of 16
    rows is paired into a buffer row by row (consecutive stores), then moved into dst 16 x 16 words at a time by a
    transpose in vector registers (measured on the Xeon: 0.25 against 0.6 ms per step for the words one by one)."""
    kq = dst.shape[1]                               # pairs of a strip's row, padded to a multiple of 16
    rows = np.zeros((TILE, kq), np.uint32)          # beyond src.shape[1] / 2 pairs: zeros, never written
    flat_rows, flat_dst = rows.reshape(-1), dst.reshape(-1)
    for t in range(j0 >> 4, (j1 + TILE - 1) >> 4):
        j = TILE * t
        _rows_paired(rows, src, j, min(j1, j + TILE), 0)
        rows[min(j1, j + TILE) - j:] = 0
        for q0 in range(0, kq, TILE):
            transpose16(flat_rows, q0, kq, flat_dst, (t * kq + q0) * TILE, TILE)


# ---------------------------------------------------------------- the product: 2 x 2 accumulator tiles per block

@njit(cache=True, nogil=True)
def _tiles_product(out, a, b, cfg, block):
    """out = a @ b from packed operands (uint32 = two bf16): a (m_p, k_p / 2) rows, b (n_p / 16, k_p / 2, 16) VNNI
    strips; m_p a multiple of 16, n_p of 32, k_p of 32. Tiles 0-3 accumulate a 32 x 32 block: 0 = rows 0-15 x cols
    0-15, 1 = rows 0-15 x cols 16-31, 2 = rows 16-31 x cols 0-15, 3 = rows 16-31 x cols 16-31; tiles 4, 5 hold
    A's two row halves, 6, 7 B's two column halves, each used by two tdpbf16ps. Rows in whole 16-row tiles go in
    32-row blocks, and a last 16-row block where their count is odd; the rows after the last whole tile (m not a
    multiple of 16: 75 rows are 64 + 11) in a 16 x 32 block of tiles configured with only those rows (a second
    ldtilecfg per column block), so their results are stored straight into `out`, no row past m written (measured
    on the Xeon: 75 x 784 x 500 in 57 us against 65 through a scratch block). A block whose columns pass n goes
    through `block` (32 x 32 float32 scratch)."""
    m, n = out.shape
    m_p, kq = a.shape                               # kq = k_p / 2 pairs per row
    n_p = TILE * b.shape[0]
    strip = kq * TILE                               # uint32s of one 16-column strip of b
    flat_a, flat_b, flat_out = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    whole = m - m % TILE                            # rows in whole tiles
    edge = m - whole
    _ldtilecfg(cfg)
    for j0 in range(0, n_p, BLOCK):
        b0 = (j0 // TILE) * strip
        cols = min(BLOCK, n - j0)
        for i0 in range(0, whole, BLOCK):
            a0, a1 = i0 * kq, (i0 + TILE) * kq
            if i0 + TILE == whole:                  # one whole row tile left: a 16 x 32 block
                _one_row_tile(flat_a, flat_b, a0, b0, strip, kq)
                _store_rows(out, flat_out, block, i0, j0, TILE, cols, 2)
                continue
            _tilezero(0)
            _tilezero(1)
            _tilezero(2)
            _tilezero(3)
            for q in range(0, kq, TILE):            # 32 bf16 = 16 pairs of the reduction per step
                _tileloadd64(4, flat_a, a0 + q, 4 * kq)
                _tileloadd64(5, flat_a, a1 + q, 4 * kq)
                _tileloadd64(6, flat_b, b0 + q * TILE, 64)
                _tileloadd64(7, flat_b, b0 + strip + q * TILE, 64)
                _tdpbf16ps(0, 4, 6)
                _tdpbf16ps(1, 4, 7)
                _tdpbf16ps(2, 5, 6)
                _tdpbf16ps(3, 5, 7)
            _store_rows(out, flat_out, block, i0, j0, BLOCK, cols, 4)
    if edge:                                        # the rows after the last whole tile, all columns
        edge_cfg = cfg.copy()                       # tiles 0, 1 (results) and 4 (A) with the edge's rows only
        edge_cfg[48] = edge_cfg[49] = edge_cfg[52] = edge
        _ldtilecfg(edge_cfg)
        a0 = whole * kq
        for j0 in range(0, n_p, BLOCK):
            _one_row_tile(flat_a, flat_b, a0, (j0 // TILE) * strip, strip, kq)
            _store_rows(out, flat_out, block, whole, j0, edge, min(BLOCK, n - j0), 2)
    _tilerelease()


@njit(inline="always", cache=True, nogil=True)
def _one_row_tile(flat_a, flat_b, a0, b0, strip, kq):
    """Tiles 0, 1 = the A row tile at a0 (tile 4, as configured) times the two B strips at b0 (tiles 6, 7)."""
    _tilezero(0)
    _tilezero(1)
    for q in range(0, kq, TILE):
        _tileloadd64(4, flat_a, a0 + q, 4 * kq)
        _tileloadd64(6, flat_b, b0 + q * TILE, 64)
        _tileloadd64(7, flat_b, b0 + strip + q * TILE, 64)
        _tdpbf16ps(0, 4, 6)
        _tdpbf16ps(1, 4, 7)


@njit(inline="always", cache=True, nogil=True)
def _store_rows(out, flat_out, block, i0, j0, rows, cols, count):
    """Tiles 0, 1 (count 2: rows i0.. of `rows`) or 0-3 (count 4: 32 rows) into out[i0:, j0:j0 + cols]: straight
    into out when all 32 columns are inside it, else through `block`."""
    n = out.shape[1]
    if cols == BLOCK:
        at = i0 * n + j0
        _tilestored64(0, flat_out, at, 4 * n)
        _tilestored64(1, flat_out, at + TILE, 4 * n)
        if count == 4:
            _tilestored64(2, flat_out, at + TILE * n, 4 * n)
            _tilestored64(3, flat_out, at + TILE * n + TILE, 4 * n)
        return
    _tilestored64(0, block, 0, 4 * BLOCK)
    _tilestored64(1, block, TILE, 4 * BLOCK)
    if count == 4:
        _tilestored64(2, block, TILE * BLOCK, 4 * BLOCK)
        _tilestored64(3, block, TILE * BLOCK + TILE, 4 * BLOCK)
    for i in range(rows):
        out[i0 + i, j0:j0 + cols] = block[i, :cols]


@njit(inline="always", cache=True, nogil=True)
def tiles(out, a, b, cfg, block):
    """out = a @ b from the packed operands of _tiles_product, on this process's engine (USE_AMX)."""
    if USE_AMX:
        _tiles_product(out, a, b, cfg, block)
    else:
        vector_product(out, a, b, block)


_CFG = tile_config()


def aligned_words(size):
    """A new uint32 array of `size` words starting on a 64-byte boundary: then every A row (a multiple of 16 words
    long) and every 1 KiB B tile of a pack is whole cache lines, and a tile load touches 16 lines, not 32 (NumPy
    aligns to 16 bytes only). Measured on the Xeon: cpu-bf16's update 1.34 -> 1.25 ms per step on two threads,
    its two shards 1.40 -> 1.30 ms."""
    return aligned_empty(size, np.uint32)


class Workspace:
    """Packed-operand buffers, grown to the largest product seen (a step's products reuse them). One per thread: the
    step runs row shards on several threads at once (the kernels release the GIL; tile state is per thread)."""

    def __init__(self):
        self.a = aligned_words(0)
        self.b = aligned_words(0)
        self.block = aligned_words(BLOCK * BLOCK).view(np.float32).reshape((BLOCK, BLOCK))
        private(self.a, self.b, self.block)

    def take(self, name, shape):
        buf = getattr(self, name)
        size = int(np.prod(shape))
        if buf.size < size:
            buf = aligned_words(size)
            private(buf)
            setattr(self, name, buf)
        return buf[:size].reshape(shape)


_WORKSPACES = threading.local()


def _workspace():
    ws = getattr(_WORKSPACES, "ws", None)
    if ws is None:
        ws = _WORKSPACES.ws = Workspace()
    return ws


def _source(x):
    """(C-ordered float32 bits, transposed) for an operand given as x or as the transpose of a C-ordered array."""
    if not x.flags.c_contiguous and x.T.flags.c_contiguous:
        return x.T.view(np.uint32), True
    return np.ascontiguousarray(x).view(np.uint32), False


@njit(cache=True, nogil=True)
def product(out, a, a_transposed, b, b_transposed, packed_b, a_scratch, b_scratch, block, cfg):
    """out (m, n) = A @ B on the tiles in one GIL-free call (pack A, pack B unless given, the tiles): A = a.T when
    a_transposed else a, likewise B; a, b C-ordered float32, out C-ordered. `packed_b` (pack_b's layout) is used
    when it is not empty, and then b's values are not read; a_scratch, b_scratch are flat uint32 buffers at least
    scratch_sizes(...) long; block (32, 32) float32."""
    m, n = out.shape
    k = a.shape[0] if a_transposed else a.shape[1]
    kq = _padded(max(k, 1), 32) // 2
    rows = _padded(m, TILE)
    pa = a_scratch[:rows * kq].reshape((rows, kq))
    _pack_a(pa, a.view(np.uint32), a_transposed)
    if packed_b.size == 0:
        strips = _padded(n, BLOCK) // TILE
        pb = b_scratch[:strips * kq * TILE].reshape((strips, kq, TILE))
        _pack_b(pb, b.view(np.uint32), b_transposed)
    else:
        pb = packed_b
    tiles(out, pa, pb, cfg, block)


@functools.lru_cache(maxsize=1024)
def scratch_sizes(m, n, k):
    """(a_scratch, b_scratch) lengths that product() needs for an (m, k) @ (k, n) product (cached: a step asks for
    the same few shapes every time, and each layer's call should cost microseconds of Python, not tens)."""
    kq = _padded(max(k, 1), 32) // 2
    return _padded(m, TILE) * kq, _padded(n, BLOCK) * kq


def scratch(a_size, b_size):
    """This thread's (a_scratch, b_scratch, block, cfg) for product(): the whole buffers, grown to at least the
    sizes asked for (product() slices what it uses)."""
    ws = _workspace()
    if ws.a.size < a_size:
        ws.a = aligned_words(a_size)
        private(ws.a)
    if ws.b.size < b_size:
        ws.b = aligned_words(b_size)
        private(ws.b)
    return ws.a, ws.b, ws.block, _CFG


NO_PACK = np.empty((0, 0, 0), np.uint32)            # product()'s packed_b when B is packed in the call


def _b_shape(k, n):
    return _padded(n, BLOCK) // TILE, _padded(max(k, 1), 32) // 2, TILE


def pack_b(b, into=None):
    """The operand b (k, n) packed as matmul's B (bf16 VNNI strips, zero-padded), into `into` when it has the right
    shape (a buffer reused step after step), else into a new array: a weight packed once and used by every product
    of a step (product()'s packed_b). b as matmul takes it."""
    require()
    shape = _b_shape(*b.shape)
    packed = into if into is not None and into.shape == shape else aligned_words(int(np.prod(shape))).reshape(shape)
    _pack_b(packed, *_source(b))
    return packed


def matmul(out, a, b, workspace=None):
    """out (m, n) float32 = a (m, k) @ b (k, n) with both operands rounded to bf16 (nearest even) and fp32
    accumulation on AMX tiles. a and b are float32, C-ordered or transposed views of C-ordered arrays (out = inp @ w,
    dw = inp.T @ dz, dinp = dz @ w.T); anything else is copied first."""
    require()
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return out
    workspace = workspace or _workspace()
    pa = workspace.take("a", (_padded(m, TILE), _padded(max(k, 1), 32) // 2))
    _pack_a(pa, *_source(a))
    pb = workspace.take("b", _b_shape(k, n))
    _pack_b(pb, *_source(b))
    target = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
    tiles(target, pa, pb, _CFG, workspace.block)
    if target is not out:
        out[...] = target
    return out
