"""PyTorch peer of fastvae's model: eager, or with torch.compile (Inductor, C++ on the CPU), or eager under bf16
autocast (mixed precision, the peer of fastvae's cpu-bf16).

Identical model: 784 -> 500 -> 500 (ELU) -> Linear 500 -> 40 = [mu | gamma] -> z = mu + exp(gamma / 2) * eps
-> 500 -> 500 (ELU) -> 784 logits; weights ~ N(0, 2 / fan_in), biases 0; per-batch loss = SUM over the batch of
binary_cross_entropy_with_logits (the stable form) + 0.5 * sum(exp(gamma) + mu^2 - 1 - gamma); Adam(lr 1e-3,
betas (0.9, 0.999), eps 1e-8); float32; torch.set_num_threads(2). device="cuda" runs the same on the GPU (the
data set, the shuffle and the noise generator on the device; the loss read back once per epoch).

Differences from fastvae, by design (each framework's own way):
- eps comes from torch.randn with a torch.Generator seeded with `seed` (fastvae: counter-based Philox), and the
  initial weights from the same generator (fastvae: NumPy's default_rng), so the numbers differ, not the model.
- torch.optim.Adam adds eps to sqrt(v_hat) (the paper's form); fastvae uses TensorFlow's form, eps added to sqrt(v)
  with the bias correction folded into the learning rate. With eps = 1e-8 the two differ only for tiny v.
- The data stay uint8 in one tensor; each batch is gathered with index_select and converted with .float() / 255
  (inside the compiled graph for compile=True). This was as fast as a float32 copy of the whole set made up front
  (measured on 2 cores: within noise) and keeps 188 MB of floats out of the peak memory, like fastvae.
- compile=True compiles the model's forward + loss (AOTAutograd compiles the backward from it) and, separately,
  the optimizer step (PyTorch's recipe for compiling Adam); loss.backward() itself runs through the eager
  autograd engine between the two compiled graphs. The first call compiles; warmup() times it. Inductor caches
  compiled graphs on disk (/tmp/torchinductor_$USER), so a second process compiles much faster than the first.
- Eager uses Adam(fused=True), PyTorch's fastest CPU Adam; compiled uses the default Adam, compiled.
"""
import time
import warnings

import numpy as np

try:  # optional: fastvae does not depend on PyTorch
    import torch
    import torch.nn.functional as F
    _IMPORT_ERROR = None
except Exception as e:  # ImportError, or a broken install (missing shared library, ABI mismatch)
    torch = None
    _IMPORT_ERROR = e

N_PIXELS = 784
HIDDEN = (500, 500)
LATENT = 20
THREADS = 2


def unavailable(device="cpu"):
    """None when PyTorch can be used here (on `device`), else a one-line reason."""
    if torch is None:
        if isinstance(_IMPORT_ERROR, ModuleNotFoundError):
            return "PyTorch is not installed (the README's benchmark install: its CPU build, from PyTorch's index)"
        return f"PyTorch cannot be imported ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})"
    if device == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA device (a CPU-only build, or no GPU here)"
    return None


def _check(device="cpu"):
    reason = unavailable(device)
    if reason:
        raise RuntimeError(reason)


if torch is not None:
    class _VAE(torch.nn.Module):
        """The model; forward(x, eps) returns the batch's summed loss (reconstruction + KL)."""

        def __init__(self, generator):
            super().__init__()
            widths = [N_PIXELS, *HIDDEN]
            self.enc = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.heads = torch.nn.Linear(widths[-1], 2 * LATENT)
            dec = [LATENT, *reversed(HIDDEN)]
            self.dec = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dec[:-1], dec[1:]))
            self.out = torch.nn.Linear(dec[-1], N_PIXELS)
            with torch.no_grad():
                for layer in (*self.enc, self.heads, *self.dec, self.out):   # He init: normal, fan-in, scale 2
                    fan_in = layer.in_features
                    layer.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                    layer.bias.zero_()

        def forward(self, x, eps):
            h = x
            for layer in self.enc:
                h = F.elu(layer(h))
            stats = self.heads(h)
            mu, gamma = stats[:, :LATENT], stats[:, LATENT:]
            h = mu + torch.exp(0.5 * gamma) * eps
            for layer in self.dec:
                h = F.elu(layer(h))
            logits = self.out(h)
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = 0.5 * torch.sum(torch.exp(gamma) + mu * mu - 1.0 - gamma)
            return rec + kl


