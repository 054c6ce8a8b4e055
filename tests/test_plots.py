"""python -m fastvae.plot as a real subprocess: every figure is written and is a real, non-blank image; the
manifold only for a 2-D latent space; and the pieces the figures are computed from."""
import json
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pytest

from fastvae import VAE
from fastvae.data import load_mnist
from fastvae.plot import interpolation_rows, latent_dims, manifold_codings

pytest.importorskip("matplotlib")
ALL = ["interpolation.png", "latent.png", "loss.png", "manifold.png", "reconstructions.png", "samples.png"]


def _train(folder, latent):
    """A small model trained for 2 epochs on 2000 images, saved as a run folder with its metrics.json."""
    mnist = load_mnist()
    model = VAE(hidden=(64, 32), latent=latent, backend="cpu", seed=3, batch_size=100)
    model.fit(mnist.train_x[:2000], epochs=2, validation=mnist.test_x[:300])
    model.save(folder / "checkpoint.npz")
    (folder / "metrics.json").write_text(json.dumps({"epochs": model.history}))
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for latent in (1, 2, 4):
        folder = tmp_path_factory.mktemp(f"latent{latent}")
        out[latent] = (_train(folder, latent), folder)
    return out


def _plot(*args):
    return subprocess.run([sys.executable, "-m", "fastvae.plot", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _check_image(path, min_w, min_h):
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert img.ndim == 3 and w >= min_w and h >= min_h, (path.name, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, f"{path.name} looks blank"
    assert (rgb < 0.5).mean() > 0.01, f"{path.name} has almost nothing dark on it"
    return img


def test_a_reader_gone_from_its_stdout_stops_the_figures_and_says_which_were_written(runs, tmp_path):
    """`fastvae-plot RUN | head -1`: the pipe's end stops the figures with status 141, as a Unix tool; it said nothing,
    2 of 6 figures drawn (a fresh user's trial). One line on stderr names the figures written before the stop. A real
    subprocess whose reader goes away after the first line."""
    _, folder = runs[2]
    out = tmp_path / "figs"
    proc = subprocess.Popen([sys.executable, "-m", "fastvae.plot", str(folder), "--out", str(out), "--test-images",
                             "200", "--backend", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err, err
    assert first == f"wrote {out / 'latent.png'}\n"
    last = err.strip().splitlines()[-1]
    head = "fastvae: stopped: standard output was closed (its reader went away, as `| head` does); written before it: "
    assert last.startswith(head), err
    named = last[len(head):].split(", ")
    assert sorted(named) == sorted(str(p) for p in out.iterdir()) and len(named) < len(ALL), (named, ALL)


def test_every_figure_of_a_2d_model(runs, tmp_path):
    _, folder = runs[2]
    out = tmp_path / "figs"
    proc = _plot(folder / "checkpoint.npz", "--out", out, "--test-images", 2000, "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ALL
    assert proc.stdout.count("wrote ") == len(ALL)
    manifold = _check_image(out / "manifold.png", 500, 500)
    assert 0.8 < manifold.shape[0] / manifold.shape[1] < 1.25          # a square grid
    latent = _check_image(out / "latent.png", 400, 400)
    assert (latent[..., :3].std(axis=2) > 0.1).mean() > 0.01          # coloured points, not grey
    interp = _check_image(out / "interpolation.png", 600, 250)
    assert interp.shape[1] > 1.5 * interp.shape[0]                       # rows of ~12 digits: wide
    _check_image(out / "samples.png", 500, 300)
    _check_image(out / "reconstructions.png", 500, 100)
    _check_image(out / "loss.png", 400, 300)


def test_a_20d_model_gets_no_manifold_and_says_why(runs):
    _, folder = runs[4]
    proc = _plot(folder, "--test-images", 500, "--backend", "cpu")            # the run folder works too
    assert proc.returncode == 0, proc.stderr
    out = folder / "figures"
    assert sorted(p.name for p in out.iterdir()) == [n for n in ALL if n != "manifold.png"]
    assert "no manifold.png: it needs a 2-D latent space, this model's is 4-D" in proc.stdout


def test_a_1d_model_gets_every_figure_but_the_manifold(runs):
    _, folder = runs[1]
    proc = _plot(folder, "--test-images", 500, "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (folder / "figures").iterdir()) == [n for n in ALL if n != "manifold.png"]
    assert "no manifold.png" in proc.stdout
    latent = _check_image(folder / "figures" / "latent.png", 400, 400)
    assert (latent[..., :3].std(axis=2) > 0.1).mean() > 0.01          # coloured points, not grey


@pytest.mark.parametrize("latent, test_images", [(1, 200), (2, 1), (3, 7)])
def test_training_with_figures_works_for_every_latent_size_and_few_test_images(tmp_path, latent, test_images):
    proc = subprocess.run([sys.executable, "-m", "fastvae.train", "--latent", str(latent), "--train-images", "300",
                           "--test-images", str(test_images), "--hidden", "32", "--batch-size", "50", "--epochs",
                           "1", "--backend", "cpu", "--quiet", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {"samples.png", "reconstructions.png", "latent.png", "loss.png"} <= {p.name for p in tmp_path.iterdir()}
    assert ("manifold.png" in {p.name for p in tmp_path.iterdir()}) == (latent == 2)


def test_no_metrics_means_no_loss_curves(runs, tmp_path):
    model, _ = runs[4]
    model.save(tmp_path / "alone.npz")
    proc = _plot(tmp_path / "alone.npz", "--out", tmp_path / "f", "--test-images", 200, "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "f" / "loss.png").exists() and "no loss.png" in proc.stdout


@pytest.mark.parametrize("args, says", [
    (["nowhere/checkpoint.npz"], "does not exist"),
    (["{ck}", "--test-images", "0"], "--test-images"),
])
def test_mistakes_exit_2_with_one_line(runs, args, says):
    _, folder = runs[2]
    proc = _plot(*[a.format(ck=folder / "checkpoint.npz") for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastvae: error:") and says in lines[0], proc.stderr


def test_a_plot_stopped_before_its_first_figure_leaves_no_empty_folder(runs, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or an error) while the figures are drawn: the folders this call made, still empty, are removed again;
    a folder that was there before is kept."""
    from fastvae import plot
    model, _ = runs[4]
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "checkpoint.npz")

    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(plot, "write_figures", interrupted)
    args = ["--test-images", "20", "--backend", "cpu", "--quiet"]
    assert plot.main([str(tmp_path / "run"), *args]) == 130
    assert not (tmp_path / "run" / "figures").exists()
    assert plot.main([str(tmp_path / "run"), "--out", str(tmp_path / "new" / "deeper"), *args]) == 130
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    assert plot.main([str(tmp_path / "run"), "--out", str(tmp_path / "mine"), *args]) == 130
    assert (tmp_path / "mine").is_dir()
    assert capsys.readouterr().err.count("interrupted") == 3


def test_manifold_codings_are_the_priors_quantiles():
    q, z = manifold_codings()
    assert q.shape == (20,) and z.shape == (400, 2)
    assert q[0] == pytest.approx(-1.6448536, abs=1e-6) and q[-1] == pytest.approx(1.6448536, abs=1e-6)
    assert np.allclose(q, -q[::-1]) and np.all(np.diff(q) > 0)
    assert NormalDist().cdf(q[7]) == pytest.approx(0.05 + 7 * 0.9 / 19)
    assert np.array_equal(z[:20, 0], q) and np.all(z[:20, 1] == q[0])   # row 0: z_1 fixed, z_0 along it
    assert np.array_equal(z[::20, 1], q)


def test_latent_dims_picks_the_widest_spread():
    mu = np.random.default_rng(0).normal(size=(500, 6)) * np.array([0.1, 2.0, 0.2, 0.1, 3.0, 0.5])
    dims, how = latent_dims(mu)
    assert dims == (1, 4) and "largest variance" in how
    assert latent_dims(mu[:, :2]) == ((0, 1), None)
    assert latent_dims(mu[:, 4:5]) == ((0,), None)


def test_interpolation_rows_start_and_end_at_the_reconstructions(runs):
    model, _ = runs[2]
    mnist = load_mnist()
    x, y = mnist.test_x[:300], mnist.test_y[:300]
    rows, originals, pairs = interpolation_rows(model, x, y, steps=7)
    assert rows.shape == (5, 7, 784) and originals.shape == (5, 2, 784) and len(pairs) == 5
    first_7, first_1 = int(np.flatnonzero(y == 7)[0]), int(np.flatnonzero(y == 1)[0])
    assert pairs[0] == (7, 1) and np.allclose(originals[0, 0] * 255, x[first_7])
    ends = model.reconstruct(x[[first_7, first_1]])
    np.testing.assert_allclose(rows[0, 0], ends[0], atol=1e-5)
    np.testing.assert_allclose(rows[0, -1], ends[1], atol=1e-5)
    assert np.abs(rows[0, 3] - rows[0, 0]).max() > 1e-3                  # the middle differs from the ends


def test_too_few_test_images_for_an_interpolation_is_a_message_not_an_error(runs, tmp_path):
    _, folder = runs[4]
    proc = _plot(folder, "--out", tmp_path / "one", "--test-images", 1, "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "no interpolation.png: it needs two test images, and there is 1" in proc.stdout
    assert not (tmp_path / "one" / "interpolation.png").exists()
    assert (tmp_path / "one" / "latent.png").exists()
    proc = _plot(folder, "--out", tmp_path / "two", "--test-images", 2, "--backend", "cpu")   # digits 7 and 2
    assert proc.returncode == 0 and (tmp_path / "two" / "interpolation.png").exists(), proc.stdout


def test_interpolation_pairs_come_from_the_datas_own_labels():
    """Pairs were MNIST's digit pairs only: EMNIST's letters 1..26 drew 4 rows of letters 1..9, labels 100..111 none
    (with advice to use more images), data without labels none (a fresh user's trial)."""
    from fastvae.plot import interpolation_pairs
    mnist_y = load_mnist().test_y[:300]
    assert [(a, b) for _, _, a, b in interpolation_pairs(mnist_y, 300)] == [(7, 1), (2, 0), (4, 9), (3, 8), (6, 5)]
    letters = np.array([5, 5, 17, 3, 26, 1, 17, 9, 12, 2, 8])
    chosen = interpolation_pairs(letters, len(letters))
    assert [(a, b) for _, _, a, b in chosen] == [(5, 17), (3, 26), (1, 9), (12, 2)]
    assert all(letters[i] == a and letters[j] == b for i, j, a, b in chosen)
    assert [(a, b) for _, _, a, b in interpolation_pairs(np.arange(100, 112), 12)] == [
        (100, 101), (102, 103), (104, 105), (106, 107), (108, 109)]
    assert interpolation_pairs(None, 7) == [(0, 1, None, None), (2, 3, None, None), (4, 5, None, None)]
    assert interpolation_pairs(None, 1) == [] and interpolation_pairs(np.array([4]), 1) == []
    # one label only (a data set of one class drew no interpolation: a researcher's trial): pairs in order, labelled
    assert interpolation_pairs(np.array([4, 4, 4, 4, 4]), 5) == [(0, 1, 4, 4), (2, 3, 4, 4)]


def test_without_labels_the_interpolation_pairs_test_images_in_order(runs, tmp_path):
    """It said "it pairs test images by their labels" and drew nothing for a data set without labels."""
    from fastvae.plot import write_figures
    model, _ = runs[2]
    notes = []
    write_figures(model, load_mnist().test_x[:300], None, tmp_path, notify=notes.append)
    assert not [n for n in notes if n.startswith("no interpolation.png")], notes
    _check_image(tmp_path / "interpolation.png", 500, 200)


@pytest.mark.parametrize("epochs", [1, 2, 7, 50])
def test_the_loss_curves_mark_whole_epochs_only(tmp_path, epochs):
    """A one-epoch run's loss.png marked 0.96, 0.98, 1.00, ... on its epoch axis (a fresh user's trial)."""
    from fastvae.figures import save_loss_curves
    history = [{"epoch": e, "train": {"total": 150.0 - e}, "test": {"total": 151.0 - e}} for e in range(1, epochs + 1)]
    ax = save_loss_curves(tmp_path / "loss.png", history).axes[0]
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert shown and all(t == round(t) for t in shown), shown
    assert (tmp_path / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("classes", [np.arange(10), np.arange(1, 27), np.arange(3, 15)])
def test_the_latent_scatter_gives_every_label_its_own_colour(tmp_path, classes):
    """EMNIST's letters are labelled 1..26: the scatter coloured labels 0-9 and painted every label above 9 in the
    tenth colour, under a legend of 0-9 (the data sets of any size, issue 16)."""
    from fastvae.figures import save_latent_scatter
    rng = np.random.default_rng(len(classes))
    labels = np.repeat(classes, 7)
    fig = save_latent_scatter(tmp_path / "latent.png", rng.normal(size=(len(labels), 2)), labels)
    dots = fig.axes[0].collections[0]
    colours = {tuple(np.round(c, 4)) for c in dots.to_rgba(dots.get_array())}
    assert len(colours) == len(classes), (len(colours), len(classes))
    legend = fig.legends[0].get_texts() if fig.legends else []
    assert [t.get_text() for t in legend] in ([], [str(c) for c in classes])
    assert (tmp_path / "latent.png").stat().st_size > 0


def test_a_figure_stopped_while_drawn_leaves_the_old_file_or_none(tmp_path):
    """A Ctrl-C during savefig left a truncated or empty PNG under the real name (3 in 20 tries of a fresh user):
    a figure is drawn into a temporary file and renamed. A real artist whose drawing is interrupted."""
    from matplotlib.artist import Artist

    from fastvae import figures

    class Interrupted(Artist):
        def draw(self, renderer):
            raise KeyboardInterrupt
    fig = figures._figure(2, 2)
    fig.add_artist(Interrupted())
    path = tmp_path / "samples.png"
    path.write_bytes(b"the previous figure")
    with pytest.raises(KeyboardInterrupt):
        figures._save(fig, path)
    assert path.read_bytes() == b"the previous figure" and sorted(tmp_path.iterdir()) == [path]


def test_non_square_images_keep_their_shape_and_one_image_keeps_its_labels(tmp_path):
    """The manifold drew 20 x 24 images square; one reconstruction made an 80-pixel figure that cut off its title
    and row labels (a fresh user's trial)."""
    from fastvae.figures import save_manifold, save_reconstructions
    q, _ = manifold_codings(side=4)
    fig = save_manifold(tmp_path / "manifold.png", np.random.default_rng(0).random((16, 20 * 24)), q, shape=(20, 24))
    box = fig.axes[0].get_window_extent()
    assert box.width / box.height == pytest.approx(24 / 20, rel=0.02), (box.width, box.height)
    ax = fig.axes[0]                                # the prior's centre is marked 0.00 (it read 0.06 at n = 20)
    assert "0.00" in [t.get_text() for t in ax.get_xticklabels()]
    centre = ax.get_xticks()[[t.get_text() for t in ax.get_xticklabels()].index("0.00")]
    assert centre == pytest.approx(1.5)             # (4 quantiles: z = 0 falls between the middle two images)
    one = np.random.default_rng(1).random((1, 64))
    fig = save_reconstructions(tmp_path / "reconstructions.png", one, one, shape=(8, 8))
    inside = fig.bbox.expanded(1.001, 1.001)
    for text in fig.texts + [fig._suptitle]:
        extent = text.get_window_extent()           # (as drawn into the file)
        assert inside.contains(extent.x0, extent.y0) and inside.contains(extent.x1, extent.y1), text.get_text()


def test_a_ctrl_c_python_drops_while_plotting_still_stops_the_tool(runs, tmp_path, monkeypatch, capsys):
    """fastvae-plot went on and exited 0 after a Ctrl-C whose KeyboardInterrupt Python dropped inside one of
    matplotlib's callbacks (2 of 14 tries of a fresh user, 'Exception ignored in ...'); it now says interrupted,
    status 130, as train's final figures do, without Python's traceback of the dropped interrupt. The signal lands
    in a real weakref.finalize callback."""
    from fastvae import plot
    from signals import a_dropped_interrupt
    ran = []
    monkeypatch.setattr(plot, "write_figures", lambda *a, **kw: ran.append(a_dropped_interrupt()))
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)     # Python's, which prints (pytest's warns)
    _, folder = runs[2]
    status = plot.main([str(folder), "--out", str(tmp_path / "figs"), "--backend", "cpu", "--test-images", "50"])
    assert ran == [None]
    err = capsys.readouterr().err
    assert status == 130 and err.strip().endswith("fastvae: interrupted")
    # and quietly: Python's report of the dropped interrupt (9 lines, 'Exception ignored in ...') was printed above it
    assert "Exception ignored" not in err and "Traceback" not in err, err


def test_a_ctrl_c_while_matplotlib_imports_waits_for_the_import(tmp_path):
    """A Ctrl-C inside matplotlib's import (a second into a run) left a compiled module half made: the run said
    "figures need matplotlib (initialization failed)", trained on, and aborted at exit with status 134 (a fresh
    user's trial). The import now completes and the Ctrl-C is raised after it. A real signal, sent from inside a
    stand-in matplotlib's own import, in a fresh process."""
    package = tmp_path / "matplotlib"
    package.mkdir()
    (package / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                         "time.sleep(0.2)\nDONE = True\n")
    (package / "figure.py").write_text("Figure = object\n")
    code = ("import sys\nfrom fastvae.figures import matplotlib_missing\ntry:\n    matplotlib_missing()\n"
            "except KeyboardInterrupt:\n    print('interrupted after the import:', sys.modules['matplotlib'].DONE)\n")
    import os
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.stdout.strip() == "interrupted after the import: True", proc.stdout + proc.stderr


@pytest.mark.parametrize("shape", [(28, 28), (4, 200), (40, 1), (3, 100)])
def test_samples_of_any_image_shape_fill_a_readable_grid(tmp_path, shape):
    """60 samples of 4 x 200 or 40 x 1 pixels in a fixed 6 x 10 grid were a thin stripe across the figure (a
    researcher's trial): the grid's rows and columns follow the images' shape (the seed's 6 x 10 for square ones),
    the figure its aspect, within a factor 3 either way, at least 200 pixels each way."""
    import matplotlib.image as mpimg
    from fastvae import figures
    images = np.random.default_rng(0).random((60, shape[0] * shape[1]))
    figures.save_digits(tmp_path / "s.png", images, shape=shape)
    img = mpimg.imread(tmp_path / "s.png")
    h, w = img.shape[:2]
    assert 1 / 3 < w / h < 3 and min(h, w) >= 200, img.shape
    dark = (img[..., :3].mean(axis=2) < 0.9)
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    assert (rows[-1] - rows[0]) > 0.5 * h and (cols[-1] - cols[0]) > 0.5 * w    # the grid fills it both ways
    if shape == (28, 28):
        assert figures.grid_layout(60, shape) == (6, 10)
