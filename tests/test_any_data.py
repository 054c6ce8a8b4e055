"""Any data set (issue 15): the input width and image shape come from the data, through the library and the CLI.

The second real data set is scikit-learn's 8 x 8 handwritten digits (shipped inside scikit-learn, no download).
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastvae import VAE
from fastvae.data import embedded_dir
from fastvae.errors import UserError

SMALL = dict(hidden=(32,), latent=3, backend="cpu", batch_size=50, threads=1)


def tool(name, *args):
    return subprocess.run([sys.executable, "-m", f"fastvae.{name}", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("shape,image_shape", [((32, 32), (32, 32)), ((64,), None), ((3072,), None),
                                               ((16, 24), (16, 24))])
def test_a_new_model_takes_the_width_of_its_data_and_keeps_it(tmp_path, shape, image_shape):
    rand = np.random.default_rng(0)
    X = rand.uniform(0, 1, (120, *shape)).astype(np.float32)
    model = VAE(**SMALL).fit(X, epochs=1)
    width = int(np.prod(shape))
    assert model.input_width == width and model.image_shape == image_shape
    assert model.sample(3).shape == (3, width) and model.reconstruct(X[:4]).shape == (4, width)
    assert model.layout.layers[0].fan_in == width and model.layout.layers[-1].fan_out == width
    model.save(tmp_path / "m.npz")
    loaded = VAE.load(tmp_path / "m.npz", backend="cpu")
    assert loaded.input_width == width and loaded.image_shape == image_shape
    assert loaded.evaluate(X[:20]) == model.evaluate(X[:20])
    with pytest.raises(UserError, match=f"has rows of 784 values .* but the model takes {width}") as info:
        loaded.encode(np.zeros((2, 784), np.float32))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="but the model takes"):
        loaded.fit(np.zeros((60, 784), np.float32), epochs=1)


def test_an_untrained_model_is_784_wide_as_before_and_a_checkpoint_without_a_width_loads_as_784(tmp_path):
    model = VAE(**SMALL)
    assert model.input_width == 784 and model.image_shape == (28, 28)
    from fastvae import checkpoint
    from fastvae.config import Config
    cfg = Config(hidden=(32,), latent=3).to_dict()
    del cfg["input_width"], cfg["image_shape"]            # what a checkpoint written before issue 15 holds
    loaded = Config.from_dict(cfg)
    assert loaded.input_width == 784 and loaded.image_shape == (28, 28)
    assert checkpoint is not None


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is in the test extra")
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)              # 1797 images of 8 x 8, values 0..16
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x_train=x[:1500], y_train=d.target[:1500], x_test=x[1500:], y_test=d.target[1500:])
    return path


def test_sklearn_digits_train_save_load_evaluate_and_plot_through_the_cli(tmp_path, digits_npz):
    out = tmp_path / "run"
    proc = tool("train", "--backend", "cpu", "--data", str(digits_npz), "--hidden", "64", "64", "--latent", "2",
                "--batch-size", "50", "--epochs", "3", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["input_width"] == 64 and m["config"]["image_shape"] == [8, 8] and m["test_images"] == 297
    for name in ("samples.png", "reconstructions.png", "latent.png", "manifold.png", "loss.png"):
        assert (out / name).stat().st_size > 1000, name
    test_loss = m["epochs"][-1]["test"]["total"]
    assert 0 < test_loss < 64 * np.log(2), "no better than a coin per pixel"
    ev = tool("evaluate", str(out), "--backend", "cpu", "--data", str(digits_npz), "--k", "1", "10")
    assert ev.returncode == 0, ev.stderr
    pl = tool("plot", str(out), "--backend", "cpu", "--data", str(digits_npz), "--out", str(tmp_path / "fig"))
    assert pl.returncode == 0, pl.stderr
    mnist = str(embedded_dir())                                                     # 784 values a row
    wrong = tool("evaluate", str(out), "--backend", "cpu", "--data", mnist, "--test-images", "50")
    assert wrong.returncode == 2 and "has rows of 784 values" in wrong.stderr and "takes 64" in wrong.stderr
    assert f"--data {digits_npz}" in wrong.stderr and "pass arrays" not in wrong.stderr     # the CLI's advice
    assert wrong.stderr.count("\n") == 1


def test_feature_rows_from_one_array_train_with_a_held_out_split_and_the_figures_that_make_sense(tmp_path):
    rows = np.random.default_rng(4).uniform(0, 1, (210, 5)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    out = tmp_path / "run"
    proc = tool("train", "--backend", "cpu", "--data", str(tmp_path / "rows.npy"), "--hidden", "16", "--latent",
                "2", "--batch-size", "30", "--epochs", "1", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_images"] == 180 and m["test_images"] == 30 and m["config"]["image_shape"] is None
    assert (out / "latent.png").exists() and not (out / "samples.png").exists()
    # each figure skipped says so in one line (the README's promise; the training tool said nothing: a fresh user)
    assert "no samples, reconstructions, manifold or interpolation figures: the data are feature rows" in proc.stdout
    assert "wrote " not in proc.stdout
    assert "180 training and 30 test rows from" in proc.stdout       # (it said "images" of feature rows)


@pytest.mark.parametrize("make,extra,phrase", [
    (lambda d: np.save(d / "x.npy", np.zeros((0, 4), np.uint8)), [], "is empty"),
    (lambda d: np.save(d / "x.npy", np.zeros((20, 4), np.uint8)), ["--test-fraction", "1.5"], "between 0 and 1"),
    (lambda d: np.save(d / "x.npy", np.zeros((20, 4), np.uint8)), ["--test-fraction", "0"], "between 0 and 1"),
    (lambda d: np.savez(d / "x.npz", x_train=np.zeros((20, 4)), x_test=np.zeros((5, 4)), y_train=np.zeros(19, int),
                        y_test=np.zeros(5, int)), [], "has 20 images but"),
])
def test_bad_data_is_one_line_and_exit_status_2(tmp_path, make, extra, phrase):
    make(tmp_path)
    path = next(tmp_path.glob("x.np*"))
    proc = tool("train", "--backend", "cpu", "--data", str(path), "--epochs", "1", "--out", str(tmp_path / "o"),
                *extra)
    assert proc.returncode == 2 and phrase in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_resuming_with_data_of_another_width_is_one_line(tmp_path):
    """The checkpoint keeps the width: a resumed run's data must have it (its --data is part of the run and cannot
    be changed, so the way to meet another width is a data file replaced in place)."""
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(5).uniform(0, 1, (80, 6)).astype(np.float32))
    out = tmp_path / "run"
    first = tool("train", "--backend", "cpu", "--data", str(data), "--hidden", "8", "--latent", "2",
                 "--batch-size", "20", "--epochs", "1", "--threads", "1", "--out", str(out))
    assert first.returncode == 0, first.stderr
    np.save(data, np.random.default_rng(5).uniform(0, 1, (80, 7)).astype(np.float32))
    again = tool("train", "--resume", str(out), "--epochs", "2")
    assert again.returncode == 2 and "has rows of 7 values" in again.stderr and "takes 6" in again.stderr


def test_the_issues_reproduction_an_mnist_format_set_with_other_pixels_trains_with_a_notice(tmp_path):
    def idx(arr):
        arr = np.asarray(arr, np.uint8)
        return np.array([0x0800 + arr.ndim, *arr.shape], ">u4").tobytes() + arr.tobytes()
    rand = np.random.default_rng(6)
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(idx(rand.integers(0, 256, (n, 28, 28))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(rand.integers(0, 10, n)))
    proc = tool("train", "--backend", "cpu", "--data", str(tmp_path), "--train-images", "600", "--test-images",
                "200", "--epochs", "1", "--hidden", "16", "--latent", "2", "--batch-size", "50", "--no-plots",
                "--threads", "1", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if "none of the checksums fastvae knows" in line]
    assert len(notices) == 1, proc.stderr



def _report(proc, path):
    """The JSON an evaluate subprocess wrote to `path` (its stderr on failure), its timing left out."""
    assert proc.returncode == 0, proc.stderr
    report = json.loads(path.read_text())
    del report["seconds"]
    return report


def _pixels(folder):
    """The figures drawn from the test images (the latent scatter, the reconstructions) as pixel arrays."""
    import matplotlib.image as mpimg
    return [mpimg.imread(folder / name) for name in ("latent.png", "reconstructions.png")]


def _one_array_run(tmp_path):
    """A run trained on one uint8 array of 6 x 5 images split by --test-fraction 0.25 and sliced by --test-images 30:
    a width and test set that only the run's record reproduces (the embedded MNIST's are neither)."""
    data = tmp_path / "data" / "shapes.npy"
    data.parent.mkdir()
    np.save(data, np.random.default_rng(7).integers(0, 256, (160, 6, 5), dtype=np.uint8))
    out = tmp_path / "run"
    proc = tool("train", "--backend", "cpu", "--data", str(data), "--test-fraction", "0.25", "--test-images", "30",
                "--hidden", "16", "--latent", "2", "--batch-size", "40", "--epochs", "1", "--threads", "1",
                "--no-plots", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return data, out


def test_evaluate_and_plot_without_data_use_the_runs_own_data_set_and_split(tmp_path):
    """The new user's bug: a run trained with --data was evaluated and drawn on the embedded MNIST (784 values a row,
    exit 2). Now its metrics.json's data and split are the default: the same numbers and figures as an explicit
    --data with the run's split, and the one-sample ELBO is the test loss the run recorded, to the bit."""
    data, out = _one_array_run(tmp_path)
    recorded = json.loads((out / "metrics.json").read_text())
    own = tool("evaluate", str(out), "--backend", "cpu", "--k", "1", "5", "--json", str(tmp_path / "own.json"))
    report = _report(own, tmp_path / "own.json")
    assert f"30 test images of {data}" in own.stdout.splitlines()[0]       # the line names the data it used
    assert report["images"] == 30 and report["data"].startswith(str(data))
    assert report["elbo"] == {**recorded["epochs"][-1]["test"], "constant": 0.0}    # the run's own test images
    explicit = tool("evaluate", str(out), "--backend", "cpu", "--k", "1", "5", "--data", str(data),
                    "--test-fraction", "0.25", "--test-images", "30", "--json", str(tmp_path / "explicit.json"))
    assert report == _report(explicit, tmp_path / "explicit.json")
    same_file = tool("evaluate", str(out), "--backend", "cpu", "--k", "1", "5", "--data", str(data), "--json",
                     str(tmp_path / "same.json"))                          # the run's own file: its split too
    assert report == _report(same_file, tmp_path / "same.json")
    pytest.importorskip("matplotlib")
    drawn = tool("plot", str(out), "--backend", "cpu", "--quiet")
    assert drawn.returncode == 0, drawn.stderr
    again = tool("plot", str(out), "--backend", "cpu", "--quiet", "--data", str(data), "--test-fraction", "0.25",
                 "--test-images", "30", "--out", str(tmp_path / "explicit"))
    assert again.returncode == 0, again.stderr
    for mine, theirs in zip(_pixels(out / "figures"), _pixels(tmp_path / "explicit")):
        assert np.array_equal(mine, theirs)


