"""Peer implementations of fastvae's model, for side-by-side timing: PyTorch (eager and torch.compile) and JAX (jit).

Each peer trains the identical VAE (Géron, Hands-On ML 1st ed., ch. 15): 784 -> 500 -> 500 (ELU) -> mu, gamma (20 each)
-> z -> 500 -> 500 (ELU) -> 784 logits, He-normal init, summed sigmoid cross-entropy + KL per batch of 150, Adam 1e-3,
float32, shuffled by fastvae.rng.epoch_permutation. They differ from fastvae only where each framework's own way is
used (its RNG for the noise, its Adam, its kernels); each module says where.

The peers are optional: PyTorch and JAX are not dependencies of fastvae. Each module's `unavailable()` returns a
one-line reason when its framework cannot be imported (and None when it can), so benchmarks skip cleanly.
`python -m bench.peers.run FRAMEWORK` trains one of them in its own process and prints one JSON line.
"""
