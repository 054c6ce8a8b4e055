"""The training step, written once: forward, loss, backward and update composed from a backend's kernels.

Every backend runs exactly this order; the trainer and the VAE class only loop and call. `be` is a
fastvae.backends.contract.Backend; the config's settings (activation, encoder, reconstruction) are passed to the
kernels as their last arguments, so no variant is looked up here.
"""
import os
import warnings

import numpy as np

from .constants import COUNTER_ROW, COUNTER_SEED, COUNTER_STEP, COUNTERS, EVAL_ROWS
from .rng import STREAM_EVAL, STREAM_TRAIN
from .threads import affinity_count


class Rows:
    """The activation and gradient buffers of rows lo..hi of a batch (views of the workspace's rows)."""

    def __init__(self, full, lo, hi):
        for key, value in full.items():
            setattr(self, key, [a[lo:hi] for a in value] if isinstance(value, list) else value[lo:hi])
        self.n = hi - lo


class Workspace:
    """Every buffer a step touches, allocated once for a maximum batch size (the field's names: mu_logvar holds
    the heads' [mu | logvar], dmu_logvar its gradient; `d` marks a gradient). training False: the forward's buffers
    only (inference: evaluate, encode, decode; at the seed's layers 3,628 floats a row against 5,688)."""

    def __init__(self, be, cfg, batch, training=True):
        e = be.empty
        h = list(cfg.hidden)
        full = {
            "x": e((batch, cfg.input_width)),
            "enc": [e((batch, k)) for k in h],           # encoder activations (hidden layers' outputs)
            "mu_logvar": e((batch, 2 * cfg.latent)),     # [mu | logvar] ([mu | sigma] in the sigma form)
            "z": e((batch, cfg.latent)),
            "dec": [e((batch, k)) for k in reversed(h)],
            "dlogits": e((batch, cfg.input_width)),      # the reconstruction loss's gradient (evaluate's pass too)
        }
        full["logits"] = full["dlogits"]                 # decode's output: no step needs both
        if training:
            full.update({
                "denc": [e((batch, k)) for k in h],      # the encoder activations' gradients (each backward's scratch)
                "dmu_logvar": e((batch, 2 * cfg.latent)),
                "dz": e((batch, cfg.latent)),
                "ddec": [e((batch, k)) for k in reversed(h)],
            })
        self.be = be
        self.batch = batch
        self._full = full
        self._rows = {}
        self._shards = {}
        self._ready = None
        self.loss = be.zeros(2, dtype=np.float64)         # (reconstruction, KL), summed until read

    @property
    def nbytes(self) -> int:
        """The bytes of its buffers (each once: logits is dlogits)."""
        arrays = {id(a): a for v in self._full.values() for a in (v if isinstance(v, list) else [v])}
        return sum(a.nbytes for a in arrays.values())

    def rows(self, n, lo=0):
        """The buffers of rows lo..lo + n."""
        if not (0 < n and 0 <= lo and lo + n <= self.batch):
            raise ValueError(f"rows {lo}..{lo + n} do not fit a workspace of {self.batch}")
        if (lo, n) not in self._rows:
            self._rows[lo, n] = Rows(self._full, lo, lo + n)
        return self._rows[lo, n]

    def ready(self, layers):
        """int64 (layers,): how many row shards have finished each layer's backward (the backend's layer_done), for
        the update's parts to wait on (zeroed by train_step before each step's shards; one array, as the shards'
        replays keep the one they were recorded with)."""
        if self._ready is None or self._ready.shape[0] != layers:
            self._ready = self.be.zeros(layers, dtype=np.int64)
        return self._ready

    def shard(self, s):
        """(loss, counters) of row shard s > 0: its own loss accumulator (added to `loss` after the step) and its
        counters (the step's, with its first row)."""
        if s not in self._shards:
            self._shards[s] = (self.be.zeros(2, dtype=np.float64), self.be.zeros(COUNTERS, dtype=np.int64))
        return self._shards[s]


