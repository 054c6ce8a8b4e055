"""The backend contract, declared once: every kernel's name, arguments (shape, dtype, role) and the array hooks.

A backend is anything with these names (a module, or an object); `Backend(impl)` checks it against this
declaration when it loads (every kernel present, its parameters named and ordered as here) and exposes exactly
the contract, so all backends have one shape. fastvae.backends.reference implements it in float64 NumPy and is
the specification; the tests hold every other backend to it, kernel by kernel (tests/test_kernels.py).

Conventions (after llm.c): outputs first, then inputs, then settings. Activation gradients and parameter
gradients are written with `=` (one batch per step); losses are added (`+=`) into the float64[2] accumulator
`loss` at (LOSS_RECONSTRUCTION, LOSS_KL); `counters` is int64[COUNTERS] at (COUNTER_SEED, COUNTER_STEP,
COUNTER_ROW), see fastvae.constants: a kernel given rows lo..hi of a batch (a shard) has COUNTER_ROW = lo and draws
those rows' noise. A dense layer is y = act(x @ W + b) with W stored (fan_in, fan_out). A backward kernel's
`dout` is scratch: it may hold dy or dz afterwards (the step reads each dout once), except when dw and db are
None: then the weight gradient is left to `weight_update`, and dout must hold dz afterwards.

Shape symbols: n rows of the batch, K a layer's fan-in, N its fan-out, L the latent size, D the data width,
M the rows of the data set, P the number of parameters, S the row shards whose partial gradients a step sums.
dtype "float" is the backend's own (`Backend.dtype`).
"""
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import ACTIVATIONS, ENCODERS, RECONSTRUCTIONS


@dataclass(frozen=True)
class Arg:
    name: str
    role: str            # "out" written, "in" read, "inout" read and written, "acc" added to, "scratch", "setting"
    shape: str = ""      # e.g. "(n, K)"; "" for settings
    dtype: str = "float"
    optional: bool = False   # may be None (dinp of the first layer; out of a linear layer's backward)


@dataclass(frozen=True)
class Kernel:
    name: str
    args: tuple
    doc: str

    @property
    def arg_names(self):
        return tuple(a.name for a in self.args)


def _k(name, doc, *args):
    return Kernel(name, tuple(args), doc)


_DENSE_IN = (Arg("inp", "in", "(n, K)"), Arg("w", "in", "(K, N)"))
_LOSS = Arg("loss", "acc", "(2,)", "float64")
_COUNTERS = Arg("counters", "in", "(COUNTERS,)", "int64")

KERNELS = {k.name: k for k in (
    _k("gather_batch", "x = data[idx] as floats in [0, 1]; uint8 data is divided by 255, correctly rounded (the "
       "bits of float images (data / 255).astype(float32)).",
       Arg("x", "out", "(n, D)"), Arg("data", "in", "(M, D)", "uint8 or float"), Arg("idx", "in", "(n,)", "int64")),
    _k("dense_forward", "out = act(inp @ w + b), act one of constants.ACTIVATIONS (a compile-time choice).",
       Arg("out", "out", "(n, N)"), *_DENSE_IN, Arg("b", "in", "(N,)"), Arg("activation", "setting", dtype="str")),
    _k("dense_backward", "dz = dout * act'(z) formed from the forward output `out` (None for identity); "
       "dw = inp.T @ dz, db = sum of dz over rows, dinp = dz @ w.T (skipped when dinp is None). dw and db None "
       "(backends with weight_update): no weight gradient; dz is left in dout for weight_update.",
       Arg("dinp", "out", "(n, K)", optional=True), Arg("dw", "out", "(K, N)", optional=True),
       Arg("db", "out", "(N,)", optional=True),
       Arg("dout", "scratch", "(n, N)"), *_DENSE_IN, Arg("out", "in", "(n, N)", optional=True),
       Arg("activation", "setting", dtype="str")),
    _k("heads_forward", "mu_logvar = inp @ w + b = [mu | logvar] (or [mu | sigma], encoder 'sigma'); "
       "z = mu + sigma * eps with eps = rng.normals(seed, noise_stream, step, first_row=row); "
       "loss[KL] += KL(q(z|x) || N(0, I)).",
       Arg("z", "out", "(n, L)"), Arg("mu_logvar", "out", "(n, 2L)"), _LOSS,
       Arg("inp", "in", "(n, K)"), Arg("w", "in", "(K, 2L)"), Arg("b", "in", "(2L,)"), _COUNTERS,
       Arg("noise_stream", "setting", dtype="int"), Arg("encoder", "setting", dtype="str")),
    _k("heads_backward", "dmu_logvar from dz (the decoder's input gradient) and the KL term; then the heads' "
       "dense backward. The gamma form recovers eps from z, the sigma form draws it again from `counters`. dw and "
       "db None: no weight gradient (left to weight_update; dmu_logvar is the heads' dz).",
       Arg("dinp", "out", "(n, K)", optional=True), Arg("dw", "out", "(K, 2L)", optional=True),
       Arg("db", "out", "(2L,)", optional=True),
       Arg("dmu_logvar", "out", "(n, 2L)"), Arg("dz", "in", "(n, L)"), Arg("inp", "in", "(n, K)"),
       Arg("w", "in", "(K, 2L)"), Arg("mu_logvar", "in", "(n, 2L)"), Arg("z", "in", "(n, L)"), _COUNTERS,
       Arg("noise_stream", "setting", dtype="int"), Arg("encoder", "setting", dtype="str")),
    _k("output_forward", "logits = inp @ w + b; loss[RECONSTRUCTION] += the reconstruction loss against x; "
       "dlogits = its gradient with respect to the logits (the logits themselves are not kept).",
       Arg("dlogits", "out", "(n, D)"), _LOSS, Arg("inp", "in", "(n, K)"), Arg("w", "in", "(K, D)"),
       Arg("b", "in", "(D,)"), Arg("x", "in", "(n, D)"), Arg("reconstruction", "setting", dtype="str")),
    _k("adam_update", "One Adam step in TensorFlow's form over the flat buffer with the gradient sum(grads, axis 0), "
       "which it leaves in grads[0]; advances counters[STEP].",
       Arg("params", "inout", "(P,)"), Arg("grads", "inout", "(S, P)"), Arg("m", "inout", "(P,)"),
       Arg("v", "inout", "(P,)"), Arg("counters", "inout", "(COUNTERS,)", "int64"),
       Arg("lr", "setting", dtype="float"), Arg("beta1", "setting", dtype="float"),
       Arg("beta2", "setting", dtype="float"), Arg("eps", "setting", dtype="float")),
)}