class Trainer:
    """Trains the VAE on uint8 images (n, 784) with PyTorch; compile=True uses torch.compile."""

    def __init__(self, data_u8, batch_size=150, seed=0, compile=False, device="cpu", autocast=False):
        _check(device)
        # autocast: PyTorch's mixed precision on the CPU (torch.autocast("cpu", dtype=torch.bfloat16) around the
        # forward and the loss; backward and Adam as usual): the Linear layers' products run in bf16 (oneDNN, on
        # AMX or AVX512-BF16 where the CPU has them), fp32 master weights -- the peer of fastvae's cpu-bf16
        self.autocast = bool(autocast)
        torch.set_num_threads(THREADS)
        self.device = torch.device(device)
        data_u8 = np.ascontiguousarray(data_u8, dtype=np.uint8)
        if data_u8.ndim != 2 or data_u8.shape[1] != N_PIXELS:
            raise ValueError(f"data must be uint8 (n, {N_PIXELS}), got {data_u8.shape}")
        self.n = len(data_u8)
        self.batch_size = int(batch_size)
        self.compiled = bool(compile)
        with warnings.catch_warnings():                   # a read-only array (the embedded MNIST) is only read
            warnings.simplefilter("ignore", UserWarning)
            self.data = torch.from_numpy(data_u8).to(self.device)     # on the CPU: shares the buffer, no copy
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))     # the noise
        # the initial weights: drawn on the CPU (with the noise generator itself there), then moved
        init = self.gen if self.device.type == "cpu" else torch.Generator().manual_seed(int(seed))
        self.model = _VAE(init).to(self.device)
        # Eager: the fused CPU Adam (measured ~0.7 ms/step faster than the default foreach one on 2 cores).
        # Compiled: the default (foreach) Adam, which is the one torch.compile's optimizer recipe compiles.
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                    fused=not self.compiled)
        self._total = torch.zeros((), dtype=torch.float64, device=self.device)

        def loss_fn(data, idx, eps):
            x = data.index_select(0, idx).float() / 255.0
            return self.model(x, eps)

        def opt_step():
            self.opt.step()

        if self.compiled:
            self._loss = torch.compile(loss_fn, dynamic=False)   # one static graph per batch shape
            self._opt_step = torch.compile(opt_step)
        else:
            self._loss, self._opt_step = loss_fn, opt_step

    def _step(self, idx):
        eps = torch.randn((len(idx), LATENT), generator=self.gen, device=self.device)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self._loss(self.data, idx, eps)
        loss.backward()
        self._opt_step()
        self._total += loss.detach()

    def _batches(self, order, k=None):
        order = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64)).to(self.device)
        starts = range(0, len(order), self.batch_size)
        if k is not None:
            starts = starts[:k]
        for start in starts:
            yield order[start:start + self.batch_size]

    def _run(self, order, k=None):
        self._total.zero_()
        seen = 0
        for idx in self._batches(order, k):
            self._step(idx)
            seen += len(idx)
        return float(self._total) / max(seen, 1)     # the only read-back

    def epoch(self, order):
        """One epoch over data[order] (full batches, then a partial one if any); mean loss per image."""
        return self._run(order)

    def steps(self, order, k):
        """The first k steps of an epoch over data[order]; mean loss per image over them."""
        return self._run(order, int(k))

    def warmup(self):
        """Runs the first step of each batch shape (full, and the partial last one when n % batch_size), timing
        them from the start including any compilation; then puts the weights, Adam's state and the generator back,
        so training afterwards is what it would have been. Returns seconds."""
        params = [p.detach().clone() for p in self.model.parameters()]
        gen_state = self.gen.get_state()
        sizes = [min(self.batch_size, self.n)]
        if self.n > self.batch_size and self.n % self.batch_size:
            sizes.append(self.n % self.batch_size)
        begin = time.perf_counter()
        for size in sizes:
            self._step(torch.arange(size, dtype=torch.int64, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - begin
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), params):
                p.copy_(saved)
                p.grad = None
                for t in self.opt.state[p].values():    # exp_avg, exp_avg_sq, step: a fresh Adam, in place
                    t.zero_()
        self.gen.set_state(gen_state)
        self._total.zero_()
        return seconds