# Fewer rows than this per shard make the products too thin to gain from a second thread (at 150 rows the step
# takes two shards, of 76 and 74 rows).
MIN_SHARD_ROWS = 32


def row_shards(n, parts):
    """[(lo, hi)]: rows 0..n in min(parts, n) contiguous shards, larger first: each an even number of rows (but one
    when n is odd), as equal as that allows; where there are fewer than two rows per shard, sizes that differ
    by at most one. Why even: OpenBLAS's sgemm runs every one of a shard's products 4-10 % slower per row at an odd
    row count (one thread, the seed's shapes, 75 rows against 76 on the project's Xeon), and the step with two shards
    of 76 and 74 rows took 0.14-0.19 ms less than with two of 75 (5.41 against 5.60 ms, fp32, medians of 10
    alternated rounds of 300 steps; cpu-bf16 2.16 against 2.22)."""
    parts = max(1, min(parts, n))
    pairs, odd = divmod(n, 2)
    if pairs < parts:
        return _contiguous(_balanced(n, parts))
    sizes = [2 * size for size in _balanced(pairs, parts)]
    sizes[sizes.index(sizes[-1])] += odd        # the first of the smallest: still larger first
    return _contiguous(sizes)


def _balanced(n, parts):
    """n split into `parts` sizes that differ by at most one, larger first."""
    size, extra = divmod(n, parts)
    return [size + (s < extra) for s in range(parts)]


def _contiguous(sizes):
    bounds, lo = [], 0
    for size in sizes:
        bounds.append((lo, lo + size))
        lo += size
    return bounds


class State:
    """What training changes: the flat parameters, gradients, Adam moments and counters (seed, steps taken, first row).

    grads is (S, P): the partial gradients of S row shards (S = 1 unless the backend splits batches between its
    threads; see train_step), summed by adam_update into grads[0]. `gradients` are the named views of grads[0],
    `shard_gradients[s]` those of grads[s]. They are allocated when first used: a backend with weight_update keeps
    no gradient unless `keep_gradients` is set (tests compare it; a fit does not need it)."""

    def __init__(self, be, layout, params_host, seed, m=None, v=None, step=0, shards=1, keep_gradients=False):
        self.be = be
        self.layout = layout
        self.params = be.asarray(params_host)
        self.m = be.zeros(layout.size) if m is None else be.asarray(m)
        self.v = be.zeros(layout.size) if v is None else be.asarray(v)
        counters = np.zeros(COUNTERS, dtype=np.int64)
        counters[COUNTER_SEED], counters[COUNTER_STEP] = seed, step
        self.counters = be.asarray(counters, dtype=np.int64)
        self.weights = layout.views(self.params)
        self.keep_gradients = keep_gradients
        self._grads = None
        self._shards = shards

    def ensure_shards(self, shards):
        """Room for the partial gradients of `shards` row shards (grads is scratch between steps)."""
        self._shards = max(self._shards, shards)
        if self._grads is not None and self._grads.shape[0] < shards:
            self._grads = None

    @property
    def grads(self):
        if self._grads is None:
            self._grads = self.be.zeros((self._shards, self.layout.size))
            self._views = [self.layout.views(g) for g in self._grads]
        return self._grads

    @property
    def shard_gradients(self):
        self.grads                              # allocated on first use
        return self._views

    @property
    def gradients(self):
        return self.shard_gradients[0]


def _split(weights, n_hidden):
    """(encoder layers, heads, decoder layers, output layer) of the flat list of (W, b) views."""
    return weights[:n_hidden], weights[n_hidden], weights[n_hidden + 1:-1], weights[-1]


def encode(be, cfg, weights, a):
    """Encoder, then the heads' product alone: a.mu_logvar = [mu | logvar], no sampling (inference)."""
    enc_w, heads_w, _, _ = _split(weights, len(a.enc))
    be.dense_forward(a.mu_logvar, _encoder(be, cfg, enc_w, a), *heads_w, "identity")