# Kernels a backend may have; the step uses them where present. weight_update: the weight gradients formed over the
# whole batch after the row shards' backward passes, fused with Adam (no partial gradients per shard to sum, each
# gradient chunk updated while it is in cache; cpu-bf16 also writes the next step's tile layouts of the weights).
# Layout rule it relies on (fastvae.params): the flat buffer is every layer's weight (K_l, N_l) row-major in order,
# then every layer's bias (N_l,) in the same order.
OPTIONAL_KERNELS = {k.name: k for k in (
    _k("weight_update", "For each layer l in the layout's order: dw_l = inputs[l].T @ douts[l] and db_l = the sum of "
       "douts[l] over rows, written into grads at the layer's offsets (grads None: not kept, each chunk of it "
       "lives in a scratch buffer only while Adam reads it); then one Adam step as adam_update's with S = 1 over "
       "the whole buffer; advances counters[STEP]. Raises ValueError when the shapes do not make P.",
       Arg("params", "inout", "(P,)"), Arg("grads", "out", "(P,)", optional=True), Arg("m", "inout", "(P,)"),
       Arg("v", "inout", "(P,)"), Arg("counters", "inout", "(COUNTERS,)", "int64"),
       Arg("inputs", "in", "tuple of (n, K_l)"), Arg("douts", "in", "tuple of (n, N_l): each layer's dz"),
       Arg("lr", "setting", dtype="float"), Arg("beta1", "setting", dtype="float"),
       Arg("beta2", "setting", dtype="float"), Arg("eps", "setting", dtype="float")),
)}

# weight_update in parts, for a caller that runs them on threads it already has (fastvae.step runs them right after
# the row shards, in the same job of the workers): returns (parts, part, finish); part(k, wait=None) for k = 0, 1, ...
# on any number of threads at once (each claims work until none is left; `parts` is how many weight_update itself
# would use), then finish() once, is weight_update with the same arguments. Called before the arrays it reads are
# filled: it reads inputs, douts, params, m and v only when the parts run, each after waiting at the barrier `wait`
# (fastvae.barrier, inside its first kernel: Workers.run_phases) when given, and doing nothing if that was aborted;
# with `wait`, the last act of its last kernel is barrier.depart(wait, k == 0) (part 0 waits there for the others, so
# the pool need not wait for their threads' return through Python). part(k, wait, ready): with `ready` as well (an
# int64 array, one count per layer, that every row shard marks through the backend's layer_done), a part waits at the
# barrier for each layer's marks instead of for every shard, and updates a layer as soon as every shard is done with
# it.
OPTIONAL_KERNELS["weight_update_parts"] = Kernel("weight_update_parts", OPTIONAL_KERNELS["weight_update"].args,
                                                  "weight_update, split: returns (parts, part, finish) (see above).")


