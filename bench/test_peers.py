"""Peers in the same run: PyTorch eager, torch.compile and JAX jit train the identical model on the same data and
the same shuffles; their epochs land in the same group as fastvae's, so the report can show the ratios. Each is
skipped with the reason when its framework is not installed (pip install -e ".[bench]")."""
import pytest

from benchlib import EPOCH_GROUP, FLOPS_PER_IMAGE, FRAMEWORKS, SEED_CFG
from fastvae import rng

PEERS = [(FRAMEWORKS["torch"], "torch_vae", {}), (FRAMEWORKS["torch-compile"], "torch_vae", {"compile": True}),
         (FRAMEWORKS["jax"], "jax_vae", {}),
         # on the GPU: the same model on the same card as fastvae's gpu backend (skipped without one)
         (FRAMEWORKS["torch"], "torch_vae", {"device": "cuda"}),
         (FRAMEWORKS["torch-compile"], "torch_vae", {"compile": True, "device": "cuda"})]
IDS = [label + (" cuda" if kw.get("device") == "cuda" else "") for label, _, kw in PEERS]


def peer_module(name):
    import importlib
    return importlib.import_module(f"peers.{name}")


@pytest.mark.benchmark(group=EPOCH_GROUP)
@pytest.mark.parametrize("label,module,kwargs", PEERS, ids=IDS)
def test_peer_epoch(benchmark, mnist, label, module, kwargs):
    mod = peer_module(module)
    device = kwargs.get("device", "cpu")
    reason = mod.unavailable(device) if device != "cpu" else mod.unavailable()
    if reason:
        pytest.skip(reason)
    x = mnist.train_x
    trainer = mod.Trainer(x, batch_size=SEED_CFG.batch_size, seed=SEED_CFG.seed, **kwargs)
    first_call = trainer.warmup()
    epochs = iter(range(100))
    losses = []

    def epoch():
        losses.append(trainer.epoch(rng.epoch_permutation(SEED_CFG.seed, next(epochs), len(x))))

    benchmark.extra_info.update(flops=FLOPS_PER_IMAGE * len(x), images=len(x), framework=label,
                                first_call_s=first_call, device="gpu" if device == "cuda" else "cpu")
    benchmark.pedantic(epoch, rounds=3, warmup_rounds=0)
    assert 90 < losses[-1] < 200, f"{label}: an epoch of training ended at {losses[-1]} per image"