def decode(be, cfg, weights, a):
    """Decoder from a.z to the logits, written into a.logits (inference: no loss, no gradient)."""
    _, _, dec_w, out_w = _split(weights, len(a.enc))
    be.dense_forward(a.logits, _decoder(be, cfg, dec_w, a), *out_w, "identity")


def _hidden(be, cfg, layers, h, outs):
    """The hidden layers (W, b) from input h into the buffers outs; returns the last output."""
    for (w, b), out in zip(layers, outs):
        be.dense_forward(out, h, w, b, cfg.activation)
        h = out
    return h


def _encoder(be, cfg, enc_w, a):
    return _hidden(be, cfg, enc_w, a.x, a.enc)


def _decoder(be, cfg, dec_w, a):
    return _hidden(be, cfg, dec_w, a.z, a.dec)


def forward(be, cfg, weights, a, loss, counters, noise_stream):
    """Encoder, heads with sampling and KL, decoder, output with the loss and dlogits."""
    enc_w, heads_w, dec_w, out_w = _split(weights, len(a.enc))
    be.heads_forward(a.z, a.mu_logvar, loss, _encoder(be, cfg, enc_w, a), *heads_w, counters, noise_stream,
                     cfg.encoder)
    be.output_forward(a.dlogits, loss, _decoder(be, cfg, dec_w, a), *out_w, a.x, cfg.reconstruction)


def backward(be, cfg, weights, gradients, a, counters, noise_stream, ready=None):
    """The same layers in reverse; each layer's dz is formed inside its own backward kernel. gradients None: no
    weight gradients (the backend's weight_update forms them from layer_inputs and layer_douts afterwards). `ready`
    (Workspace.ready): each layer, once done, is marked there through the backend's layer_done."""
    n_hidden = len(a.enc)
    heads = n_hidden
    if gradients is None:
        gradients = [(None, None)] * len(weights)

    def done(layer):                            # its weight is read no more, and its dz is final
        if ready is not None:
            be.layer_done(ready, layer)
    be.dense_backward(a.ddec[-1], *gradients[-1], a.dlogits, a.dec[-1], weights[-1][0], None, "identity")
    done(len(weights) - 1)
    for i in reversed(range(n_hidden)):
        layer = heads + 1 + i
        dinp, inp = (a.ddec[i - 1], a.dec[i - 1]) if i > 0 else (a.dz, a.z)
        be.dense_backward(dinp, *gradients[layer], a.ddec[i], inp, weights[layer][0], a.dec[i], cfg.activation)
        done(layer)
    be.heads_backward(a.denc[-1], *gradients[heads], a.dmu_logvar, a.dz, a.enc[-1], weights[heads][0],
                      a.mu_logvar, a.z, counters, noise_stream, cfg.encoder)
    done(heads)
    for i in reversed(range(n_hidden)):
        dinp, inp = (a.denc[i - 1], a.enc[i - 1]) if i > 0 else (None, a.x)
        be.dense_backward(dinp, *gradients[i], a.denc[i], inp, weights[i][0], a.enc[i], cfg.activation)
        done(i)


def layer_inputs(a):
    """Each layer's input, in the layout's order (encoder, heads, decoder, output)."""
    return (a.x, *a.enc, a.z, *a.dec)


def layer_douts(a):
    """Each layer's dz after a backward pass without weight gradients, in the layout's order."""
    return (*a.denc, a.dmu_logvar, *a.ddec, a.dlogits)