# Every backend has these: its name, its float dtype, its array module, and the array hooks.
HOOKS = ("name", "dtype", "xp", "empty", "zeros", "asarray", "to_host", "synchronize")
# Optional: capture(fn) -> replay (records a whole step once, gpu); record(body) -> a Recording of the kernel calls
# body() made on this thread, run as well (cpu backends: fastvae.backends.capture; step.Stepper replays each row
# shard's); loss_check_interval (steps between reads of the loss by the trainer, default 1); workers (a
# fastvae.workers.Workers: the backend's kernels release the GIL, so the step may run row shards of a batch on its
# threads at once; its count is set by fastvae.threads while training); layer_done(ready, layer) (a backend with
# weight_update_parts and workers: called by each row shard once its backward of layer `layer`, in the layout's order,
# is done, so that part(k, wait, ready) may update that layer before every shard has finished: fastvae.barrier.mark);
# host_data (True: gather_batch reads a host array in place, so the data set needs no copy: step.data_for);
# weight_update_steps(params, grads, m, v, inputs, douts, beta1, beta2, eps, steps) (a backend with record, workers
# and layer_done): part(k), thread k's share of a step's update as recordable kernel calls that read the step's claim
# counter, lr_t and barrier from `steps` (fastvae.step_chunks.StepChunks), so that a chunk of steps replays as one
# call per thread.
OPTIONAL = {"capture": None, "record": None, "loss_check_interval": 1, "workers": None, "layer_done": None,
            "host_data": False, "weight_update_steps": None}

SETTINGS = {"activation": ACTIVATIONS, "encoder": ENCODERS, "reconstruction": RECONSTRUCTIONS}


class ContractError(TypeError):
    """A backend does not implement the contract (a programming error in the backend, not a user's)."""


class Backend:
    """A backend checked against the contract: exactly the kernels, hooks and optional parts declared above.

    `impl` is a module or object with those names. Raises ContractError naming every missing name and every
    kernel whose parameters differ from the contract's (names and order).
    """

    # The hooks (HOOKS) and optional parts (OPTIONAL), set from `impl` below, declared for type checkers (a test
    # holds this list to HOOKS and OPTIONAL); the kernels' names are many and alike, so __getattr__ stands for them.
    name: str
    dtype: Any                  # np.float32 or np.float64: the backend's arrays and master weights
    xp: Any                     # the array module: numpy, or cupy for gpu
    empty: Callable[..., Any]
    zeros: Callable[..., Any]
    asarray: Callable[..., Any]
    to_host: Callable[..., np.ndarray]
    synchronize: Callable[[], None]
    capture: Callable[..., Any] | None
    record: Callable[..., Any] | None
    loss_check_interval: int
    workers: Any                # a fastvae.workers.Workers, or None
    layer_done: Callable[..., Any] | None
    host_data: bool
    weight_update_steps: Callable[..., Any] | None
    impl: Any

    if TYPE_CHECKING:
        def __getattr__(self, kernel: str) -> Callable[..., Any]: ...

    def __init__(self, impl):
        problems = [f"missing {n}" for n in (*KERNELS, *HOOKS) if not hasattr(impl, n)]
        for kernel in (*KERNELS.values(), *OPTIONAL_KERNELS.values()):
            fn = getattr(impl, kernel.name, None)
            if fn is None:
                continue
            params = tuple(inspect.signature(fn).parameters)
            if params != kernel.arg_names:
                problems.append(f"{kernel.name}{params} is not {kernel.name}{kernel.arg_names}")
        if problems:
            label = getattr(impl, "name", impl)
            raise ContractError(f"backend {label!r} breaks the contract: " + "; ".join(problems))
        for n in (*KERNELS, *HOOKS):
            setattr(self, n, getattr(impl, n))
        for n, default in {**OPTIONAL, **dict.fromkeys(OPTIONAL_KERNELS)}.items():
            setattr(self, n, getattr(impl, n, default))
        self.impl = impl

    def __repr__(self):
        # (the arrays' dtype: "(float32)" alone read as the precision of cpu-bf16, whose products are bf16)
        return f"<fastvae backend {self.name!r} ({np.dtype(self.dtype).name} arrays)>"

    def __eq__(self, other):
        """A backend equals its name (`model.backend == "cpu"` was False, silently: a fresh user's trial) and itself
        (each is loaded once)."""
        return self.name == other if isinstance(other, str) else self is other

    def __hash__(self):
        return hash(self.name)
