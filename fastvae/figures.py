"""Figures as PNG files. matplotlib is an extra (the plots extra: `pip install matplotlib`), imported only here, only
when a figure is drawn; the object-oriented API (Figure, not pyplot) needs no display and keeps no global state."""
import math
import os
import secrets

import numpy as np

from .errors import UserError

SIDE = 28  # MNIST images are 28 x 28


def matplotlib_missing():
    """None when matplotlib can be imported, else a one-line reason with the install command. The import holds a
    Ctrl-C back until it is done (handled then): one landing inside a compiled module's initialization left it half
    made, read as "figures need matplotlib (initialization failed)", and the process aborted at exit ("Fatal Python
    error: PyThreadState_Get", status 134: a fresh user's trial, 2 in ~60 Ctrl-Cs a second into a run)."""
    from .sigint import held_interrupts
    try:
        with held_interrupts():
            import matplotlib  # noqa: F401
            from matplotlib.figure import Figure  # noqa: F401  (what the figures import: its compiled modules)
    except ImportError as e:
        # (matplotlib by name: `pip install 'fastvae[plots]'` would fetch the package index's fastvae, another
        # project's under this name there, a packaging trial found)
        return f"figures need matplotlib ({e}); pip install matplotlib"
    return None


def _figure(width, height):
    if matplotlib_missing():
        raise UserError(matplotlib_missing())
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path):
    """fig as a PNG at `path`, whole or not at all: drawn into a temporary file beside it, then renamed over it (a
    Ctrl-C in the middle of a savefig left a truncated or empty PNG under the real name: a fresh user's trial)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def digit_grid(images, rows, cols, pad=1, gap=0.0, shape=(SIDE, SIDE)):
    """Images (n, h * w) in [0, 1], each of `shape` (h, w), tiled row by row into one (rows * (h + pad) - pad,
    cols * (w + pad) - pad) array; gaps = `gap`."""
    h, w = shape
    images = np.asarray(images, dtype=np.float32).reshape(-1, h, w)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), gap, dtype=np.float32)
    for k, img in enumerate(images[:rows * cols]):
        r, c = divmod(k, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return grid


def grid_layout(n, shape, pad=2, aspect=10 / 6):
    """(rows, cols) for n images of `shape` (h, w): the grid's width over its height as near `aspect` as the
    divisions allow, every row full where that is within a factor 2 of it (6 x 10 for 60 square images, the seed's
    Figure 15-12; 30 x 2 for 4 x 200 pixels, 2 x 30 for 40 x 1: a fixed 6 x 10 drew those as a thin stripe, a
    researcher's trial), else with a last row part full."""
    h, w = shape
    n = max(n, 1)

    def score(cols):
        rows = -(-n // cols)
        return abs(math.log((cols * (w + pad) - pad) / (rows * (h + pad) - pad) / aspect))
    full = [c for c in range(1, n + 1) if n % c == 0 and score(c) < math.log(2)]
    cols = min(full or range(1, n + 1), key=score)
    return -(-n // cols), cols


def save_digits(path, images, rows=None, cols=None, title=None, shape=(SIDE, SIDE)):
    """The seed's Figure 15-12: `rows` x `cols` generated digits, black on white (default: grid_layout's), 8 in wide
    for a grid of its aspect (the seed's 6 x 10 of 28 x 28 digits), less for a taller one."""
    if rows is None or cols is None:
        rows, cols = grid_layout(len(images), shape)
    h, w = shape
    grid_w, grid_h = cols * (w + 2) - 2, rows * (h + 2) - 2
    width = min(8.0, 4.8 * grid_w / grid_h)             # (4.8 in: the seed's 6 rows of 0.8 in)
    height = width * grid_h / grid_w
    # at least 5 in wide for a title (the grid centred): a tall grid's cut its title off
    fig = _figure(max(width, 5.0) if title else width, height + (0.4 if title else 0))
    ax = fig.add_axes((0, 0, 1, 1 if not title else height / (height + 0.4)))
    ax.imshow(1.0 - digit_grid(images, rows, cols, pad=2, gap=0.12, shape=shape), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, y=0.99)
    _save(fig, path)


def save_reconstructions(path, originals, reconstructions, n=10, shape=(SIDE, SIDE)):
    """Two rows: n test images above, their reconstructions below (fewer when there are fewer); returns the
    matplotlib Figure written to `path`."""
    n = min(n, len(originals))
    # the grid 0.8 in an image, centred, after a column of 0.9 in for the row labels; at least 5 in wide for the
    # title (one test image made an 80-pixel figure that cut both off: a fresh user's trial)
    grid_w, label_w = n * 0.8, 0.9
    width = max(grid_w + label_w, 5.0)
    left = (width - grid_w - label_w) / 2 + label_w
    fig = _figure(width, 2 * 0.8 + 0.3)
    pair = np.concatenate([np.asarray(originals[:n], np.float32), np.asarray(reconstructions[:n], np.float32)])
    ax = fig.add_axes((left / width, 0, grid_w / width, 0.9))
    ax.imshow(1.0 - digit_grid(pair, 2, n, pad=2, gap=0.12, shape=shape), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    fig.text((left - 0.05) / width, 0.68, "test", ha="right", va="center", fontsize=9)
    fig.text((left - 0.05) / width, 0.24, "recon-\nstructed", ha="right", va="center", fontsize=9)
    fig.suptitle("test images and their reconstructions (decoded from mu)", fontsize=10)
    _save(fig, path)
    return fig


def save_loss_curves(path, history):
    """Loss per image (negative ELBO) by epoch: train (averaged over the epoch's steps) and test; returns the
    matplotlib Figure written to `path`."""
    from matplotlib.ticker import MaxNLocator
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train"]["total"] for r in history], "o-", ms=3, label="train (mean over the epoch)")
    if all("test" in r for r in history):
        ax.plot(epochs, [r["test"]["total"] for r in history], "s-", ms=3, label="test (after the epoch)")
    # whole epochs only, even for a run of one epoch (integer=True alone falls back to fractions when fewer than two
    # whole numbers are in view: 0.96, 0.98, 1.00 ... under one point, a fresh user's trial)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image (reconstruction + KL, nats)")
    ax.grid(alpha=0.3)
    # below the axes: inside, it covered a one-epoch run's point (a fresh user's trial)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _label_colours(k):
    """(colormap, listed) for k labels: tab10 for up to 10; up to 20 tab20 with its strong colours first (in its own
    order neighbours pair up, 0 and 1 both blue: a fresh user's trial); more, a colour bar of k bands of turbo."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    if k <= 10:
        return colormaps["tab10"], True
    if k <= 20:
        tab20 = colormaps["tab20"].colors
        return ListedColormap(tab20[0::2] + tab20[1::2]), True
    return colormaps["turbo"].resampled(k), False


def save_latent_scatter(path, mu, labels, dims=(0, 1), how=None):
    """The codings' means mu of a test set, two latent dimensions `dims`, one colour per label (a legend of up to 20
    labels, a colour bar of one band per label for more: EMNIST's letters are 26). With one dimension (a 1-D latent
    space) each label gets its own row: mu along x, the label (jittered) on y; without labels, a histogram of mu.
    Returns the matplotlib Figure written to `path`.

    how: a few words on how `dims` were chosen, shown in the title (e.g. "the two of largest variance")."""
    mu = np.asarray(mu, dtype=np.float64)
    unlabelled = labels is None                        # a data set without labels: one colour, no legend
    labels = np.zeros(len(mu), np.int64) if unlabelled else np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    index = np.searchsorted(classes, labels)           # colours by rank: labels 1..26 or 0..9 alike
    i, j = dims if len(dims) == 2 else (dims[0], None)
    fig = _figure(6.4, 5.6)
    ax = fig.add_axes((0.11, 0.09, 0.70, 0.80))
    if j is None and unlabelled:                       # no labels to spread the points by: how mu is distributed
        ax.hist(mu[:, i], bins=min(60, max(10, len(mu) // 20)), color="tab:blue", alpha=0.8)
        ax.set_xlabel(f"$\\mu_{{{i}}}$")
        ax.set_ylabel("test images")
        ax.grid(alpha=0.3)
        fig.suptitle(f"means of q(z | x) for {len(mu):,} test images: the latent space's one dimension", fontsize=10)
        _save(fig, path)
        return fig
    spread = np.random.default_rng(1).uniform(-0.3, 0.3, len(mu))       # so that one label's points do not overlap
    x, y = mu[:, i], (mu[:, j] if j is not None else labels + spread)
    cmap, listed = _label_colours(len(classes))
    top = cmap.N - 1 if listed else len(classes) - 1
    order = np.random.default_rng(0).permutation(len(mu))    # no label painted wholly on top of the others
    size = 4 if len(mu) > 2000 else 10
    dots = ax.scatter(x[order], y[order], c=index[order], cmap=cmap, vmin=-0.5, vmax=top + 0.5, s=size, alpha=0.6,
                      linewidths=0, rasterized=True)
    if not unlabelled and listed:
        handles = [ax.scatter([], [], color=cmap(k), s=30, label=str(c)) for k, c in enumerate(classes)]
        many = len(classes) > 10                        # 20 rows fit one column in smaller type
        fig.legend(handles=handles, title="label", loc="center left", bbox_to_anchor=(0.82, 0.5), frameon=False,
                   fontsize=8 if many else None, labelspacing=0.3 if many else 0.5)
    elif not unlabelled:                                # a band per label, each named (its ticks were uneven)
        bar = fig.colorbar(dots, cax=fig.add_axes((0.86, 0.09, 0.03, 0.80)), label="label")
        step = -(-len(classes) // 30)
        bar.set_ticks(range(0, len(classes), step), labels=[str(c) for c in classes[::step]], fontsize=7)
    ax.set_xlabel(f"$\\mu_{{{i}}}$")
    ax.set_ylabel(f"$\\mu_{{{j}}}$" if j is not None else "label")
    ax.grid(alpha=0.3)
    which = f"latent dims {i} and {j}" if j is not None else "the latent space's one dimension, by label"
    title = f"means of q(z | x) for {len(mu):,} test images: {which}"
    fig.suptitle(title + (f"\n({how})" if how else ""), fontsize=10)
    _save(fig, path)
    return fig


def save_manifold(path, images, quantiles, shape=(SIDE, SIDE)):
    """The decoded grid of a 2-D latent space: images (n * n, 784) row by row, row r at z_1 = quantiles[-1 - r]
    (top = largest), column c at z_0 = quantiles[c]; the axes show the z values (prior quantiles). Returns the
    matplotlib Figure written to `path`."""
    q = np.asarray(quantiles, dtype=np.float64)
    n = len(q)
    grid = digit_grid(np.asarray(images).reshape(n, n, -1)[::-1].reshape(n * n, -1), n, n, pad=0, shape=shape)
    fig = _figure(7.2, 7.6)
    ax = fig.add_axes((0.12, 0.08, 0.84, 0.84))
    # one unit of the extent per image; aspect h / w keeps non-square images' shape (20 x 24 ones were squashed into
    # squares: a fresh user's trial)
    ax.imshow(1.0 - grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              extent=(-0.5, n - 0.5, -0.5, n - 0.5), aspect=shape[0] / shape[1])
    # the ends, and z = -1, 0, 1 where they fall between images (q is increasing: its index interpolates); a tick
    # on the middle image of an even grid read 0.06 for the prior's centre (a fresh user's trial)
    values = [q[0], *(v for v in (-1.0, 0.0, 1.0) if q[0] < v < q[-1]), q[-1]]
    ticks = np.interp(values, q, np.arange(n))
    ax.set_xticks(ticks, [f"{v:.2f}" for v in values])
    ax.set_yticks(ticks, [f"{v:.2f}" for v in values])
    ax.set_xlabel("$z_0$")
    ax.set_ylabel("$z_1$")
    fig.suptitle(f"decoded {n} x {n} grid of the prior's quantiles {_pct(q)} (2-D latent space)", fontsize=10)
    _save(fig, path)
    return fig


def _pct(q):
    from statistics import NormalDist
    lo, hi = NormalDist().cdf(q[0]), NormalDist().cdf(q[-1])
    return f"{lo:.2f}..{hi:.2f}"


def save_interpolations(path, rows, ends=None, pairs=None, shape=(SIDE, SIDE)):
    """Rows of decoded images (r, steps, 784), each going linearly in latent space from mu_a (left) to mu_b
    (right). ends: optional (r, 2, 784) original test images a and b, drawn left and right of their row, apart;
    pairs: optional (label_a, label_b) per row, written beside them."""
    rows = np.asarray(rows, dtype=np.float32)
    r, steps = rows.shape[:2]
    gap, sep = 0.12, 10                                       # sep: blank columns between originals and the row
    parts = [digit_grid(rows.reshape(r * steps, -1), r, steps, pad=2, gap=gap, shape=shape)]
    if ends is not None:
        ends = np.asarray(ends, dtype=np.float32)
        left, right = (digit_grid(ends[:, e], r, 1, pad=2, gap=gap, shape=shape) for e in (0, 1))
        blank = np.zeros((parts[0].shape[0], sep), dtype=np.float32)
        parts = [left, blank, parts[0], blank, right]
    grid = np.hstack(parts)
    label_w = 0.35 if pairs is not None else 0.05
    # 35 pixels an inch, or fewer for small images (an image at least 0.6 in wide: 8 x 8 ones were specks), the
    # figure at least 6.5 in wide for its title (it was cut off on both sides: a fresh user's trial), the grid centred
    ppi = min(35.0, (shape[1] + 2) / 0.6)
    grid_w, grid_h = grid.shape[1] / ppi, grid.shape[0] / ppi
    width, height = max(grid_w + 2 * label_w, 6.5), grid_h + 0.55
    margin = (width - grid_w - 2 * label_w) / 2
    fig = _figure(width, height)
    top = (height - 0.55) / height
    ax = fig.add_axes(((margin + label_w) / width, 0.02, grid_w / width, top - 0.02))
    ax.imshow(1.0 - grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if pairs is not None:
        for k, (a, b) in enumerate(pairs):
            y = 0.02 + (top - 0.02) * (1 - (k + 0.5) / r)
            fig.text((margin + label_w / 2) / width, y, str(a), ha="center", va="center", fontsize=11)
            fig.text(1 - (margin + label_w / 2) / width, y, str(b), ha="center", va="center", fontsize=11)
    what = "test images a (left) and b (right); between them, the decoded codings" if ends is not None else \
        "decoded codings"
    fig.suptitle(f"linear interpolation in latent space: {what}\n(1 - t) mu_a + t mu_b for {steps} values of t "
                 "from 0 to 1", fontsize=10, y=0.995)
    _save(fig, path)