def train_step(be, cfg, state, ws, data, idx, parts=1, shards=None):
    """One step on the rows data[idx]: gather, forward, loss, backward, Adam. Adds the batch loss to ws.loss.

    parts > 1 splits the batch into row shards (row_shards) that run forward and backward at once on the backend's
    workers (one after another on a backend without them): each shard draws its own rows' noise (COUNTER_ROW) and
    adds its loss to its own accumulator. A backend with weight_update then forms the weight gradients of the whole
    batch and updates the weights in one call (split between its workers; with weight_update_parts, on the shards'
    threads as soon as the last shard is done, in the same job), so those do not depend on the split
    (the loss, a sum of shard sums, does in its last bits); the others write each shard's partial gradient into
    state.grads[s], which Adam sums (the result is the unsplit step's up to the order of those sums and the
    loss's). `shards` (a ShardReplays for these `parts`, from Stepper) runs each shard's kernels as its replay."""
    bounds = row_shards(len(idx), parts)
    fused = be.weight_update is not None
    updated = False                             # the weights are (weight_update's parts ran with the shards)
    if not fused:
        state.ensure_shards(len(bounds))
    phases = len(bounds) > 1 and fused and be.weight_update_parts is not None and be.workers is not None
    ready = ws.ready(len(state.weights)) if phases and be.layer_done is not None else None

    def kernels(s):                             # shard s's gather, forward and backward
        lo, hi = bounds[s]
        a = ws.rows(hi - lo, lo)
        loss, counters = ws.shard(s) if s else (ws.loss, state.counters)
        be.gather_batch(a.x, data, idx[lo:hi])
        forward(be, cfg, state.weights, a, loss, counters, STREAM_TRAIN)
        backward(be, cfg, state.weights, None if fused else state.shard_gradients[s], a, counters, STREAM_TRAIN,
                 ready)

    def shard(s):
        if s:
            counters = ws.shard(s)[1]
            counters[...] = state.counters
            counters[COUNTER_ROW] = bounds[s][0]
        if shards is None:
            kernels(s)
        else:
            shards.run(s, kernels)

    if len(bounds) == 1:
        shard(0)
    else:
        for s in range(1, len(bounds)):         # zero here, not only after: a step that raised leaves no stale loss
            ws.shard(s)[0][...] = 0
        if phases:
            # the update's parts run on the shards' threads, each layer's as soon as every shard is done with it
            # (`ready`; else once every shard is done): one job of the workers
            _, update, finish = be.weight_update_parts(*_update_args(cfg, state, ws.rows(len(idx))))
            if ready is not None:
                ready[...] = 0
                be.workers.run_phases(shard, lambda k, wait: update(k, wait, ready), len(bounds))
            else:
                be.workers.run_phases(shard, update, len(bounds))
            finish()
            updated = True
        else:
            run_parts(be, shard, len(bounds))
        for s in range(1, len(bounds)):
            ws.loss += ws.shard(s)[0]
    if fused and not updated:
        be.weight_update(*_update_args(cfg, state, ws.rows(len(idx))))
    elif not fused:
        be.adam_update(state.params, state.grads[:len(bounds)], state.m, state.v, state.counters,
                       cfg.lr, cfg.beta1, cfg.beta2, cfg.adam_eps)


class ShardReplays:
    """The row shards of a step in `parts` shards on a backend that records (cpu, cpu-bf16: `record`): each shard's
    kernel calls recorded by the second step that runs them (run() runs them then as well; the first runs them
    plainly, so that the recorded arguments are the scratch buffers at their grown size: see StepChunks.run),
    compile()d after it, and replayed by every later step as one call (fastvae.backends.capture). `refused`: why they
    cannot be replayed (a wrapper did more than call a kernel), else None; `seconds`: what compiling took."""

    def __init__(self, be, parts):
        self.be, self.parts = be, parts
        self.replays = None
        self.recorded = {}
        self.refused = None
        self.seconds = 0.0
        self.warmed = False                     # a step has run the kernels plainly

    @property
    def kernels(self):
        return None if self.replays is None else sum(r.kernels for r in self.replays)

    def run(self, s, kernels):
        if self.replays is not None:
            self.replays[s]()
        elif not self.warmed:
            kernels(s)
        else:
            self.recorded[s] = self.be.record(lambda: kernels(s))

    def compile(self):
        """After a step that recorded every shard: their replays (once; False when there is nothing to compile)."""
        if not self.warmed:
            self.warmed = True                  # (the step that ran them plainly: the next one records)
            return False
        if self.replays is not None or self.refused is not None or len(self.recorded) < self.parts:
            return False
        refused = [r.refused for r in self.recorded.values() if r.refused is not None]
        if refused:
            self.refused = refused[0]
        else:
            try:
                self.replays = [self.recorded[s].compile() for s in range(self.parts)]
                self.seconds = sum(r.seconds for r in self.replays)
            except Exception as e:  # noqa: BLE001  (the replays only save time: the step runs without them)
                self.refused = f"the replays did not compile ({type(e).__name__}: {e})"
                warnings.warn(f"fastvae: steps run without their captured replays: {self.refused}; the numbers are "
                              "the same, a little slower", RuntimeWarning, stacklevel=2)
        self.recorded = {}
        return True


