"""python -m fastvae.train: train the seed's VAE on MNIST and write its results to a run folder.

Writes into --out: checkpoint.npz (every epoch, atomically), metrics.json, samples/epoch_NNN.png (60 digits
decoded from the same 60 codings each epoch), and at the end samples.png, reconstructions.png and loss.png.
A user's mistake is one line on stderr and exit status 2.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, machine
from .backends import NAMES
from .config import Config
from .errors import UserError

DEFAULTS = Config()


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastvae.train",
        description="Train the VAE of Geron's Hands-On ML (ch. 15) on MNIST with fastvae's fused kernels. "
                    "Every default is the seed's.",
        epilog="example: python -m fastvae.train --epochs 3 --out runs/quick",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", choices=NAMES, default="auto",
                   help="auto picks gpu when CuPy and a CUDA device are usable, else cpu; reference is float64 "
                        "NumPy (slow, the specification)")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="images per training step")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam's learning rate")
    p.add_argument("--hidden", type=int, nargs="+", default=list(DEFAULTS.hidden), metavar="WIDTH",
                   help="encoder widths (the decoder mirrors them)")
    p.add_argument("--latent", type=int, default=DEFAULTS.latent, help="size of the coding z")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="decides the initial weights, the shuffles and every noise draw")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="folder with the four MNIST IDX files (.gz or raw) or a Keras mnist.npz "
                        "(default: the copy embedded in fastvae)")
    p.add_argument("--train-images", type=int, default=None, metavar="N",
                   help="use only the first N training images (quick trials)")
    p.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="use only the first N test images for the per-epoch test loss")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="run folder for checkpoint, metrics and figures (default: runs/<date>-<time>)")
    p.add_argument("--no-plots", action="store_true", help="write no figures (no matplotlib needed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--version", action="version", version=f"fastvae {__version__}")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"fastvae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvae: interrupted; the checkpoint of the last finished epoch is kept", file=sys.stderr)
        return 130
    return 0


def _subset(images, n, option):
    if n is None:
        return images
    if n <= 0:
        raise UserError(f"{option} must be a positive integer, got {n}")
    return images[:n]


def _prepare_out(out):
    out = Path(out) if out is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    try:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output folder {out} ({e.strerror}); choose another with --out") from None
    return out


def run(args):
    from .data import load_mnist
    from .model import VAE
    from .plots import matplotlib_missing

    cfg = Config(hidden=tuple(args.hidden), latent=args.latent, batch_size=args.batch_size, epochs=args.epochs,
                 lr=args.lr, seed=args.seed)          # validates every number, one line each
    data = load_mnist(args.data)
    train_x = _subset(data.train_x, args.train_images, "--train-images")
    test_x = _subset(data.test_x, args.test_images, "--test-images")
    if cfg.batch_size > len(train_x):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train_x)} training images")
    out = _prepare_out(args.out)
    plots = not args.no_plots
    if plots and matplotlib_missing():
        print(f"fastvae: no figures: {matplotlib_missing()}", file=sys.stderr)
        plots = False
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    notify = (lambda msg: print(msg, file=sys.stderr)) if not args.quiet else None

    model = VAE(hidden=cfg.hidden, latent=cfg.latent, backend=args.backend, seed=cfg.seed, lr=cfg.lr,
                batch_size=cfg.batch_size, notify=notify)
    info = {"fastvae": __version__, "backend": model.backend.name, "config": cfg.to_dict(), "data": data.source,
            "train_images": len(train_x), "test_images": len(test_x), "machine": machine.describe()}
    say(f"fastvae {__version__}: {model.layout.size:,} parameters on the {model.backend.name} backend; "
        f"{len(train_x)} training and {len(test_x)} test images from {data.source}; writing to {out}")
    codings_seed = cfg.seed

    def after_epoch(m, record):
        say(f"epoch {record['epoch']:3d}/{cfg.epochs}  train {record['train']['total']:8.3f}  "
            f"test {record['test']['total']:8.3f} (reconstruction {record['test']['reconstruction']:.3f} "
            f"+ KL {record['test']['kl']:.3f})  {record['seconds']:6.2f} s  {record['images_per_s']:9,.0f} img/s")
        m.save(out / "checkpoint.npz")
        _write_json(out / "metrics.json", {**info, "epochs": m.history})
        if plots:
            from .plots import save_digits
            save_digits(out / "samples" / f"epoch_{record['epoch']:03d}.png", m.sample(60, seed=codings_seed),
                        title=f"60 codings from N(0, I), decoded after epoch {record['epoch']}")

    model.fit(train_x, epochs=cfg.epochs, validation=test_x, callback=after_epoch, progress=not args.quiet)
    if plots:
        from .plots import save_digits, save_loss_curves, save_reconstructions
        save_digits(out / "samples.png", model.sample(60, seed=codings_seed),
                    title=f"60 new digits after {model.epoch} epochs")
        originals = test_x[:10].astype(np.float32) / 255.0
        save_reconstructions(out / "reconstructions.png", originals, model.reconstruct(test_x[:10]))
        save_loss_curves(out / "loss.png", model.history)
    final = model.history[-1]
    say(f"done: test loss {final['test']['total']:.3f} per image after {model.epoch} epochs; "
        f"mean {np.mean([r['seconds'] for r in model.history]):.2f} s per epoch; results in {out}")
    return model


def _write_json(path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
