"""The cpu-bf16 backend: the cpu backend with every matrix product in bf16 operands, fp32 accumulation: on AMX tiles,
or where the CPU has none, with AVX512-BF16's vdpbf16ps (amx.tiles() picks the engine; both read the same packs).

Implements the contract of backends/contract.py with the cpu backend's float32 arrays: master weights, gradients,
Adam's moments, activations, sampling, the KL and the loss stay as in cpu.py, whose fused Numba passes (bias +
activation, act', sampling + KL, loss + dlogits) and Adam are used as they are. Only the products differ: both
operands rounded to bf16 (nearest even), fp32 accumulation, so a product of K terms is within 2 * 2**-8 of the sum of
|terms| (tests/tolerances.py); weight_update forms the weight gradients the same way (amx_update.py) and writes the
new weights into their packs. Needs AMX (Intel Sapphire Rapids or later) or AVX512-BF16 (AMD Zen 4):
get_backend("cpu-bf16") says in one line why not elsewhere (`unavailable_reason`). The kernels release the GIL and
keep their packing buffers per thread, so the step's row shards run on the cpu backend's `workers` here too.
"""
import functools
import threading
import weakref

from numba import njit

from ..constants import COUNTER_STEP
from ..params import flat_offsets, update_shapes
from . import amx, amx_update, cpu, cpu_update
from .capture import call, record  # noqa: F401  (record: the contract's hook)
from .amx import engine_unavailable_reason as unavailable_reason  # noqa: F401  (get_backend asks it first)
from .cpu import (asarray, dtype, empty, gather_batch, host_data, layer_done, synchronize, to_host,  # noqa: F401
                  workers, xp, zeros)

name = "cpu-bf16"


class WeightPacks:
    """Each weight's bf16 tile layouts (as B of `x @ w` and of `dz @ w.T`), packed once per step instead of once per
    product and per row shard: a weight is read by the forward and the input gradient of every shard.

    A pack belongs to the weight array object it was made from (a weak reference: a new array, even at the same
    address, is packed anew). weight_update rewrites the packs of the weights it changes in its own pass (of_buffer
    finds them); adam_update packs them again afterwards (refresh). Another model's update (a fit in another thread)
    touches only its own weights' packs. The weights are assumed to change only through those two while packs of
    them are in use (true of the step, of fit and of every evaluation: a model that loads or restarts gets new
    arrays)."""

    def __init__(self):
        self.packs = 0                               # packings made (tests count them)
        self._entries = {}                           # (id(w), transposed) -> (weak reference to w, pack)
        self._lock = threading.Lock()                # two shards asking for the same weight: one packs it
        self._version = 0                            # changes whenever an entry comes or goes
        self._found = {}                             # of_buffer's answers, for the version they were found at

    def get(self, w, transposed):
        key = (id(w), transposed)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not w:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or entry[0]() is not w:
                    entry = (weakref.ref(w, lambda _, k=key: self._forget(k)), amx.pack_b(w.T if transposed else w))
                    self._entries[key] = entry
                    self._changed()
                    self.packs += 1
        return entry[1]

    def _forget(self, key):
        self._entries.pop(key, None)
        self._changed()

    def _snapshot(self):
        # A copy to iterate over: _forget runs wherever a weight is freed, the lock or not (a garbage collection
        # inside an iteration, on this thread or another, changed the dict under it: "dictionary changed size during
        # iteration" killed one of three cpu-bf16 fits at once). dict.copy runs no Python code and allocates no
        # collected object before its items are copied, so no collection can fall inside it.
        return self._entries.copy()

    def _changed(self):
        self._version += 1
        self._found.clear()                          # (and drop the packs its answers still hold)

    def of_buffer(self, params, shapes, count=True):
        """(forward, transposed, copies) for weight_update over `params` with layers of `shapes`: per layer the pack
        of its weight as B of inp @ w and as B of dz @ w.T (amx.NO_PACK where none was made yet: it is packed when
        first used), and (source, target) pairs for further packs of the same weight (another view object of it),
        to be copied after the update."""
        key = (params.ctypes.data, params.size, shapes)
        found = self._found.get(key)
        if found is None or found[0] != self._version:
            found = self._found[key] = (self._version, self._find(params, shapes))
        forward, transposed, copies = found[1]
        if count:                                    # (the update's parts ask once each; one of them counts)
            self.packs += sum(p.size > 0 for p in forward + transposed) + len(copies)
        return found[1]

    def _find(self, params, shapes):
        offsets, _ = flat_offsets(shapes)
        at = {params.ctypes.data + 4 * w_off: (l, shape) for l, (shape, (w_off, _)) in enumerate(zip(shapes, offsets))}
        chosen = [[amx.NO_PACK] * len(shapes) for _ in range(2)]
        copies = []
        with self._lock:
            entries = self._snapshot()
        for (_, transposed), (ref, packed) in entries.items():
            w = ref()
            if w is None or w.ctypes.data not in at or at[w.ctypes.data][1] != w.shape:
                continue
            layer = at[w.ctypes.data][0]
            if chosen[transposed][layer].size:
                copies.append((chosen[transposed][layer], packed))
            else:
                chosen[transposed][layer] = packed
        return tuple(chosen[0]), tuple(chosen[1]), copies

    def refresh(self, params, workers):
        """After adam_update changed `params`: the packs of the weights that are views of it packed again at once,
        split between the workers (so that the next step's shards do not wait on each other packing the same one).
        No step of this model runs now, so each pack is rewritten in place by one thread."""
        lo, hi = params.ctypes.data, params.ctypes.data + params.nbytes
        with self._lock:
            mine = [(key, entry) for key, entry in self._snapshot().items()
                    if entry[0]() is not None and lo <= entry[0]().ctypes.data < hi]
            self.packs += len(mine)
        mine.sort(key=lambda item: -item[1][1].size)
        parts = max(1, min(workers.count, len(mine)))

        def part(k):
            for key, (ref, packed) in mine[k::parts]:
                w = ref()
                if w is not None:
                    amx.pack_b(w.T if key[1] else w, into=packed)
        workers.run(part, parts)


