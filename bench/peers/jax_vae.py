"""JAX peer of fastvae's model: one jax.jit-compiled train step (gather, forward, loss, backward, Adam) on the CPU.

Identical model: 784 -> 500 -> 500 (ELU) -> Linear 500 -> 40 = [mu | gamma] -> z = mu + exp(gamma / 2) * eps
-> 500 -> 500 (ELU) -> 784 logits; weights ~ N(0, 2 / fan_in), biases 0; per-batch loss = SUM over the batch of the
stable sigmoid cross-entropy max(l, 0) - l * x + log1p(exp(-|l|)) (optax.sigmoid_binary_cross_entropy's value)
+ 0.5 * sum(exp(gamma) + mu^2 - 1 - gamma); Adam(lr 1e-3, betas (0.9, 0.999), eps 1e-8); float32.

Differences from fastvae, by design (each framework's own way):
- eps comes from jax.random (threefry keys, split once per step inside the compiled step), the initial weights
  from jax.random.normal with the key PRNGKey(seed); fastvae uses its own Philox and NumPy's default_rng.
- Adam is written out here (optax is not a dependency of jax) in TensorFlow's form, the one fastvae uses:
  the bias correction is folded into the step size and eps is added to sqrt(v) (the PyTorch peer uses PyTorch's
  Adam, which adds eps to sqrt(v_hat)).
- Threads: nothing is set; XLA's CPU client sizes its intra-op thread pool from the cores the process may run on
  (2 here: an epoch used 1.9 CPU-seconds per second, against 2.0 for fastvae and PyTorch with 2 threads). The
  usual way to make it single-threaded is XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1".
- The uint8 data live on the device once; the epoch's order is sent once per epoch and each step slices its batch
  out of it (lax.dynamic_slice) and gathers + divides by 255 inside the compiled step. The state (weights, Adam's
  m and v, step count, key, loss sum) is donated to each step, so XLA updates it in place. The partial last batch
  (n % batch_size rows) is a second compiled shape.
"""
import time

import numpy as np

try:  # optional: fastvae does not depend on JAX
    import jax
    import jax.numpy as jnp
    _IMPORT_ERROR = None
except Exception as e:  # ImportError, or a broken jaxlib
    jax = jnp = None
    _IMPORT_ERROR = e

N_PIXELS = 784
HIDDEN = (500, 500)
LATENT = 20
LR, BETA1, BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8


def unavailable():
    """None when JAX can be used here, else a one-line reason."""
    if jax is None:
        if isinstance(_IMPORT_ERROR, ModuleNotFoundError):
            return "JAX is not installed (the README's benchmark install: pip install -e \".[test,bench]\" ...)"
        return f"JAX cannot be imported ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})"
    return None


def _check():
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)


def _layer_shapes():
    """(fan_in, fan_out) in forward order: encoder, heads (mu|gamma), decoder, output logits (as fastvae.params)."""
    widths = [N_PIXELS, *HIDDEN]
    shapes = list(zip(widths[:-1], widths[1:])) + [(widths[-1], 2 * LATENT)]
    dec = [LATENT, *reversed(HIDDEN)]
    return shapes + list(zip(dec[:-1], dec[1:])) + [(dec[-1], N_PIXELS)]


def _init(key):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(_layer_shapes())), _layer_shapes()):
        w = jax.random.normal(k, (a, b), jnp.float32) * np.float32(np.sqrt(2.0 / a))
        params.append((w, jnp.zeros((b,), jnp.float32)))
    return params


