"""Matrix products with AVX512-BF16's vdpbf16ps from Numba: bf16 operands, fp32 accumulation, no AMX needed.

Reads the packed operands of amx._tiles_product (A rows of bf16 pairs, B VNNI strips; see amx._pack_a, _pack_b);
writes out (m, n) float32 = A @ B, only its valid region. For CPUs with AVX512-BF16 but no AMX tiles (AMD Zen 4):
`vector_product` has exactly `amx._tiles_product`'s contract, so the same packs feed either kernel.

How: a pair q of A's row i (A[i, 2q], A[i, 2q + 1], one uint32) broadcast to all 16 lanes, times B's packed row
[t, q, :] (64 bytes: the same pair of rows for 16 columns), is what vdpbf16ps takes: lane c gains
A[i, 2q] B[2q, 16t + c] + A[i, 2q + 1] B[2q + 1, 16t + c]. A micro-kernel keeps ROWS x V such accumulators (ROWS rows
x V vectors of 16 columns) in zmm registers over the whole reduction, loads each B vector once per pair and uses it
ROWS times, and takes A's pairs as broadcast memory operands ({1to16}); then stores the block once.

Arithmetic (Intel SDM, VDPBF16PS): each lane does two fp32 multiply-adds per instruction, each rounded to nearest even;
bf16 x bf16 products are exact in fp32 (8 + 8 significant bits), so the only rounding is the accumulation. Input
denormals are treated as zero and output denormals flushed to zero, whatever MXCSR says (it is neither read nor
written): terms below 2**-126 in size are lost, far below the 2**-24 relative rounding at this project's scales.
AMX's tdpbf16ps is documented with the same DAZ / FTZ / round-to-nearest-even, but it does not add in this order:
most outputs differ from its in the last bits (tests/test_avx512bf16.py holds both to the same bound).

Speed (one core, tests' shapes; bench command in the report that added this file): on the Sapphire Rapids Xeon
vdpbf16ps zmm issues about once per 2 cycles, half the rate of an fp32 FMA, so its ceiling is ~110 GFLOP/s there and
this kernel reaches ~100 (AMX: 450-850, OpenBLAS sgemm: 115-135). Where vdpbf16ps issues at the FMA's rate
(expected on Zen 4, not measured here) the same kernel has twice sgemm's arithmetic ceiling.
"""
import functools

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from ..errors import UserError

NEEDED_FEATURES = ("avx512f", "avx512bf16")
LANES = 16          # fp32 lanes of a zmm register = columns of one B strip
ROWS = 8            # accumulator rows of the micro-kernel: 8 x 4 vectors = 32 zmm would spill, 8 x 3 = 24 fit
#                     with the 3 B vectors and the broadcasts folded into the instructions; ROWS divides 16, so a
#                     row block never reads past A's padding (m_p is a multiple of 16)
SHORT_ROWS = 4      # the rows of a last row block with at most 4 left (76 rows: 9 x 8 + 4, not 10 x 8)
VECTORS = 3         # 16-column vectors per micro-kernel block (the widest; 2 and 1 finish a row of strips)


def _target_features():
    """The features Numba compiles for (the host's, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set); as in amx.py,
    kept here so that this module does not need the AMX one."""
    flags = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return {f[1:] for f in flags.split(",") if f.startswith("+")}


@functools.cache
def unavailable_reason():
    """None where vdpbf16ps products can run in this process (the CPU and Numba's target both have AVX512-BF16),
    else one line saying why not. Unlike AMX there is no kernel permission to ask for. The host is asked too: a
    NUMBA_CPU_FEATURES that claims avx512bf16 on a CPU without it would compile code that dies of SIGILL."""
    host = {f[1:] for f in get_host_cpu_features().split(",") if f.startswith("+")}
    for features, target in ((host, "this CPU"), (_target_features(), "Numba's target CPU")):
        missing = [f for f in NEEDED_FEATURES if f not in features]
        if missing:
            return f"{target} has no {' / '.join(missing)} (AVX512-BF16: Intel Cooper Lake, Sapphire Rapids; AMD Zen 4)"
    return None


def require():
    """Raise UserError (one line) unless AVX512-BF16 code can run here. Call it before the first vector_product:
    on a CPU without the instruction the kernel would die of SIGILL, not raise."""
    reason = unavailable_reason()
    if reason is not None:
        raise UserError(f"AVX512-BF16 is unavailable: {reason}")


# ---------------------------------------------------------------- the micro-kernel, one LLVM loop per (rows, vectors)