def test_a_run_whose_data_is_gone_says_so_in_one_line_and_takes_its_new_place(tmp_path):
    """The recorded data path no longer exists: one line naming it and --data, exit 2, nothing written (no empty
    figures/); the file passed from where it is now is split as the run split it."""
    data, out = _one_array_run(tmp_path)
    recorded = json.loads((out / "metrics.json").read_text())
    moved = tmp_path / "moved.npy"
    data.rename(moved)
    for name in ("evaluate", "plot"):
        proc = tool(name, str(out), "--backend", "cpu", "--k" if name == "evaluate" else "--quiet",
                    *(["1"] if name == "evaluate" else []))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("fastvae: error:") and str(data) in proc.stderr, proc.stderr
        assert "no longer exists" in proc.stderr and "--data PATH" in proc.stderr, proc.stderr
    assert not (out / "figures").exists()
    found = tool("evaluate", str(out), "--backend", "cpu", "--k", "1", "--data", str(moved), "--json",
                 str(tmp_path / "moved.json"))
    report = _report(found, tmp_path / "moved.json")
    assert report["images"] == 30 and report["elbo"] == {**recorded["epochs"][-1]["test"], "constant": 0.0}


def test_data_of_the_wrong_width_names_the_runs_data_and_a_failed_plot_leaves_no_folder(tmp_path):
    """An explicit --data of another width: the command line's advice is --data with the run's recorded path (not
    the library's "pass arrays of shape"), and plot leaves no new empty figures/ (or --out) folder behind."""
    data, out = _one_array_run(tmp_path)
    mnist = str(embedded_dir())
    for name, extra in (("evaluate", ["--k", "1"]), ("plot", []), ("plot", ["--out", str(tmp_path / "a" / "b")])):
        proc = tool(name, str(out), "--backend", "cpu", "--data", mnist, "--test-images", "20", *extra)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "has rows of 784 values" in proc.stderr and "takes 30 (6x5 images)" in proc.stderr, proc.stderr
        assert f"--data {data}" in proc.stderr and "pass arrays" not in proc.stderr, proc.stderr
    assert not (out / "figures").exists() and not (tmp_path / "a").exists()