def _update_args(cfg, state, a):
    """weight_update's arguments for the step over the whole batch's rows `a`."""
    grads = state.grads[0] if state.keep_gradients else None
    return (state.params, grads, state.m, state.v, state.counters, layer_inputs(a), layer_douts(a), cfg.lr,
            cfg.beta1, cfg.beta2, cfg.adam_eps)


def data_for(be, X):
    """The data set X (n, d), uint8 or float32, C-ordered, as gather_batch reads it: on a backend with host_data, X
    itself (the kernels only read it; a copy would double a large data set's memory: 47 MB for MNIST's training
    set), else be.asarray's copy (a device's)."""
    if be.host_data and X.flags.c_contiguous and X.dtype in (np.uint8, np.float32):
        return X
    return be.asarray(X, dtype=X.dtype)


def run_parts(be, fn, parts):
    """fn(0), ..., fn(parts - 1): at once on the backend's workers, or one after another without them."""
    if be.workers is not None:
        be.workers.run(fn, parts)
    else:
        for s in range(parts):
            fn(s)


# Whether a Stepper replays recorded row shards on a backend that records (cpu, cpu-bf16), by default; off, every
# step runs its kernels from Python (Stepper's `record` overrides it: bench/step_breakdown compares the two).
# FASTVAE_CAPTURE=0 in the environment turns it off for a process (to rule the replays out when something looks
# wrong: the numbers are the same bits).
RECORD_SHARDS = os.environ.get("FASTVAE_CAPTURE", "1") != "0"