def _loss(params, x, eps):
    n_hidden = len(HIDDEN)
    enc, (wh, bh), dec, (wo, bo) = params[:n_hidden], params[n_hidden], params[n_hidden + 1:-1], params[-1]
    h = x
    for w, b in enc:
        h = jax.nn.elu(h @ w + b)
    stats = h @ wh + bh
    mu, gamma = stats[:, :LATENT], stats[:, LATENT:]
    h = mu + jnp.exp(0.5 * gamma) * eps
    for w, b in dec:
        h = jax.nn.elu(h @ w + b)
    logits = h @ wo + bo
    rec = jnp.sum(jnp.maximum(logits, 0.0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    kl = 0.5 * jnp.sum(jnp.exp(gamma) + mu * mu - 1.0 - gamma)
    return rec + kl


def _train_step(state, data, order, start, size):
    """One step on data[order[start:start + size]]; `size` is static (one compiled shape per batch size)."""
    params, m, v, t, key, total = state
    idx = jax.lax.dynamic_slice(order, (start,), (size,))
    x = data[idx].astype(jnp.float32) / 255.0
    key, sub = jax.random.split(key)
    eps = jax.random.normal(sub, (size, LATENT), jnp.float32)
    loss, grads = jax.value_and_grad(_loss)(params, x, eps)
    t = t + 1.0
    m = jax.tree.map(lambda m, g: BETA1 * m + (1.0 - BETA1) * g, m, grads)
    v = jax.tree.map(lambda v, g: BETA2 * v + (1.0 - BETA2) * g * g, v, grads)
    lr_t = LR * jnp.sqrt(1.0 - BETA2 ** t) / (1.0 - BETA1 ** t)        # TensorFlow's Adam, as fastvae
    params = jax.tree.map(lambda p, m, v: p - lr_t * m / (jnp.sqrt(v) + ADAM_EPS), params, m, v)
    return params, m, v, t, key, total + loss


if jax is not None:
    _step = jax.jit(_train_step, static_argnames=("size",), donate_argnums=(0,))


class Trainer:
    """Trains the VAE on uint8 images (n, 784) with one jax.jit-compiled step."""

    def __init__(self, data_u8, batch_size=150, seed=0):
        _check()
        data_u8 = np.ascontiguousarray(data_u8, dtype=np.uint8)
        if data_u8.ndim != 2 or data_u8.shape[1] != N_PIXELS:
            raise ValueError(f"data must be uint8 (n, {N_PIXELS}), got {data_u8.shape}")
        self.n = len(data_u8)
        self.batch_size = int(batch_size)
        self.data = jax.device_put(data_u8)
        init_key, key = jax.random.split(jax.random.PRNGKey(int(seed)))
        params = _init(init_key)
        zeros = jax.tree.map(jnp.zeros_like, params)
        self.state = (params, zeros, jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0), key,
                      jnp.float32(0.0))

    def _run(self, state, order, k=None, first=0):
        """Steps from batch `first` on (k of them, or to the end); returns the state and the mean loss per image."""
        order_np = np.ascontiguousarray(order, dtype=np.int32)
        order_dev = jax.device_put(order_np)
        params, m, v, t, key, _ = state
        state = (params, m, v, t, key, jnp.float32(0.0))
        starts = range(0, len(order_np), self.batch_size)[first:]
        if k is not None:
            starts = starts[:k]
        seen = 0
        for start in starts:
            size = min(self.batch_size, len(order_np) - start)
            state = _step(state, self.data, order_dev, start, size=size)
            seen += size
        return state, float(state[-1]) / max(seen, 1)   # the only read-back (it waits for the last step)

    def epoch(self, order):
        """One epoch over data[order] (full batches, then a partial one if any); mean loss per image."""
        self.state, loss = self._run(self.state, order)
        return loss

    def steps(self, order, k):
        """The first k steps of an epoch over data[order]; mean loss per image over them."""
        self.state, loss = self._run(self.state, order, int(k))
        return loss

    def warmup(self):
        """Compiles and runs one step of each batch shape (full, and the partial last one when n % batch_size) on a
        copy of the state, which is then dropped, so training afterwards is unchanged. Returns seconds."""
        order = np.arange(self.n)               # an order of the real length: its shape is part of the signature
        batches = -(-self.n // self.batch_size)
        begin = time.perf_counter()
        copy = jax.tree.map(jnp.copy, self.state)
        copy, _ = self._run(copy, order, k=1)                       # the full-batch shape
        if batches > 1 and self.n % self.batch_size:
            copy, _ = self._run(copy, order, k=1, first=batches - 1)   # the partial last batch
        return time.perf_counter() - begin
