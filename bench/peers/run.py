"""Train fastvae or one of its peers on MNIST in this process and print one JSON line (for side-by-side timing).

    python -m bench.peers.run {fastvae,torch,torch-compile,jax} --epochs 1 [--images N] [--seed 0]

JSON keys: framework, version, epochs, images, batch_size, seconds_per_epoch (list, training loop only),
first_call_seconds (fastvae: a throwaway one-batch fit that loads or compiles its Numba kernels; peers: warmup(),
the first step of each batch shape including compilation, on a state that is then put back), loss (the last
epoch's mean training loss per image), peak_rss_mb (ru_maxrss of this process: imports, data, model, training),
baseline_rss_mb (ru_maxrss after the imports and loading the data, before any model exists).

Every framework sees the same images and the same order: fastvae.rng.epoch_permutation(seed, epoch, n).
Exit status 2, with one line on stderr, when the framework is not installed. Run one per process: peak RSS is
per process, and the frameworks' thread pools should not share a process.
"""
import argparse
import importlib
import json
import resource
import sys
import time

FRAMEWORKS = ("fastvae", "torch", "torch-compile", "jax")


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux reports KiB


def _fastvae(x, epochs, seed, batch_size):
    import fastvae
    from fastvae import VAE

    begin = time.perf_counter()   # a throwaway model: the first call loads (or compiles) the Numba kernels
    VAE(backend="cpu", seed=seed, batch_size=batch_size).fit(x[:batch_size], epochs=1)
    first = time.perf_counter() - begin
    model = VAE(backend="cpu", seed=seed, batch_size=batch_size).fit(x, epochs=epochs)
    seconds = [rec["seconds"] for rec in model.history]
    return fastvae.__version__, first, seconds, model.history[-1]["train"]["total"]


def _peer(name, x, epochs, seed, batch_size):
    from fastvae.rng import epoch_permutation

    module = importlib.import_module("bench.peers." + ("jax_vae" if name == "jax" else "torch_vae"))
    kwargs = {"compile": name == "torch-compile"} if name != "jax" else {}
    trainer = module.Trainer(x, batch_size=batch_size, seed=seed, **kwargs)
    first = trainer.warmup()
    seconds, loss = [], None
    for epoch in range(epochs):
        order = epoch_permutation(seed, epoch, len(x))
        begin = time.perf_counter()
        loss = trainer.epoch(order)
        seconds.append(time.perf_counter() - begin)
    version = (module.jax.__version__ if name == "jax" else module.torch.__version__)
    return version, first, seconds, loss


def _unavailable(name):
    if name == "fastvae":
        importlib.import_module("fastvae.backends.cpu")      # Numba, so the baseline holds each framework's import
        return None
    module = importlib.import_module("bench.peers." + ("jax_vae" if name == "jax" else "torch_vae"))
    return module.unavailable()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.peers.run", description=__doc__.split("\n")[0])
    ap.add_argument("framework", choices=FRAMEWORKS)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--images", type=int, default=None, help="train on the first N training images (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=150)
    args = ap.parse_args(argv)
    if args.epochs < 1 or (args.images is not None and args.images < 1) or args.batch_size < 1:
        ap.error("--epochs, --images and --batch-size must be positive")

    reason = _unavailable(args.framework)      # imports the framework (part of the baseline, as it should be)
    if reason:
        print(f"{args.framework}: {reason}", file=sys.stderr)
        return 2

    from fastvae.data import load_mnist
    x = load_mnist().train_x
    if args.images is not None:
        x = x[:args.images]
    baseline = _peak_rss_mb()

    from fastvae import UserError
    run = _fastvae if args.framework == "fastvae" else (lambda *a: _peer(args.framework, *a))
    try:
        version, first, seconds, loss = run(x, args.epochs, args.seed, args.batch_size)
    except UserError as e:                      # e.g. fastvae refuses a batch larger than the data
        print(f"{args.framework}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({
        "framework": args.framework, "version": version, "epochs": args.epochs, "images": len(x),
        "batch_size": args.batch_size, "seconds_per_epoch": [round(s, 4) for s in seconds],
        "first_call_seconds": round(first, 4), "loss": loss, "peak_rss_mb": round(_peak_rss_mb(), 1),
        "baseline_rss_mb": round(baseline, 1),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