class Stepper:
    """train_step for a run on fixed buffers (state, workspace, data set), the batch's indices copied into one
    buffer. A backend that can capture (gpu: `capture`) records the whole full-batch step once, as a CUDA graph,
    and replays it every step after; one that records (cpu, cpu-bf16: `record`) records each row shard's kernels
    once per shard count (ShardReplays) and replays them (unless `record` is False; default RECORD_SHARDS); a
    short last batch simply calls train_step."""

    def __init__(self, be, cfg, state, ws, data, record=None):
        self.be, self.cfg, self.state, self.ws, self.data = be, cfg, state, ws, data
        self.recording = be.capture is None and be.record is not None and (
            RECORD_SHARDS if record is None else record)
        self.idx = be.empty((ws.batch,), dtype=np.int64) if be.capture is not None or self.recording else None
        self.replay = None
        self.shards = {}                        # parts -> ShardReplays (a backend with `record`)
        self.captures = 0                       # how many times a step was recorded and compiled
        self.compile_seconds = 0.0              # what compiling the shards' replays took (cpu), in all
        self.cpus = affinity_count()            # read once: a system call, not per step
        self._last = None                       # the ShardReplays the last full batch ran
        self.chunks = {}                        # parts -> step_chunks.StepChunks (many())

    @property
    def kernels_per_step(self):
        """Kernel calls in the captured step (None before the first capture, or without one); on the cpu backends
        those of the row shards (with their update and step ends where chunked: many()), whose replays the last full
        batch ran."""
        if self.replay is not None:
            return self.replay.kernels
        return None if self._last is None else self._last.kernels

    def parts(self, n):
        """Row shards for a batch of n rows: one per worker thread, at least MIN_SHARD_ROWS rows each, and no more
        than the CPUs this process may run on (a count above that would only add threads and gradient buffers)."""
        workers = self.be.workers
        if workers is None:
            return 1
        return max(1, min(workers.count, n // MIN_SHARD_ROWS, self.cpus))

    def __call__(self, idx):
        be = self.be
        if self.idx is None or len(idx) != self.ws.batch:
            train_step(be, self.cfg, self.state, self.ws, self.data, idx, self.parts(len(idx)))
            return
        self.idx[...] = idx                     # device to device: the only per-step work besides the replay
        if self.recording:
            self._shards_step()
            return
        if self.replay is None:
            self.state.shard_gradients          # allocated before, not inside the capture (State.grads is lazy)
            self.replay = be.capture(lambda: train_step(be, self.cfg, self.state, self.ws, self.data, self.idx))
            self.captures += 1
        self.replay()

    def many(self, order, first, count):
        """Up to `count` (>= 1) full batches of an epoch's shuffled `order` (int64, the backend's array), from batch
        number `first`: how many steps ran. Where the backend has weight_update_steps and the shards are replayed,
        a chunk of steps as one call per thread (fastvae.step_chunks: fewer steps only where the loss stopped being
        finite); otherwise one step."""
        chunks = self._chunks()
        done = None if chunks is None else chunks.run(order, first, count)
        if done is None:                        # one step (or a busy pool: then its steps one by one, as before)
            self(order[first * self.ws.batch:(first + 1) * self.ws.batch])
            return 1
        if chunks.compiled_now and chunks.replays is not None:     # it recorded a step and compiled the replays
            self.captures += 1
            self.compile_seconds += chunks.seconds
        self._last = chunks
        return done

    def _chunks(self):
        """The StepChunks for the current shard count, or None where steps are not chunked."""
        be = self.be
        if not (self.recording and be.weight_update_steps is not None and be.layer_done is not None):
            return None
        parts = self.parts(self.ws.batch)
        if parts < 2:
            return None
        chunks = self.chunks.get(parts)
        if chunks is None:
            from .step_chunks import StepChunks
            chunks = self.chunks[parts] = StepChunks(self, parts)
        return None if chunks.refused is not None else chunks

    def _shards_step(self):
        parts = self.parts(self.ws.batch)
        shards = self.shards.get(parts)
        if shards is None:
            shards = self.shards[parts] = ShardReplays(self.be, parts)
        train_step(self.be, self.cfg, self.state, self.ws, self.data, self.idx, parts,
                   None if shards.refused is not None else shards)
        if shards.compile() and shards.replays is not None:
            self.captures += 1
            self.compile_seconds += shards.seconds
        self._last = shards


def evaluate_chunk(be, cfg, weights, a, data, idx, seed, j, loss, counters):
    """Adds the loss (reconstruction, KL) of images data[idx], chunk j of an evaluation, to `loss` (float64 (2,)), one
    ELBO sample per image; `a` has len(idx) rows, `counters` is the chunk's own (COUNTERS,) int64 scratch.

    Chunk j holds images j * EVAL_ROWS onwards (at most EVAL_ROWS) and draws its noise at step j, so the noise of image
    i is a function of (seed, i) alone and the same model always gets the same number (fastvae.inference runs the
    chunks on the workers).
    """
    if len(idx) > EVAL_ROWS:
        raise ValueError(f"evaluation runs in chunks of at most EVAL_ROWS = {EVAL_ROWS} rows, not {len(idx)}")
    counters[COUNTER_SEED] = seed
    counters[COUNTER_STEP] = j
    be.gather_batch(a.x, data, idx)
    forward(be, cfg, weights, a, loss, counters, STREAM_EVAL)
