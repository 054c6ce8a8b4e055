"""Train fastvae or one of its peers on MNIST in this process and print one JSON line (for side-by-side timing).

    python -m bench.peers.run {fastvae,fastvae-bf16,torch,torch-bf16,torch-compile,jax} --epochs 1 [--images N]
        [--seed 0] [--serve]

fastvae-bf16 is the cpu-bf16 backend (bf16 products on AMX tiles, or AVX512-BF16 where there is no AMX),
torch-bf16 PyTorch eager under torch.autocast("cpu", dtype=torch.bfloat16): mixed precision beside mixed precision.

JSON keys: framework, version, epochs, images, batch_size, seconds_per_epoch (list, training loop only),
first_call_seconds (fastvae: a throwaway two-batch fit that loads or compiles its Numba kernels and its chunks'
replays, which a fit records on its second batch; peers: warmup(),
the first step of each batch shape including compilation, on a state that is then put back), loss (the last
epoch's mean training loss per image), peak_rss_mb (this process's peak resident memory, Linux's VmHWM: imports,
data, model, training), baseline_rss_mb (the same after the imports and loading the data, before any model exists).

--serve keeps the process for interleaved timing (bench/test_side_by_side.py): it prints one JSON line once the
first call is done, then trains one epoch per line it reads (the epoch's number) and answers each with a JSON line
(seconds, loss).

Every framework sees the same images and the same order: fastvae.rng.epoch_permutation(seed, epoch, n).
Exit status 2, with one line on stderr, when the framework is not installed. Run one per process: peak RSS is
per process, and the frameworks' thread pools should not share a process.
"""
import argparse
import importlib
import resource
import sys
import time

from fastvae import jsonfile       # one JSON line per answer, strict (a diverged loss is null)

FRAMEWORKS = ("fastvae", "fastvae-bf16", "torch", "torch-bf16", "torch-compile", "jax")
_BACKENDS = {"fastvae": "cpu", "fastvae-bf16": "cpu-bf16"}


def _peak_rss_mb():
    """This process's peak resident memory so far, MB: Linux's VmHWM, the high-water mark of the program's own
    memory map. Not ru_maxrss, which Linux carries across fork and exec: a process started by a larger one (the
    benchmark's pytest) reported its parent's size at the fork (found 2026-12-06 on the EPYC: four frameworks at
    415.1 MB, the pytest process's size; the Xeon's run of 2026-12-05 had fastvae and torch at 391.6)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0              # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss                 # no /proc: macOS (bytes), BSD (KiB)
    return peak / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def _fastvae(x, seed, batch_size, backend="cpu"):
    import fastvae
    from fastvae import VAE

    # a throwaway model: the first call loads (or compiles) the Numba kernels, and on its second batch the replays of
    # the chunks of steps (a one-batch warm-up left them to the first timed epoch: 3 s of cpu-bf16's on a cold cache)
    begin = time.perf_counter()
    VAE(backend=backend, seed=seed, batch_size=batch_size).fit(x[:2 * batch_size], epochs=1)
    first = time.perf_counter() - begin
    model = VAE(backend=backend, seed=seed, batch_size=batch_size)

    def epoch(k):                 # the model's own k-th epoch (its shuffle is epoch_permutation(seed, k, n))
        assert k == model.epoch, "fastvae trains its epochs in order"
        record = model.fit(x, epochs=1).history[-1]
        # the threads it ran at, and any change the pacer made in the epoch (fastvae.threads), with the time
        return record["seconds"], record["train"]["total"], {"threads": record.get("threads")}
    return fastvae.__version__, first, epoch


def _peer(name, x, seed, batch_size):
    from fastvae.rng import epoch_permutation

    module = importlib.import_module("bench.peers." + ("jax_vae" if name == "jax" else "torch_vae"))
    kwargs = {"compile": name == "torch-compile", "autocast": name == "torch-bf16"} if name != "jax" else {}
    trainer = module.Trainer(x, batch_size=batch_size, seed=seed, **kwargs)
    first = trainer.warmup()

    def epoch(k):
        order = epoch_permutation(seed, k, len(x))
        begin = time.perf_counter()
        loss = trainer.epoch(order)
        return time.perf_counter() - begin, loss, {}
    version = (module.jax.__version__ if name == "jax" else module.torch.__version__)
    return version, first, epoch


def _serve(name, version, first, epoch):
    """One JSON line when ready, then one epoch per line read (its number), one JSON line each, until EOF."""
    print(jsonfile.dumps({"framework": name, "version": version, "first_call_seconds": round(first, 4)}), flush=True)
    for line in sys.stdin:
        seconds, loss, extra = epoch(int(line))
        print(jsonfile.dumps({"seconds": round(seconds, 4), "loss": loss, **extra}), flush=True)
    return 0


def _unavailable(name):
    if name in _BACKENDS:
        importlib.import_module("fastvae.backends.cpu")      # Numba, so the baseline holds each framework's import
        if name == "fastvae-bf16":
            from fastvae.backends import amx
            return amx.engine_unavailable_reason()
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
    ap.add_argument("--serve", action="store_true",
                    help="after the first call, train one epoch per line read on stdin (the epoch's number)")
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
    if args.framework in _BACKENDS:
        setup = lambda *a: _fastvae(*a, backend=_BACKENDS[args.framework])     # noqa: E731
    else:
        setup = lambda *a: _peer(args.framework, *a)                            # noqa: E731
    try:
        version, first, epoch = setup(x, args.seed, args.batch_size)
        if args.serve:
            return _serve(args.framework, version, first, epoch)
        seconds, loss = [], None
        for k in range(args.epochs):
            s, loss, _ = epoch(k)
            seconds.append(s)
    except UserError as e:                      # e.g. fastvae refuses a batch larger than the data
        print(f"{args.framework}: {e}", file=sys.stderr)
        return 1
    print(jsonfile.dumps({
        "framework": args.framework, "version": version, "epochs": args.epochs, "images": len(x),
        "batch_size": args.batch_size, "seconds_per_epoch": [round(s, 4) for s in seconds],
        "first_call_seconds": round(first, 4), "loss": loss, "peak_rss_mb": round(_peak_rss_mb(), 1),
        "baseline_rss_mb": round(baseline, 1),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