PACKS = WeightPacks()


# ---------------------------------------------------------------- each layer one GIL-free call: tiles, then the pass
# (the row shards of a step run on two threads at once; Python between the calls would make them queue for the GIL)

@njit(cache=True, nogil=True, error_model="numpy")
def _dense_forward(out, inp, w, packed_w, b, code, a_scratch, b_scratch, block, cfg):
    amx.product(out, inp, False, w, False, packed_w, a_scratch, b_scratch, block, cfg)
    cpu._bias_act(out, b, code)


@njit(cache=True, nogil=True, error_model="numpy")
def _dense_backward(dinp, dw, db, dout, inp, w, packed_wt, out, code, a_scratch, b_scratch, block, cfg):
    """`out` None: the identity; `dinp` None: the first layer. dw = inp.T @ dz packs both operands in the call."""
    cpu._dz_and_bias_grad(db, dout, out, code)
    if dw is not None:
        amx.product(dw, inp, True, dout, False, amx.NO_PACK, a_scratch, b_scratch, block, cfg)
    if dinp is not None:
        amx.product(dinp, dout, False, w, True, packed_wt, a_scratch, b_scratch, block, cfg)


@njit(cache=True, nogil=True, error_model="numpy")
def _heads_forward(z, mu_logvar, loss, inp, w, packed_w, b, counters, noise_stream, sigma_form, a_scratch, b_scratch,
                   block, cfg):
    amx.product(mu_logvar, inp, False, w, False, packed_w, a_scratch, b_scratch, block, cfg)
    cpu._heads_sample_kl(z, mu_logvar, b, loss, counters[cpu.COUNTER_SEED], noise_stream, counters[cpu.COUNTER_STEP],
                         counters[cpu.COUNTER_ROW], sigma_form)


@njit(cache=True, nogil=True, error_model="numpy")
def _output_forward(dlogits, loss, inp, w, packed_w, b, x, mse, a_scratch, b_scratch, block, cfg):
    amx.product(dlogits, inp, False, w, False, packed_w, a_scratch, b_scratch, block, cfg)
    cpu._bias_loss_dlogits(dlogits, b, x, loss, mse)


def _forward_scratch(inp, w):
    return amx.scratch(amx.scratch_sizes(inp.shape[0], w.shape[1], inp.shape[1])[0], 0)


@functools.lru_cache(maxsize=1024)
def _backward_sizes(rows, fan_in, fan_out):
    a_dw, b_dw = amx.scratch_sizes(fan_in, fan_out, rows)                  # inp.T @ dz
    a_dinp = amx.scratch_sizes(rows, fan_in, fan_out)[0]                   # dz @ w.T
    return max(a_dw, a_dinp), b_dw


def _backward_scratch(inp, dout):
    return amx.scratch(*_backward_sizes(inp.shape[0], inp.shape[1], dout.shape[1]))


def dense_forward(out, inp, w, b, activation):
    amx.require()
    call(_dense_forward, out, inp, w, PACKS.get(w, False), b, cpu.ACTIVATION_CODES[activation],
         *_forward_scratch(inp, w))


