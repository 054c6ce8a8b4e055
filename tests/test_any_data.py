"""Any data set (issue 15): the input width and image shape come from the data, through the library and the CLI.

The second real data set is scikit-learn's 8 x 8 handwritten digits (shipped inside scikit-learn, no download).
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastvae import VAE
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
    wrong = tool("evaluate", str(out), "--backend", "cpu", "--test-images", "50")      # the embedded MNIST: 784
    assert wrong.returncode == 2 and "has rows of 784 values" in wrong.stderr and "takes 64" in wrong.stderr
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
    assert "feature rows, not images" in proc.stdout + proc.stderr or not (out / "samples.png").exists()


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
    assert "matches none of the checksums fastvae knows" in proc.stderr
