"""Figures as PNG files. matplotlib is an extra (`pip install "fastvae[plots]"`), imported only here, only when
a figure is drawn; the object-oriented API (Figure, not pyplot) needs no display and keeps no global state."""
import numpy as np

from .errors import UserError

SIDE = 28  # MNIST images are 28 x 28


def matplotlib_missing():
    """None when matplotlib can be imported, else a one-line reason with the install command."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return f"figures need matplotlib ({e}); pip install \"fastvae[plots]\""
    return None


def _figure(width, height):
    if matplotlib_missing():
        raise UserError(matplotlib_missing())
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def digit_grid(images, rows, cols, pad=1, gap=0.0):
    """Images (n, 784) in [0, 1] tiled row by row into one (rows * (28 + pad) - pad, ...) array; gaps = `gap`."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, SIDE, SIDE)
    cell = SIDE + pad
    grid = np.full((rows * cell - pad, cols * cell - pad), gap, dtype=np.float32)
    for k, img in enumerate(images[:rows * cols]):
        r, c = divmod(k, cols)
        grid[r * cell:r * cell + SIDE, c * cell:c * cell + SIDE] = img
    return grid


def save_digits(path, images, rows=6, cols=10, title=None):
    """The seed's Figure 15-12: `rows` x `cols` generated digits, black on white."""
    fig = _figure(cols * 0.8, rows * 0.8 + (0.4 if title else 0))
    ax = fig.add_axes((0, 0, 1, 1 if not title else rows * 0.8 / (rows * 0.8 + 0.4)))
    ax.imshow(1.0 - digit_grid(images, rows, cols, pad=2, gap=0.12), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, y=0.99)
    fig.savefig(path)


def save_reconstructions(path, originals, reconstructions, n=10):
    """Two rows: n test digits above, their reconstructions below."""
    fig = _figure(n * 0.8, 2 * 0.8 + 0.3)
    pair = np.concatenate([np.asarray(originals[:n], np.float32), np.asarray(reconstructions[:n], np.float32)])
    ax = fig.add_axes((0.1, 0, 0.9, 0.9))
    ax.imshow(1.0 - digit_grid(pair, 2, n, pad=2, gap=0.12), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.09, 0.68, "test", ha="right", va="center", fontsize=9)
    fig.text(0.09, 0.24, "recon-\nstructed", ha="right", va="center", fontsize=9)
    fig.suptitle("test digits and their reconstructions (decoded from mu)", fontsize=10)
    fig.savefig(path)


def save_loss_curves(path, history):
    """Loss per image (negative ELBO) by epoch: train (averaged over the epoch's steps) and test."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train"]["total"] for r in history], "o-", ms=3, label="train (mean over the epoch)")
    if all("test" in r for r in history):
        ax.plot(epochs, [r["test"]["total"] for r in history], "s-", ms=3, label="test (after the epoch)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image (reconstruction + KL, nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