def test_feature_rows_784_wide_are_rows_not_images(tmp_path):
    """Rows exactly as wide as MNIST's images were taken for 28 x 28 images (figures drawn, image_shape recorded),
    rows of 785 were not (a researcher's trial): a data set of rows is rows at any width."""
    data = tmp_path / "features.npy"
    np.save(data, np.random.default_rng(0).random((120, 784)).astype(np.float32))
    out = tmp_path / "run"
    proc = tool("train", "--backend", "cpu", "--data", str(data), "--hidden", "8", "--latent", "2", "--batch-size",
                "40", "--epochs", "1", "--threads", "1", "--no-plots", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert " test rows from " in proc.stdout.splitlines()[0], proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["image_shape"] is None and metrics["config"]["input_width"] == 784
    proc = tool("evaluate", str(out), "--backend", "cpu", "--k", "1")
    assert proc.returncode == 0 and " test rows of " in proc.stdout.splitlines()[0], proc.stdout + proc.stderr


def test_resuming_on_another_data_set_in_the_moved_ones_place_is_refused(tmp_path):
    """--data gives a moved data set its new place; another file took it without a word (a researcher's trial): the
    run records its training set's fingerprint and a resume compares it."""
    data, out = _one_array_run(tmp_path)
    moved = data.with_name("moved.npy")
    data.rename(moved)
    other = data.with_name("other.npy")
    np.save(other, np.random.default_rng(8).integers(0, 256, (160, 6, 5), dtype=np.uint8))
    proc = tool("train", "--resume", str(out), "--epochs", "2", "--data", str(other), "--quiet")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "is not the one this run was trained on" in lines[0] and "--data PATH" in lines[0]
    assert json.loads((out / "metrics.json").read_text())["epochs"][-1]["epoch"] == 1     # nothing trained
    proc = tool("train", "--resume", str(out), "--epochs", "2", "--data", str(moved), "--quiet")
    assert proc.returncode == 0, proc.stderr                 # its own data, moved: taken


def test_a_model_fitted_on_rows_of_images_is_drawn_in_the_datas_shape(tmp_path):
    """The library's fit of load_data's train_x (rows) gives a model without an image shape; plot with --data of
    those images said "the data are feature rows" (a researcher's trial): it draws them in the data's (h, w)."""
    pytest.importorskip("matplotlib")
    from fastvae import VAE
    from fastvae.data import load_data
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(1).integers(0, 256, (120, 6, 5), dtype=np.uint8))
    d = load_data(images)
    model = VAE(hidden=(8,), latent=2, backend="cpu", batch_size=40, threads=1)
    model.fit(d.train_x, epochs=1)
    assert model.image_shape is None and d.image_shape == (6, 5)
    model.save(tmp_path / "model.npz")
    proc = tool("plot", str(tmp_path / "model.npz"), "--data", str(images), "--out", str(tmp_path / "figures"))
    assert proc.returncode == 0, proc.stderr
    assert "feature rows" not in proc.stdout + proc.stderr
    assert (tmp_path / "figures" / "samples.png").is_file() and (tmp_path / "figures" / "reconstructions.png").is_file()


def test_uint8_images_and_the_same_images_as_floats_train_to_the_same_bits():
    """uint8 pixels were scaled by float32(1/255), which differs from (x / 255).astype(float32) in 126 of the 256
    values: the same images as uint8 and as floats trained to other bits and evaluated to other numbers (an auditor's
    trial). The gather divides, correctly rounded, so both are one computation."""
    from fastvae.data import load_mnist
    x = load_mnist().train_x[:600]
    runs = []
    for images in (x, (x / 255.0).astype(np.float32)):
        model = VAE(hidden=(48, 24), latent=4, batch_size=50, backend="cpu", threads=1, seed=3)
        model.fit(images, epochs=1)
        runs.append((model.state.params.copy(), model.evaluate(images)["total"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