def dense_backward(dinp, dw, db, dout, inp, w, out, activation):
    amx.require()
    identity = activation == "identity"
    call(_dense_backward, dinp, dw, db, dout, inp, w, amx.NO_PACK if dinp is None else PACKS.get(w, True),
         None if identity else out, cpu.ACTIVATION_CODES[activation], *_backward_scratch(inp, dout))


def adam_update(params, grads, m, v, counters, lr, beta1, beta2, eps):
    cpu.adam_update(params, grads, m, v, counters, lr, beta1, beta2, eps)
    PACKS.refresh(params, workers)                   # the weights changed: their packs are packed again now


def weight_update_parts(params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    """The contract's weight_update_parts with the weight gradients in bf16 products (amx_update): (parts, part,
    finish). The packs of this buffer's weights are found when a part starts (after its thread's row shard, whose
    forward and backward made any that were missing) and rewritten by the same pass; finish() copies them to any
    other pack of the same weight and advances the step."""
    amx.require()
    u = cpu_update.Update(workers, params, counters, inputs, douts, lr, beta1, beta2, amx_update.CHUNK_ROWS)
    sizes = amx_update.scratch_sizes(u.inputs[0].shape[0], tuple(n for _, n in u.shapes))
    found = []

    def part(k, wait=None, ready=None):
        forward, transposed, copies = PACKS.of_buffer(params, u.shapes, count=k == 0)
        if k == 0:
            found.append(copies)
        a_scratch, b_scratch, block, cfg = amx.scratch(*sizes[:2])
        amx_update.weight_items(params, grads, m, v, u.inputs, u.douts, forward, transposed, u.items, u.counter,
                                u.from_back(k), u.lr_t, beta1, beta2, eps, a_scratch, b_scratch,
                                cpu_update.scratch(sizes[2]), block, cfg, wait, k == 0, ready)

    def finish():
        for source, target in found[0]:
            target[...] = source
        counters[COUNTER_STEP] = u.t
    return u.parts, part, finish


def weight_update_steps(params, grads, m, v, inputs, douts, beta1, beta2, eps, steps):
    """The contract's weight_update_steps (fastvae.step_chunks) with the weight gradients in bf16 products: part(k),
    thread k's share of each step's update (amx_update.weight_items_step), the packs found when it is recorded (the
    same arrays every step after: a pack is rewritten in place); part 0 then copies them to any further pack of the
    same weight, as finish() does."""
    amx.require()
    shapes = update_shapes(inputs, douts, params.size)
    items = cpu_update.plan(shapes, amx_update.CHUNK_ROWS)
    inputs, douts = cpu_update.as_layers(inputs, douts)
    sizes = amx_update.scratch_sizes(inputs[0].shape[0], tuple(n for _, n in shapes))

    cursors, counters, lr_ts, barriers, ready = steps.cursors, steps.counters, steps.lr_ts, steps.barriers, steps.ready

    def part(k):                            # (holding the arrays, not `steps`, which holds this: no reference cycle)
        forward, transposed, copies = PACKS.of_buffer(params, shapes, count=k == 0)
        a_scratch, b_scratch, block, cfg = amx.scratch(*sizes[:2])
        call(amx_update.weight_items_step, cursors[k], params, grads, m, v, inputs, douts, forward, transposed, items,
             counters, lr_ts, beta1, beta2, eps, a_scratch, b_scratch, cpu_update.scratch(sizes[2]), block, cfg,
             barriers, k == 0, ready)
        if k == 0 and copies:               # (after the leader's depart: every part's items are done)
            call(amx_update.copy_packs, tuple(s for s, _ in copies), tuple(t for _, t in copies))
    return part


def weight_update(params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    """The contract's weight_update: weight_update_parts' parts on the workers, then its finish."""
    cpu_update.run_update(workers, weight_update_parts(params, grads, m, v, counters, inputs, douts, lr, beta1, beta2,
                                                       eps))


def heads_forward(z, mu_logvar, loss, inp, w, b, counters, noise_stream, encoder):
    amx.require()
    call(_heads_forward, z, mu_logvar, loss, inp, w, PACKS.get(w, False), b, counters, noise_stream,
         cpu.ENCODER_IS_SIGMA[encoder], *_forward_scratch(inp, w))


def heads_backward(dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, encoder):
    call(cpu._heads_dmu_logvar, dmu_logvar, dz, mu_logvar, z, counters, noise_stream, cpu.ENCODER_IS_SIGMA[encoder])
    dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, "identity")


def output_forward(dlogits, loss, inp, w, b, x, reconstruction):
    amx.require()
    call(_output_forward, dlogits, loss, inp, w, PACKS.get(w, False), b, x,
         cpu.RECONSTRUCTION_IS_MSE[reconstruction], *_forward_scratch(inp, w))