class _BFloat(ir.Type):
    """LLVM's `bfloat`, which llvmlite's IR builder does not define; the intrinsic's operands are <32 x bfloat>."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash(_BFloat)


_I32, _I64 = ir.IntType(32), ir.IntType(64)
_F32X16 = ir.VectorType(ir.FloatType(), LANES)
_I32X16 = ir.VectorType(_I32, LANES)
_BF16X32 = ir.VectorType(_BFloat(), 2 * LANES)
# LLVM 22's declaration (IntrinsicsX86.td). Older LLVMs took <16 x i32> operands; LLVM still upgrades that form, but
# the bfloat form is the one it declares, with its memory(none) attributes.
_DPBF16PS = ir.FunctionType(_F32X16, [_F32X16, _BF16X32, _BF16X32])
_DPBF16PS_NAME = "llvm.x86.avx512bf16.dpbf16ps.512"


def _literal(x):
    return x.literal_value if isinstance(x, types.IntegerLiteral) else None


@intrinsic
def _micro_kernel(typingctx, rows, vectors, a, a_at, kq, b, b_at, strip, c, c_at, ldc):
    """c[c_at + r ldc + 16 v + l] = sum over pairs q < kq of A's row r (a[a_at + r kq + q]) . B's strip v
    (b[b_at + v strip + 16 q + l]), for r < rows, v < vectors, l < 16 (rows, vectors literal). a, b flat uint32
    arrays of bf16 pairs, c flat float32; kq >= 1. One loop over q with rows x vectors <16 x float> accumulators
    as phi nodes (they live in zmm registers), stored once at the end.

    Checked in the assembly of a non-cached copy of vector_product (LLVM 22, llvmlite 0.50, Sapphire Rapids
    target): every loop body is the vdpbf16ps of its block (8 x 3 = 24 per pair for the widest) on zmm accumulators,
    no zmm spill or reload through the stack, B rows loaded once per pair (vmovups), A's pairs as vbroadcastss from
    memory (a load, no shuffle) or folded into vdpbf16ps as {1to16} where a pair is used once."""
    n_rows, n_vectors = _literal(rows), _literal(vectors)
    if n_rows is None or n_vectors is None:
        return None                                 # Numba retries with literal types

    def codegen(context, builder, sig, args):
        def int64(i):
            return context.cast(builder, args[i], sig.args[i], types.int64)

        def data(i):
            return context.make_array(sig.args[i])(context, builder, args[i]).data

        a_data, b_data, c_data = data(2), data(5), data(8)
        a_at, kq, b_at, strip, c_at, ldc = (int64(i) for i in (3, 4, 6, 7, 9, 10))
        dot = cgutils.get_or_insert_function(builder.module, _DPBF16PS, _DPBF16PS_NAME)

        entry = builder.basic_block
        loop = builder.append_basic_block("dpbf16.loop")
        done = builder.append_basic_block("dpbf16.done")
        zero = ir.Constant(_F32X16, [0.0] * LANES)
        builder.branch(loop)

        builder.position_at_end(loop)
        q = builder.phi(_I64, "q")
        q.add_incoming(_I64(0), entry)
        accs = []
        for i in range(n_rows * n_vectors):
            phi = builder.phi(_F32X16, f"acc{i}")
            phi.add_incoming(zero, entry)
            accs.append(phi)
        # B's row q of each strip: 32 bf16 (16 column pairs), loaded once and used by every row
        bq = builder.add(b_at, builder.mul(q, _I64(LANES)))
        b_vecs = []
        for v in range(n_vectors):
            at = builder.add(bq, builder.mul(strip, _I64(v)))
            ptr = builder.bitcast(builder.gep(b_data, [at]), _BF16X32.as_pointer())
            b_vecs.append(builder.load(ptr, align=4))
        new = []
        for r in range(n_rows):
            # A's pair q of row r in every lane: a scalar load + splat, which LLVM turns into one broadcast load
            # (vbroadcastss), or into vdpbf16ps's m32bcst operand where the block is one vector wide
            at = builder.add(builder.add(a_at, builder.mul(kq, _I64(r))), q)
            pair = builder.load(builder.gep(a_data, [at]), align=4)
            splat = builder.shuffle_vector(builder.insert_element(ir.Constant(_I32X16, None), pair, _I32(0)),
                                           ir.Constant(_I32X16, None), ir.Constant(_I32X16, [0] * LANES))
            a_vec = builder.bitcast(splat, _BF16X32)
            for v in range(n_vectors):
                new.append(builder.call(dot, [accs[r * n_vectors + v], b_vecs[v], a_vec]))
        q_next = builder.add(q, _I64(1))
        q.add_incoming(q_next, builder.basic_block)
        for phi, value in zip(accs, new):
            phi.add_incoming(value, builder.basic_block)
        builder.cbranch(builder.icmp_signed("<", q_next, kq), loop, done)

        builder.position_at_end(done)
        for r in range(n_rows):
            row = builder.add(c_at, builder.mul(ldc, _I64(r)))
            for v in range(n_vectors):
                ptr = builder.gep(c_data, [builder.add(row, _I64(LANES * v))])
                builder.store(new[r * n_vectors + v], builder.bitcast(ptr, _F32X16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(rows, vectors, a, a_at, kq, b, b_at, strip, c, c_at, ldc), codegen


# ---------------------------------------------------------------- the product: ROWS x (up to VECTORS x 16) blocks

@njit(cache=True, nogil=True)
def vector_product(out, a, b, block):
    """out = a @ b from packed operands (uint32 = two bf16), as amx._tiles_product: a (m_p, k_p / 2) rows,
    b (n_p / 16, k_p / 2, 16) VNNI strips; m_p a multiple of 16, n_p of 32, k_p of 32; out (m, n) C-ordered with
    m <= m_p, n <= n_p, and only it is written. Blocks of ROWS rows x up to VECTORS strips: the strips of one row
    block are walked left to right while its A rows (ROWS x k_p / 2 x 4 bytes: 12.5 KiB at k = 784) stay in L1 and
    B streams from L2. A last block of 5-7 rows computes 8, one of 1-4 rows computes SHORT_ROWS (inside A's
    padding: m_p is a multiple of 16); the extra rows and the columns past n are dropped, strips wholly past n
    skipped. A block inside `out` is stored straight into it; edge blocks go
    through `block` (any float32 scratch of >= ROWS x VECTORS x 16 elements, C-ordered)."""
    m, n = out.shape
    kq = a.shape[1]
    if block.size < ROWS * VECTORS * LANES:         # the micro-kernel stores a whole block without bounds checks
        raise ValueError("vector_product: block scratch too small")
    if kq == 0:                                     # no pairs: the micro-kernel's loop runs at least once
        out[:, :] = 0
        return
    strip = kq * LANES                              # uint32s of one 16-column strip of b
    strips = (n + LANES - 1) // LANES               # the strips holding columns of out
    flat_a, flat_b, flat_out, flat_block = a.reshape(-1), b.reshape(-1), out.reshape(-1), block.reshape(-1)
    for i0 in range(0, m, ROWS):
        rows = min(ROWS, m - i0)
        height = ROWS if rows > SHORT_ROWS else SHORT_ROWS   # a last block of <= 4 rows computes 4, not 8
        t = 0
        while t < strips:
            left = strips - t                       # a widest block, else 2 strips, else 1 (literals below)
            vectors = VECTORS if left >= VECTORS else (2 if left >= 2 else 1)
            j0 = LANES * t
            cols = min(LANES * vectors, n - j0)
            inside = rows == height and cols == LANES * vectors
            dst = flat_out if inside else flat_block
            at = i0 * n + j0 if inside else 0
            ld = n if inside else LANES * vectors
            a_at, b_at = i0 * kq, t * strip
            if height == ROWS:                      # (VECTORS >= 3 assumed)
                if vectors == VECTORS:
                    _micro_kernel(ROWS, VECTORS, flat_a, a_at, kq, flat_b, b_at, strip, dst, at, ld)
                elif vectors == 2:
                    _micro_kernel(ROWS, 2, flat_a, a_at, kq, flat_b, b_at, strip, dst, at, ld)
                else:
                    _micro_kernel(ROWS, 1, flat_a, a_at, kq, flat_b, b_at, strip, dst, at, ld)
            else:
                if vectors == VECTORS:
                    _micro_kernel(SHORT_ROWS, VECTORS, flat_a, a_at, kq, flat_b, b_at, strip, dst, at, ld)
                elif vectors == 2:
                    _micro_kernel(SHORT_ROWS, 2, flat_a, a_at, kq, flat_b, b_at, strip, dst, at, ld)
                else:
                    _micro_kernel(SHORT_ROWS, 1, flat_a, a_at, kq, flat_b, b_at, strip, dst, at, ld)
            if not inside:
                for i in range(rows):
                    out[i0 + i, j0:j0 + cols] = flat_block[i * ld:i * ld + cols]
            t += vectors
