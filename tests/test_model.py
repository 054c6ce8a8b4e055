"""The public VAE class: training, inference, persistence and its answers to bad input (real files, real runs)."""
import decimal
import fractions
import gc
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tolerances import TOL
from fastvae import VAE, UserError
from fastvae.data import load_mnist

SMALL = dict(hidden=(48, 24), latent=4, batch_size=50, backend="cpu")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def trained(mnist):
    model = VAE(seed=3, **SMALL)
    model.fit(mnist.train_x[:1000], epochs=2, validation=mnist.test_x[:200])
    return model


def test_fit_lowers_the_loss_and_keeps_a_history(mnist, trained):
    first, second = trained.history
    assert (first["epoch"], second["epoch"], trained.epoch) == (1, 2, 2)
    assert trained.steps == 2 * 1000 // 50
    assert second["train"]["total"] < first["train"]["total"]
    assert second["test"]["total"] < first["test"]["total"]
    t = second["test"]
    assert t["total"] == pytest.approx(t["reconstruction"] + t["kl"]) and t["kl"] > 0
    assert trained.evaluate(mnist.test_x[:200]) == t, "evaluation uses fixed noise: same model, same number"


def test_uint8_and_float_inputs_of_either_shape_train_identically(mnist):
    x8 = mnist.train_x[:200]
    xf = (x8.astype(np.float64) / 255.0).reshape(-1, 28, 28)
    a, b = VAE(**SMALL).fit(x8, epochs=1), VAE(**SMALL).fit(xf, epochs=1)
    # the cpu kernel turns uint8 into floats as v * float32(1/255): within one rounding of the float input
    np.testing.assert_allclose(b.state.params, a.state.params, rtol=0, atol=1e-5)


def test_an_epoch_ends_with_a_partial_batch_and_sees_every_image(mnist):
    model = VAE(**SMALL).fit(mnist.train_x[:130], epochs=2)     # 50 + 50 + 30 rows per epoch
    assert model.steps == 6 and model.epoch == 2
    assert np.isfinite(model.history[-1]["train"]["total"])


def test_encode_decode_sample_reconstruct(mnist, trained):
    x = mnist.test_x[:157]                       # not a multiple of the batch: the last chunk is partial
    mu, gamma = trained.encode(x)
    assert mu.shape == gamma.shape == (157, 4) and mu.dtype == np.float32
    # rows are independent (BLAS may sum in another order for another row count: float32 rounding only)
    np.testing.assert_allclose(trained.encode(x[100:101])[0], mu[100:101], rtol=0,
                               atol=TOL["float32"] * np.abs(mu).max())
    probs = trained.decode(mu)
    assert probs.shape == (157, 784) and probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_array_equal(trained.reconstruct(x), probs)
    # training made the reconstructions better than those of the same model untrained
    target = x.astype(np.float32) / 255
    untrained = VAE(seed=3, **SMALL).reconstruct(x)
    assert np.mean((probs - target) ** 2) < 0.8 * np.mean((untrained - target) ** 2)
    s1, s2 = trained.sample(60, seed=1), trained.sample(60, seed=2)
    assert s1.shape == (60, 784)
    np.testing.assert_array_equal(s1, trained.sample(60, seed=1))
    assert not np.array_equal(s1, s2)
    # the codings are fastvae.rng's draw (the specification; Numba's fill_normals draws them since 2026-12-08)
    from fastvae import rng
    for n, seed in ((1, 0), (7, 2**63 - 1), (61, 12345678901)):
        expected = trained.decode(rng.normals(seed, rng.STREAM_SAMPLE, 0, n, trained.config.latent))
        np.testing.assert_array_equal(trained.sample(n, seed=seed), expected)


def test_the_weights_are_copies_that_compute_what_encode_and_decode_do(mnist, trained):
    """weights() (the parameters were reachable only through model.state, undocumented: a book reader's trial): the
    forward pass written by hand in float64 from them gives encode's mu and logvar and decode's logits."""
    layers = trained.weights()
    assert [w.shape for w, _ in layers] == [(784, 48), (48, 24), (24, 8), (4, 24), (24, 48), (48, 784)]
    assert all(b.shape == (w.shape[1],) and w.dtype == b.dtype == np.float32 for w, b in layers)

    def elu(z):
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    x = mnist.test_x[:7].astype(np.float64) / 255
    h = x
    for w, b in layers[:2]:
        h = elu(h @ w + b)
    heads = h @ layers[2][0] + layers[2][1]
    mu, logvar = trained.encode(mnist.test_x[:7])
    scale = np.abs(heads).max()
    np.testing.assert_allclose(mu, heads[:, :4], rtol=0, atol=TOL["float32_step"] * scale)
    np.testing.assert_allclose(logvar, heads[:, 4:], rtol=0, atol=TOL["float32_step"] * scale)
    h = mu.astype(np.float64)
    for w, b in layers[3:5]:
        h = elu(h @ w + b)
    logits = h @ layers[5][0] + layers[5][1]
    np.testing.assert_allclose(trained.decode_logits(mu), logits, rtol=0,
                               atol=TOL["float32_step"] * np.abs(logits).max())
    layers[0][0][...] = 0                               # a copy: the model is unchanged
    np.testing.assert_array_equal(trained.encode(mnist.test_x[:7])[0], mu)


def test_one_image_without_its_batch_axis_gets_the_way_to_add_it(mnist, trained):
    """One (28, 28) image reads as 28 rows of 28 values: the line said to pass (n, 784) or (n, 28, 28), not how (a
    book reader's trial)."""
    with pytest.raises(UserError, match=r"has rows of 28 values .* \(for one image, X\[None\]\)$"):
        trained.encode(mnist.test_x[0].reshape(28, 28))


def test_a_models_backend_equals_its_name():
    """`model.backend == "cpu"` was False (a Backend, not its name): a comparison a program writes silently failed."""
    model = VAE(**SMALL)
    assert model.backend == "cpu" and "cpu" == model.backend and model.backend != "gpu"
    assert model.backend in ("cpu", "cpu-bf16") and model.backend.name == "cpu" and model.backend == model.backend
    assert {model.backend: 1}["cpu"] == 1 and model.backend != VAE(**{**SMALL, "backend": "reference"}).backend
    assert repr(model.backend) == "<fastvae backend 'cpu' (float32 arrays)>"


def test_an_overflow_in_inference_is_an_error_not_nan(mnist):
    """Codings of 3e38 (finite in float32, so accepted) decoded to NaN "probabilities", and a checkpoint whose logvar
    is huge evaluated to a NaN loss, without a word (a numerics review; the float64 reference stays finite): one
    line each, naming the overflow."""
    model = VAE(seed=3, **SMALL).fit(mnist.train_x[:200], epochs=1)
    z = np.zeros((2, 4))
    z[0, 0] = 3e38
    with pytest.raises(UserError, match=r"decoding these codings overflowed float32 \(the largest \|z\| is 3e\+38"):
        model.decode(z)
    assert np.isfinite(model.decode(np.ones((2, 4)) * 1e3)).all()      # large, not absurd: probabilities 0 and 1
    model.state.weights[2][1][4:] = 176.0                              # the heads' logvar bias: exp(88) ~ 1.6e38
    with pytest.raises(UserError, match="the loss on these images is not finite"):
        model.evaluate(mnist.test_x[:20])


def test_a_callback_that_cannot_take_model_and_record_is_refused_before_training(mnist):
    """callback=lambda r: ... trained a whole epoch, then raised Python's TypeError (a fresh user's trial)."""
    model = VAE(**SMALL)
    with pytest.raises(UserError, match=r"callback must take two arguments, \(model, record\); it takes \(r\)"):
        model.fit(mnist.train_x[:100], epochs=1, callback=lambda r: None)
    assert model.steps == 0
    seen = []
    model.fit(mnist.train_x[:100], epochs=1, callback=lambda *args: seen.append(len(args)))
    model.fit(mnist.train_x[:100], epochs=1, callback=lambda m, r, extra=1: seen.append(2))
    assert seen == [2, 2]


def test_a_call_that_does_not_fit_a_method_is_a_user_error_too(mnist):
    """fit(X, y=...) was Python's plain TypeError, where VAE(foo=1) is also a UserError (a service's trial)."""
    model = VAE(**SMALL)
    with pytest.raises(UserError, match=r"VAE.fit\(\): got an unexpected keyword argument 'y'") as info:
        model.fit(mnist.train_x[:100], y=[1])
    assert isinstance(info.value, TypeError) and model.steps == 0
    with pytest.raises(UserError, match=r"VAE.encode\(\): too many positional arguments"):
        model.encode(mnist.train_x[:2], 5)


def test_fit_with_labels_says_it_takes_none(mnist):
    """fit(X, y), as Keras takes it, put the labels into epochs ("epochs must be a whole number >= 0, got
    array([...])": a book reader's trial): one line saying fit takes no labels; the model unchanged."""
    model = VAE(**SMALL)
    with pytest.raises(UserError, match="fit takes images only, no labels"):
        model.fit(mnist.train_x[:100], mnist.train_y[:100])
    assert model.epoch == 0 and model.steps == 0


def test_the_reference_backend_gives_the_same_model(mnist):
    """The public class on the float64 reference and on the cpu kernels: one epoch lands at the same loss."""
    x = mnist.train_x[:300]
    cpu = VAE(seed=5, **SMALL).fit(x, epochs=1)
    ref = VAE(seed=5, **{**SMALL, "backend": "reference"}).fit(x, epochs=1)
    # float32 against float64 over 6 Adam steps: losses agree to ~1e-4 relative (the step table's tolerance)
    assert cpu.history[0]["train"]["total"] == pytest.approx(ref.history[0]["train"]["total"],
                                                              rel=TOL["float32_step"])


def test_save_load_round_trip_and_resume_bit_exact(tmp_path, mnist):
    x = mnist.train_x[:300]
    straight = VAE(seed=7, **SMALL).fit(x, epochs=2)
    first = VAE(seed=7, **SMALL).fit(x, epochs=1)
    first.save(tmp_path / "ck.npz")
    resumed = VAE.load(tmp_path / "ck.npz", backend="cpu")
    assert (resumed.epoch, resumed.steps, resumed.config) == (1, 6, first.config)
    np.testing.assert_array_equal(resumed.encode(x[:10])[0], first.encode(x[:10])[0])
    resumed.fit(x, epochs=1)
    for name in ("params", "m", "v"):
        np.testing.assert_array_equal(getattr(resumed.state, name), getattr(straight.state, name), err_msg=name)
    assert list(tmp_path.iterdir()) == [tmp_path / "ck.npz"], "no temporary file is left behind"


def test_save_and_load_take_a_training_runs_folder(tmp_path, trained, mnist):
    """VAE.load(folder) reads the folder's checkpoint.npz (what `python -m fastvae.train --out` writes, and what
    fastvae.evaluate takes), and save(folder) writes it (it said "Is a directory ... free some space": a fresh
    user); a folder without one is one UserError naming the file."""
    run = tmp_path / "run"
    run.mkdir()
    trained.save(run)
    assert [p.name for p in run.iterdir()] == ["checkpoint.npz"]
    with pytest.raises(UserError, match="there is no such folder; make it first, or name a file"):
        trained.save(f"{tmp_path}/new/")                # (Path drops the slash: it wrote a file named new)
    assert not (tmp_path / "new").exists()
    back = VAE.load(run, backend="cpu")
    np.testing.assert_array_equal(back.encode(mnist.test_x[:5])[0], trained.encode(mnist.test_x[:5])[0])
    assert "2 epochs, " in repr(back) and "1 epoch," in repr(VAE(seed=1, **SMALL).fit(mnist.train_x[:200], epochs=1))
    with pytest.raises(UserError, match="checkpoint.npz"):
        VAE.load(tmp_path, backend="cpu")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, mnist):
    model = VAE(**SMALL)
    path = tmp_path / "ck.npz"
    model.save(path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="cannot write a checkpoint"):
        model.save(tmp_path / "missing-folder" / "ck.npz")
    folder = tmp_path / "a-folder.npz"
    (folder / "checkpoint.npz" / "in-the-way").mkdir(parents=True)    # (save(folder) writes its checkpoint.npz)
    with pytest.raises(UserError, match="nothing was overwritten"):
        model.save(folder)                  # the rename onto a folder fails: the temporary file must be cleaned up
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder.npz", "ck.npz"]
    assert [p.name for p in folder.iterdir()] == ["checkpoint.npz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other npz", "missing"])
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "ck.npz"
    VAE(**SMALL).save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "other npz":
        np.savez(path, params=np.zeros(3, np.float32))
    else:
        path = tmp_path / "nothing-here.npz"
    with pytest.raises(UserError) as err:
        VAE.load(path, backend="cpu")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_the_activation_is_kept_and_a_checkpoint_from_before_it_loads_as_elu(tmp_path, monkeypatch):
    from fastvae.config import Config
    model = VAE(activation="tanh", **SMALL)
    model.save(tmp_path / "tanh.npz")
    assert VAE.load(tmp_path / "tanh.npz", backend="cpu").config.activation == "tanh"
    # a checkpoint written before the field existed: its config JSON has no "activation" (checksum and all)
    to_dict = Config.to_dict
    monkeypatch.setattr(Config, "to_dict", lambda c: {k: v for k, v in to_dict(c).items() if k != "activation"})
    old = VAE(**SMALL)
    old.save(tmp_path / "old.npz")
    monkeypatch.undo()
    with np.load(tmp_path / "old.npz") as f:
        assert "activation" not in str(f["config"])
    loaded = VAE.load(tmp_path / "old.npz", backend="cpu")
    assert loaded.config.activation == "elu" and loaded.config == old.config
    np.testing.assert_array_equal(loaded.state.params, old.state.params)


def test_a_checkpoint_whose_arrays_do_not_fit_its_architecture_is_refused(tmp_path):
    from fastvae import checkpoint
    path = tmp_path / "ck.npz"
    VAE(**SMALL).save(path)
    ck = checkpoint.load(path)
    ck.params = ck.params[:-1]                   # a well-formed file, checksum and all, of the wrong size
    checkpoint.save(path, ck)
    with pytest.raises(UserError, match="architecture"):
        VAE.load(path, backend="cpu")


def test_a_flipped_byte_anywhere_in_the_arrays_fails_the_checksum(tmp_path):
    from fastvae import checkpoint
    path = tmp_path / "ck.npz"
    VAE(**SMALL).save(path)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["m"] = arrays["m"].copy()
    arrays["m"][7] = 1.0                         # rewritten with valid zip CRCs: only the checksum can tell
    np.savez(path, **arrays)
    with pytest.raises(UserError, match="checksum"):
        checkpoint.load(path)


@pytest.mark.parametrize("X,phrase", [
    (np.full((10, 784), 1.5), "outside"),
    (np.full((10, 784), np.nan), "NaN"),
    (np.zeros(783), "not a batch"),          # any width trains (test_any_data.py); a 1-D array does not
    (np.zeros((0, 784)), "empty"),
    # binarized images as uint8 0/1 were read as 0..255 (nearly black) and trained on without a word
    (np.eye(10, 784, dtype=np.uint8), "uint8 with no value above 1, but integer pixels are read as 0..255"),
    # and so were other integers of 0 and 1, as floats: a row's result then hung on the other rows of its call
    (np.eye(10, 784, dtype=np.int64), "int64 with no value above 1, but integer pixels are read as 0..255"),
])
def test_bad_training_arrays_get_one_line_errors(X, phrase):
    with pytest.raises(UserError, match=phrase) as err:
        VAE(**SMALL).fit(X, epochs=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs,phrase", [
    (dict(epochs=-1), "epochs"), (dict(batch_size=-1), "batch_size"), (dict(batch_size=11), "larger than"),
])
def test_bad_fit_settings_get_one_line_errors(kwargs, phrase):
    with pytest.raises(UserError, match=phrase):
        VAE(**SMALL).fit(np.zeros((10, 784), np.uint8), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(hidden=(0,)), dict(latent=-2), dict(lr=0.0), dict(backend="tpu"),
                                    dict(activation="sigmoid"), dict(precision="fp16"), dict(precision=16),
                                    dict(precision="bf16", backend="reference"), dict(precision="bf16", backend="gpu"),
                                    dict(precision="fp32", backend="cpu-bf16")])
def test_bad_model_settings_get_one_line_errors(kwargs):
    with pytest.raises(UserError) as err:
        VAE(**{**SMALL, **kwargs})
    assert "\n" not in str(err.value)


def test_hidden_widths_from_any_iterable_are_read_once_and_unordered_ones_refused(tmp_path):
    """A generator for `hidden` was read by the check and then found empty: a model of no hidden layer, built without
    a word, whose checkpoint could not be loaded (an API trial). It is read once, in order; a set (no order of
    layers) is refused in one line, as an empty iterator is."""
    model = VAE(**{**SMALL, "hidden": (h for h in (48, 24))})
    assert model.config.hidden == (48, 24) and [w.shape for w, _ in model.weights()][:2] == [(784, 48), (48, 24)]
    model.save(tmp_path / "g.npz")
    assert VAE.load(tmp_path / "g.npz").config.hidden == (48, 24)
    for bad in ({48, 24}, frozenset({8}), {48: 1}, iter(()), (h for h in ()), (48, "24"), 48):
        with pytest.raises(UserError, match="^hidden widths must be positive integers, got") as err:
            VAE(**{**SMALL, "hidden": bad})
        assert "\n" not in str(err.value)


def test_an_input_width_alone_hears_that_the_image_shape_is_the_default(mnist):
    """VAE(input_width=64) was refused naming image_shape (28, 28), which the user never passed (an API trial)."""
    with pytest.raises(UserError, match=r"^image_shape \(28, 28\) \(MNIST's, the default\) does not hold input_width "
                                        r"64 values; give \(h, w\) with h \* w = input_width, or None"):
        VAE(input_width=64, **SMALL)
    with pytest.raises(UserError, match=r"^image_shape \(4, 4\) does not hold"):
        VAE(input_width=64, image_shape=(4, 4), **SMALL)
    assert VAE(input_width=64, image_shape=(8, 8), **SMALL).input_width == 64


def test_iterators_for_data_and_codings_and_an_unfitted_models_width_are_said_as_such(mnist):
    """A generator for X was "X has dtype object", for z "got object ()"; an unfitted model's encode of 8 x 8 images
    said to pass 784-wide rows, when fitting first is the fix (an API trial). decode_logits' rows are at most the
    codings asked for (rows=10**9 for 3 codings asked for 238 GiB)."""
    model = VAE(**SMALL)
    rows = mnist.test_x[:6]
    for call, says in [(lambda: model.fit(r for r in rows), r"^X is an iterator \(generator\), read only once; pass an "
                                                              r"array, e.g. np.stack\(list\(X\)\)$"),
                       (lambda: model.encode(iter(list(rows))), r"^X is an iterator \(list_iterator\)"),
                       (lambda: model.decode(z for z in np.zeros((3, 4))),
                        r"^z is an iterator \(generator\), read only once; pass an array of shape \(n, 4\), e.g. "
                        r"np.stack\(list\(z\)\)$")]:
        with pytest.raises(UserError, match=says):
            call()
    unfitted = "; this model has not been fitted: fit it on such data first"
    with pytest.raises(UserError, match=r"^X has rows of 64 values .* pass arrays of shape \(n, 784\) or \(n, 28, 28\)"
                                        + unfitted):
        model.encode(np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(UserError, match=r"^X has images of 14x56 but the model's are 28x28; pass images of that size"
                                        + unfitted):
        model.encode(np.zeros((5, 14, 56), np.uint8))
    # a first fit's validation set is checked against the width of that fit's X: fitting first is not the fix
    with pytest.raises(UserError, match=r"^validation has rows of 784 values .* the model takes 64 \(8x8 images\); "
                                        r"pass arrays of shape \(n, 64\) or \(n, 8, 8\)$"):
        model.fit(np.full((20, 8, 8), 3, np.uint8), epochs=1, batch_size=10, validation=rows)
    model.fit(mnist.train_x[:100], epochs=1)
    with pytest.raises(UserError, match=r"pass arrays of shape \(n, 784\) or \(n, 28, 28\)$"):
        model.encode(np.zeros((5, 8, 8), np.uint8))
    z = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(model.decode_logits(z, rows=10**9), model.decode_logits(z, rows=3))
    # a smaller chunk reuses the larger workspace (iwae_bound built one per call: a review), with a fresh one's bits
    import copy
    larger = model._ws_inference
    assert larger.batch == 3
    np.testing.assert_array_equal(model.decode_logits(z[:2], rows=2), copy.deepcopy(model).decode_logits(z[:2], rows=2))
    assert model._ws_inference is larger


def test_a_single_array_file_is_said_to_be_one_not_a_corrupt_checkpoint(tmp_path):
    """VAE.load of an np.save file said "TypeError: 'numpy.ndarray' object does not support the context manager
    protocol ... it may be truncated or corrupt" (an API trial); the file is left as it was."""
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"^\S+x.npy is not a readable fastvae checkpoint: it holds one NumPy array "
                                        r"\(a .npy file, np.save's\); pass the checkpoint.npz a training run or "
                                        r"VAE.save wrote$"):
        VAE.load(path)
    assert path.read_bytes() == before


def test_a_checkpoint_made_by_hand_with_float64_or_nan_parameters_is_refused_naming_why(tmp_path):
    """Files with a valid checksum made outside save(): float64 params read "params has shape (4420,), the
    architecture in it needs (4420,)"; NaN params loaded, and encode returned NaN without a word (an API trial)."""
    from fastvae import checkpoint
    model = VAE(hidden=(8,), latent=2, backend="cpu")
    arrays = checkpoint._arrays(model._checkpoint(copy=True))
    size = arrays["params"].size
    for name, change, says in [
            ("params", lambda a: a.astype(np.float64),
             rf"params is float64 of shape \({size},\), the architecture in it needs float32 of shape \({size},\)$"),
            ("v", lambda a: np.where(np.arange(a.size) == 7, np.inf, a).astype(np.float32), "v holds NaN or Inf"),
            ("params", lambda a: np.where(np.arange(a.size) == 3, np.nan, a).astype(np.float32),
             r"params holds NaN or Inf values \(fastvae never saves those\); use another copy$")]:
        made = {**arrays, name: change(arrays[name])}
        made["sha256"] = np.array(checkpoint._digest(made))
        path = tmp_path / f"{name}.npz"
        np.savez(path, **made)
        with pytest.raises(UserError, match=rf"^{path} is not a readable fastvae checkpoint: " + says):
            VAE.load(path)


def test_a_fixed_thread_count_above_the_cpus_is_said_with_the_count_that_runs():
    """threads=1000 read 1000 and ran as many threads as CPUs without a word, though a fixed count is asked for its
    bits (an API trial): notify hears the count that runs; a count the CPUs hold is said nothing of."""
    cpus = len(os.sched_getaffinity(0))
    heard = []
    VAE(**SMALL, threads=cpus, notify=heard.append)
    assert not [line for line in heard if "threads=" in line], heard
    VAE(**SMALL, threads=cpus + 7, notify=heard.append)
    (line,) = [line for line in heard if "threads=" in line]
    assert line == (f"threads={cpus + 7}: {cpus} run, one per CPU this process may use (its affinity mask); the "
                    f"training's last bits are those of {cpus} threads (evaluate's, encode's and decode's are the "
                    "same at every count)")


@pytest.mark.parametrize("name, value", [("beta1", 2.0), ("beta2", -0.5), ("adam_eps", 0.0)])
def test_a_bad_adam_setting_is_named_with_its_value(name, value):
    with pytest.raises(UserError, match=f"{name}={value!r}") as err:
        VAE(**{**SMALL, name: value})
    assert "\n" not in str(err.value)


def test_decode_checks_its_codings(trained):
    """Wrong shapes, NaN or Inf, codings that overflow the backend's float32 (a fresh user's trial: NaN pixels and a
    RuntimeWarning) and complex ones (their imaginary part was dropped with a ComplexWarning) are one UserError."""
    for z in (np.zeros((3, 5)), np.zeros(4), np.full((2, 4), np.inf), np.full((2, 4), 1e300),
              np.zeros((2, 4), complex)):
        with pytest.raises(UserError, match="z must"):
            trained.decode(z)


def test_importing_fastvae_loads_nothing_optional():
    code = ("import sys, fastvae; from fastvae import VAE; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cupy', 'matplotlib', 'tqdm', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_test_loss_is_a_function_of_the_model_alone_not_of_any_batch_size(tmp_path, mnist):
    """Evaluation noise depends on (seed, image index) only: models that differ only in their batch size (the
    same initial parameters) get the same number, bit for bit, and so does a model after save and load."""
    t = mnist.test_x[:400]                                   # more than one chunk of any batch size below
    totals = {b: VAE(seed=2, **{**SMALL, "batch_size": b}).evaluate(t) for b in (7, 150, 400)}
    assert totals[7] == totals[150] == totals[400], totals
    model = VAE(seed=2, **SMALL).fit(mnist.train_x[:300], epochs=1, batch_size=30)
    model.save(tmp_path / "ck.npz")
    assert VAE.load(tmp_path / "ck.npz", backend="cpu").evaluate(t) == model.evaluate(t)


def test_the_batch_size_is_part_of_the_saved_training_position(tmp_path, mnist):
    x = mnist.train_x[:300]
    straight = VAE(seed=7, **SMALL).fit(x, epochs=2, batch_size=30)
    first = VAE(seed=7, **SMALL).fit(x, epochs=1, batch_size=30)
    first.save(tmp_path / "ck.npz")
    resumed = VAE.load(tmp_path / "ck.npz", backend="cpu")
    assert resumed.config.batch_size == 30
    resumed.fit(x, epochs=1)                                 # the saved batch size, not the constructor's
    np.testing.assert_array_equal(resumed.state.params, straight.state.params)
    resumed.fit(x, epochs=1, batch_size=60)                  # at an epoch boundary another batch size may start
    assert resumed.steps == 20 + 5 and resumed.config.batch_size == 60


def _interrupted_mid_epoch(model, x, epochs, batch_size):
    """fit() stopped by a real SIGINT (the trainer's Ctrl-C handling) a few steps into the first epoch."""
    import os
    import signal
    import threading

    from fastvae.errors import TrainingInterrupted

    def press_ctrl_c():
        while model.epoch == 0 and model.epoch_step < 2:
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGINT)                  # lands while epoch 2 is still ahead: the handler's

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(TrainingInterrupted):
        model.fit(x, epochs=epochs, batch_size=batch_size)
    assert model.epoch_step > 0, "stopped inside an epoch"
    return model


def test_a_run_stopped_mid_epoch_resumes_with_its_own_batch_size_or_refuses_another(tmp_path, mnist):
    x = mnist.train_x[:3000]
    straight = VAE(seed=7, **{**SMALL, "batch_size": 150}).fit(x, epochs=2, batch_size=10)
    stopped = _interrupted_mid_epoch(VAE(seed=7, **{**SMALL, "batch_size": 150}), x, epochs=2, batch_size=10)
    stopped.save(tmp_path / "ck.npz")
    resumed = VAE.load(tmp_path / "ck.npz", backend="cpu")
    with pytest.raises(UserError, match="batch size 10") as err:
        resumed.fit(x, epochs=1, batch_size=150)
    assert "\n" not in str(err.value)
    resumed.fit(x, epochs=2 - resumed.epoch)
    np.testing.assert_array_equal(resumed.state.params, straight.state.params)
    assert resumed.history[-1]["train"] == straight.history[-1]["train"]


# Every whole-number and real-valued setting of the model; integral floats count as whole numbers.
INTEGER_SETTINGS = {"latent": 3, "batch_size": 30, "epochs": 2, "seed": 5}
FLOAT_SETTINGS = {"lr": 0.002, "beta1": 0.5, "beta2": 0.75, "adam_eps": 0.25}
INTEGER_KINDS = [int, np.int64, np.int32, np.uint16, float, np.float64, np.float32]
NOT_WHOLE = [1.5, np.float32(2.5), "3", None, True, np.bool_(True), float("nan"), float("inf"), 3 + 0j]
FLOAT_KINDS = [float, np.float64, np.float32, np.float16, fractions.Fraction, decimal.Decimal]
NOT_REAL = ["0.5", None, True, float("nan"), 0.5j, [0.5], decimal.Decimal("NaN"), decimal.Decimal("-Infinity"),
            decimal.Decimal("1e400")]


@pytest.mark.parametrize("kind", INTEGER_KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("name", [*INTEGER_SETTINGS, "hidden"])
def test_integer_settings_accept_any_integral_number_as_a_plain_int(name, kind):
    from fastvae.config import Config
    cfg = Config(hidden=(kind(24), kind(16))) if name == "hidden" else Config(**{name: kind(INTEGER_SETTINGS[name])})
    values = cfg.hidden if name == "hidden" else (getattr(cfg, name),)
    assert [type(v) for v in values] == [int] * len(values)
    assert values == ((24, 16) if name == "hidden" else (INTEGER_SETTINGS[name],))


@pytest.mark.parametrize("bad", NOT_WHOLE, ids=repr)
@pytest.mark.parametrize("name", [*INTEGER_SETTINGS, "hidden"])
def test_integer_settings_refuse_anything_else_in_one_line_naming_it(name, bad):
    from fastvae.config import Config
    with pytest.raises(UserError, match=name) as err:
        Config(hidden=(24, bad)) if name == "hidden" else Config(**{name: bad})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", [*FLOAT_KINDS, int, np.int64], ids=lambda k: k.__name__)
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_float_settings_accept_any_real_number_as_a_plain_float(name, kind):
    from fastvae.config import Config
    value = FLOAT_SETTINGS[name] if kind not in (int, np.int64) else int(name in ("lr", "adam_eps"))   # 1 or 0
    got = getattr(Config(**{name: kind(value)}), name)
    assert type(got) is float and got == float(kind(value))


@pytest.mark.parametrize("bad", NOT_REAL, ids=repr)
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_float_settings_refuse_anything_else_in_one_line_naming_it(name, bad):
    from fastvae.config import Config
    with pytest.raises(UserError, match=name) as err:
        Config(**{name: bad})
    assert "\n" not in str(err.value)


def test_numpy_scalar_settings_train_save_and_load(tmp_path, mnist):
    """Settings are plain Python values from the start, so whatever trains also saves (the config is JSON)."""
    model = VAE(hidden=np.array([24, 16]), latent=np.int64(3), batch_size=np.int32(30), seed=np.uint8(5),
                lr=np.float32(0.002), backend="cpu", encoder=np.str_("gamma"), beta1=np.float64(0.9),
                beta2=np.float32(0.99), adam_eps=np.float32(1e-7))
    model.fit(mnist.train_x[:60], epochs=np.int64(1), batch_size=np.float64(30.0))
    model.save(tmp_path / "m.npz")
    loaded = VAE.load(tmp_path / "m.npz", backend="cpu")
    assert loaded.config == model.config and loaded.steps == 2
    assert all(type(v) in (int, float, str, list) for v in loaded.config.to_dict().values())
    np.testing.assert_array_equal(model.sample(np.int64(3), seed=np.int64(2)), loaded.sample(3, seed=2.0))


@pytest.mark.parametrize("call", ["fit epochs", "fit batch_size", "sample n", "sample seed", "decode rows"])
def test_the_methods_integer_arguments_refuse_fractions(mnist, call):
    model = VAE(**SMALL)
    x = mnist.train_x[:100]
    with pytest.raises(UserError, match=call.split()[1]):
        {"fit epochs": lambda: model.fit(x, epochs=1.5), "fit batch_size": lambda: model.fit(x, batch_size=50.5),
         "sample n": lambda: model.sample(2.5), "sample seed": lambda: model.sample(2, seed=1.5),
         "decode rows": lambda: model.decode_logits(np.zeros((2, 4)), rows=1.5)}[call]()


def test_one_model_used_from_two_threads_at_once_gives_each_the_numbers_it_gives_alone():
    """The model's methods share its workspaces: calls from two threads take turns (they gave wrong numbers at once)."""
    import threading
    x = (np.random.default_rng(0).random((3000, 784)) * 255).astype(np.uint8)
    model = VAE(hidden=(64,), latent=4, batch_size=64, threads=1).fit(x[:640], epochs=1)
    alone = model.evaluate(x)
    mu_alone = model.encode(x[:700])[0]
    got, errors = [], []

    def work():
        try:
            for _ in range(3):
                got.append((model.evaluate(x), model.encode(x[:700])[0]))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 6
    for losses, mu in got:
        assert losses == alone
        np.testing.assert_array_equal(mu, mu_alone)


@pytest.mark.parametrize("why", ["batch", "validation"])
def test_a_refused_first_fit_leaves_the_model_as_it_was(mnist, why):
    """A new model takes its width from the data it is first fitted on, but only from a fit that runs: one refused
    (a batch larger than the data, a validation set of another width) leaves its width and its parameters as they
    were, bit for bit (a fresh user's trial: it kept the refused data's width)."""
    fresh = VAE(seed=5, **SMALL)
    before = fresh.backend.to_host(fresh.state.params).copy()
    rows = np.random.default_rng(0).random((30, 10)).astype(np.float32)
    with pytest.raises(UserError):
        if why == "batch":
            fresh.fit(rows, epochs=1, batch_size=50)
        else:
            fresh.fit(rows, epochs=1, batch_size=10, validation=mnist.test_x[:20])
    assert fresh.input_width == 784 and fresh.image_shape == VAE(seed=5, **SMALL).image_shape
    assert np.array_equal(fresh.backend.to_host(fresh.state.params), before)
    fresh.encode(mnist.test_x[:5])                                # usable at its own width
    fresh.fit(mnist.train_x[:100], epochs=1, batch_size=50)


def test_a_callback_that_is_not_a_function_is_refused_before_training(mnist):
    model = VAE(seed=5, **SMALL)
    with pytest.raises(UserError, match="callback must be a function"):
        model.fit(mnist.train_x[:100], epochs=2, batch_size=50, callback=5)
    assert model.steps == 0 and model.epoch == 0


def test_the_exceptions_fit_names_are_public():
    import fastvae
    from fastvae.errors import TrainingDiverged, TrainingInterrupted
    assert fastvae.TrainingInterrupted is TrainingInterrupted and fastvae.TrainingDiverged is TrainingDiverged
    assert {"TrainingInterrupted", "TrainingDiverged", "StoppedBySignal"} <= set(fastvae.__all__)


def test_an_unknown_setting_and_a_path_that_is_not_one_are_one_line_user_errors(mnist, tmp_path):
    """VAE(foo=1) named Config's __init__ in a TypeError, save(5) and VAE.load(5) pathlib's (a fresh user's trial)."""
    with pytest.raises(UserError, match="no setting 'foo'"):
        VAE(foo=1, **SMALL)
    model = VAE(seed=5, **SMALL)
    for call in (lambda: model.save(5), lambda: VAE.load(5)):
        with pytest.raises(UserError, match="a path .* is needed, not int"):
            call()
    assert VAE(epochs=3, **SMALL).config.epochs == 3                # every Config field is still a setting
    for call in (lambda: VAE(notify=5, **SMALL), lambda: VAE.load(tmp_path, notify=5)):
        with pytest.raises(UserError, match="notify must be a function"):
            call()


def test_a_diverged_library_fit_says_how_to_lower_the_rate_in_the_library_too(mnist):
    from fastvae.errors import TrainingDiverged
    model = VAE(seed=5, lr=1e3, **SMALL)
    with pytest.raises(TrainingDiverged, match=r"lower the learning rate \(now 1000\), e.g. VAE\(..., lr=100\)$"):
        model.fit(mnist.train_x[:300], epochs=3)
    with pytest.raises(UserError, match="a checkpoint saved before stands"):
        model.save("unused.npz")
    steps = model.steps                             # nor trained on (it went on, and diverged again a step later)
    with pytest.raises(UserError, match=rf"diverged \(NaN or Inf at step {steps}\).*lower learning rate \(now 1000\)"):
        model.fit(mnist.train_x[:300], epochs=1)
    assert model.steps == steps
    assert repr(model).endswith("; diverged: NaN or Inf, refuses fit, save and its outputs)")   # (it said nothing)
    x = mnist.test_x[:5]                            # its outputs were NaN, without a word (a fresh user's trial)
    for output in (lambda: model.encode(x), lambda: model.sample(3), lambda: model.decode(np.zeros((2, 4))),
                   lambda: model.reconstruct(x), lambda: model.evaluate(x)):
        with pytest.raises(UserError, match=r"^this model diverged \(NaN or Inf at step \d+\): its outputs would be "):
            output()


def test_setting_an_attribute_a_model_does_not_have_is_refused_in_one_line(mnist):
    """`model.lr = 0.01` was kept and changed nothing (config.lr stayed); model.config = None, model.backend = "x",
    model.epoch = "5" or model.threads = 0 were accepted and broke a later call with an internal traceback (fresh
    users' trials). Settable: threads (checked), and config for a training setting; the state can be read only."""
    import dataclasses
    model = VAE(seed=5, **SMALL)
    with pytest.raises(UserError, match=r"no attribute 'lr' to set: lr is a setting in model.config \(model.config "
                                        r"= dataclasses.replace\(model.config, lr=\.\.\.\) for a training setting\)"):
        model.lr = 0.01
    with pytest.raises(UserError, match="no attribute 'treads' to set; model.threads and model.config may be set"):
        model.treads = 1
    for name, value in (("backend", "reference"), ("epoch", "5"), ("history", None), ("state", None),
                        ("diverged", False), ("steps", 3), ("precision", "bf16"), ("input_width", 10)):
        with pytest.raises(UserError, match=rf"model.{name} is the model's own state: it can be read, not set"):
            setattr(model, name, value)
    with pytest.raises(UserError, match="threads must be a positive integer or 'auto'"):
        model.threads = 0
    with pytest.raises(UserError, match="model.config must be a fastvae.Config, not NoneType"):
        model.config = None
    with pytest.raises(UserError, match=r"cannot change the model's latent \(4 to 3\): only lr, beta1, beta2, "
                                        r"adam_eps and epochs may change; make a new VAE"):
        model.config = dataclasses.replace(model.config, latent=3)
    with pytest.raises(UserError, match=r"batch_size \(50 to 60\).*; fit\(X, batch_size=\.\.\.\) changes it"):
        model.config = dataclasses.replace(model.config, batch_size=60)
    assert not hasattr(model, "lr") and model.config.lr == 0.001 and model.threads is None
    model.threads = 1.0                                             # what may change between fits still does
    model.config = dataclasses.replace(model.config, lr=0.002)
    slower = VAE(seed=5, threads=1, **SMALL).fit(mnist.train_x[:100], epochs=1)
    model.fit(mnist.train_x[:100], epochs=1)
    assert model.threads == 1 and type(model.threads) is int and repr(model).endswith(" 1 epoch, 2 steps)")
    assert not np.array_equal(model.state.params, slower.state.params)    # the new rate trained it

    class Mine(VAE):                                                # a subclass keeps its own attributes
        pass
    mine = Mine(seed=5, **SMALL)
    mine.note = "kept"
    assert mine.note == "kept"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_a_data_set_is_read_in_place_on_the_host_backends(backend):
    """fit, evaluate and encode read a C-ordered uint8 data set where it lies, writable or not (load_mnist's is
    read-only): no copy of it (each call copied it: 47 MB more for MNIST's training set, found on the EPYC 2026-12-06
    as the benchmark's peak growing with the number of images), and the same bits either way."""
    import tracemalloc
    from fastvae import step
    from fastvae.backends import get_backend
    frozen = load_mnist().train_x                             # read-only, 47 MB
    x = frozen.copy()
    be = get_backend(backend)
    assert step.data_for(be, x) is x and step.data_for(be, frozen) is frozen
    assert not np.shares_memory(step.data_for(be, x[:, ::2]), x)             # strided: a copy
    kwargs = dict(SMALL, backend=backend, batch_size=100)
    n = len(x) if backend == "cpu" else 600
    for data in (x, frozen):                                  # each array type's kernels and replays compiled
        VAE(**kwargs).fit(data[:200], epochs=1)               # or loaded: not part of what is traced
    peaks = []
    tracemalloc.start()
    try:
        model = VAE(**kwargs).fit(x[:n], epochs=1)
        model.evaluate(x[:n])
        model.encode(x[:n])
        params = model.state.params.copy()
        peaks.append(tracemalloc.get_traced_memory()[1])
        del model                                             # (each fit's peak is its own)
        gc.collect()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        again = VAE(**kwargs).fit(frozen[:n], epochs=1)
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    if backend == "cpu":
        assert max(peaks) < x.nbytes / 4, (peaks, x.nbytes)   # a few MB: the model and its workspaces
    assert np.array_equal(params, again.state.params)


def test_fit_takes_ctrl_c_and_leaves_sigterm_to_the_program(mnist):
    """fit handles SIGINT while it runs (stop after the step), but a program's SIGTERM stays the program's: only the
    command line asks fit to stop on it too (training.also_stopping_on), and each handler is back afterwards."""
    from fastvae import training
    seen = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def callback(model, record):
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
    VAE(seed=1, **SMALL).fit(mnist.train_x[:200], epochs=1, callback=callback)
    with training.also_stopping_on(signal.SIGTERM):
        VAE(seed=1, **SMALL).fit(mnist.train_x[:200], epochs=1, callback=callback)
    (int_alone, term_alone), (int_cli, term_cli) = seen
    assert int_alone not in before and term_alone == before[1]
    assert int_cli not in before and term_cli not in before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_ctrl_c_after_a_sigterm_stops_at_once():
    """A second stop signal, of either kind, acts at once: a Ctrl-C after the command line's SIGTERM asked for a
    clean stop raises KeyboardInterrupt there (it counted as a first Ctrl-C), and every handler is back afterwards."""
    import os
    from fastvae import training
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with training.also_stopping_on(signal.SIGTERM), training.StopOnCtrlC() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_resumed_epochs_progress_bar_starts_at_its_step(mnist, monkeypatch):
    """The bar of an epoch resumed at step k starts there (tqdm's `initial`), so its rate counts only the steps run
    now (it was updated by k at once: 340 steps/s shown for 70 after a resume, a fresh user's trial)."""
    from fastvae import TrainingInterrupted, training
    bars = []
    monkeypatch.setattr(training, "_progress_bar", lambda total, desc, initial: bars.append(initial) or None)
    real_init = training.StopOnCtrlC.__init__

    def asked_at_once(self, event=None):            # a Ctrl-C before the first step: stops after the first chunk
        real_init(self, event)
        self.requested = signal.SIGINT
    monkeypatch.setattr(training.StopOnCtrlC, "__init__", asked_at_once)
    from terminal import Terminal
    terminal = Terminal()                           # (the bar is drawn on a terminal only)
    monkeypatch.setattr(sys, "stderr", terminal.open_slave())
    model = VAE(seed=1, threads=2, **{**SMALL, "batch_size": 64})
    with pytest.raises(TrainingInterrupted):
        model.fit(mnist.train_x[:1280], epochs=1, progress=True)
    stopped_at = model.epoch_step
    monkeypatch.setattr(training.StopOnCtrlC, "__init__", real_init)
    model.fit(mnist.train_x[:1280], epochs=1, progress=True)
    assert 0 < stopped_at < 20 and bars == [0, stopped_at]


def test_a_terminal_of_no_columns_gets_a_logs_lines_not_an_invisible_bar(mnist, monkeypatch):
    """A new pseudo-terminal is 0 x 0 until its size is set (`script` run from a shell without one): tqdm drew
    nothing there, the first steps' note included, and the lines a log gets were not written either (a new user's
    trial). There the lines are written; a terminal with columns still gets the bar (tests/terminal.py's tests)."""
    from fastvae import training
    from terminal import Terminal
    for rows, columns, bar in ((0, 0, False), (24, 80, True)):
        terminal = Terminal(rows=rows, columns=columns)
        stream = terminal.open_slave()
        assert stream.isatty() and training.on_terminal(stream) is bar
        monkeypatch.setattr(sys, "stderr", stream)
        told = []
        monkeypatch.setattr(training, "_tell", told.append)
        model = VAE(seed=1, **SMALL).fit(mnist.train_x[:200], epochs=1, progress=True)
        lines = [line for line in told if "train loss" in line]       # (and, first in a process, the loading one)
        assert len(told) == 0 if bar else len(lines) == 1 and lines[0].startswith("epoch 1: train loss"), told
        assert model.epoch == 1
        stream.close()
        terminal.close_slave()
        terminal.close()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_gets_the_mode_the_umask_gives_new_files(tmp_path, umask):
    """tempfile.mkstemp made every checkpoint 0600, unreadable to the group and others whatever the umask (the run's
    metrics.json and figures were 0644): a shared model could not be loaded by a colleague (a fresh user's trial)."""
    import os
    import stat
    model = VAE(seed=5, **SMALL)
    before = os.umask(umask)
    try:
        model.save(tmp_path / "a.npz")
        (tmp_path / "b.npz").write_bytes(b"")
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "a.npz").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "b.npz").stat().st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_numba_turned_off_is_one_line_before_anything_is_written(tmp_path):
    """NUMBA_DISABLE_JIT=1 (a debugging switch: jitted functions run as Python) cannot run the kernels, whose
    intrinsics have no Python form: a traceback came after the run folder was made (a fresh user's trial). Now one
    line naming the variable, status 2, no folder; the reference backend still trains."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    quick = ["--epochs", "1", "--train-images", "100", "--test-images", "20", "--hidden", "8", "--latent", "2",
             "--batch-size", "50", "--no-plots"]
    for backend in ("cpu", "cpu-bf16", "auto"):
        proc = subprocess.run([sys.executable, "-m", "fastvae.train", *quick, "--backend", backend, "--out",
                               str(tmp_path / backend)], capture_output=True, text=True, timeout=300, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "NUMBA_DISABLE_JIT is set" in lines[-1], proc.stderr
        assert lines[-1].startswith("fastvae: error:") and "Traceback" not in proc.stderr
        assert not (tmp_path / backend).exists()
    proc = subprocess.run([sys.executable, "-m", "fastvae.train", *quick, "--backend", "reference", "--out",
                           str(tmp_path / "reference")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and (tmp_path / "reference" / "checkpoint.npz").is_file(), proc.stderr


def test_save_and_load_take_an_open_binary_file(mnist, tmp_path):
    """save() took paths only (a library user storing models in memory or a cloud store's stream had to go through a
    temporary file or pickle): an open binary file is written into and read from, the same bits as a file; a text
    file, a closed one, or something else that is not a checkpoint is one line."""
    import io
    model = VAE(seed=3, **SMALL).fit(mnist.train_x[:200], epochs=1)
    buffer = io.BytesIO()
    model.save(buffer)
    model.save(tmp_path / "m.npz")
    assert buffer.getvalue() and buffer.tell() > 0
    buffer.seek(0)
    again = VAE.load(buffer, backend="cpu")
    from_file = VAE.load(tmp_path / "m.npz", backend="cpu")
    np.testing.assert_array_equal(again.state.params, from_file.state.params)
    np.testing.assert_array_equal(again.state.m, model.state.m)
    assert (again.steps, again.epoch, again.config) == (model.steps, model.epoch, model.config)
    with open(tmp_path / "m.npz", "rb") as f:
        assert VAE.load(f, backend="cpu").steps == model.steps
    with pytest.raises(UserError, match="the BytesIO given is not a readable fastvae checkpoint"):
        VAE.load(io.BytesIO(b"not a checkpoint"), backend="cpu")
    closed = io.BytesIO()
    closed.close()
    with pytest.raises(UserError, match="could not write the checkpoint into the BytesIO given"):
        model.save(closed)
    with open(tmp_path / "t.txt", "w") as text, pytest.raises(UserError, match=r"a text file\); open it in binary mode "
                                                                            r"\('wb'\)"):
        model.save(text)
    with open(tmp_path / "m.npz", "r") as text, pytest.raises(UserError, match=r"open it in binary mode \('rb'\)"):
        VAE.load(text, backend="cpu")
    # (it said "choose another folder": an embedder's trial; a gzip.GzipFile's is EBADF: a review's)
    import gzip
    with open(tmp_path / "m.npz", "rb") as reading, pytest.raises(UserError, match=r"it is not open for writing\); "
                                                                               r"open it with mode 'wb'$"):
        model.save(reading)
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb") as g:
        model.save(g)
    packed.seek(0)
    with gzip.GzipFile(fileobj=packed, mode="rb") as g, pytest.raises(UserError, match="not open for writing"):
        model.save(g)


def test_checkpoints_written_one_after_another_into_one_file_are_read_back_in_order(mnist, tmp_path):
    """np.load found a zip archive by its end record, scanning from the end of the file: of checkpoints appended to
    one file it loaded the last, from any position, without a word (a service embedding fastvae). Now each load reads
    the checkpoint at the position and leaves the file after it; any stream takes a save (a gzip.GzipFile's seek
    refused zipfile's own writing); a write the stream fails is the OSError it was (a full disk: errno ENOSPC).
    A pipe too: each load reads its checkpoint and not a byte more, so the second one written is read next, and a
    load does not wait for the writer to close the pipe (both were refused or hung: an embedder's trial)."""
    import errno
    import gzip
    import io
    model, epochs, offsets = VAE(seed=3, **SMALL), [], []
    with open(tmp_path / "many", "wb") as f:
        for _ in range(3):
            model.fit(mnist.train_x[:100], epochs=1)
            offsets.append(f.tell())
            model.save(f)
            epochs.append(model.epoch)
    with open(tmp_path / "many", "rb") as f:
        assert [VAE.load(f, backend="cpu").epoch for _ in epochs] == epochs == [1, 2, 3] and f.read() == b""
        for offset, epoch in zip(offsets, epochs):
            f.seek(offset)
            assert VAE.load(f, backend="cpu").epoch == epoch
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb") as g:
        model.save(g)
    packed.seek(0)
    with gzip.GzipFile(fileobj=packed, mode="rb") as g:
        np.testing.assert_array_equal(VAE.load(g, backend="cpu").state.params, model.state.params)
    if os.path.exists("/dev/full"):
        with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as info:
            model.save(full)
        assert isinstance(info.value, UserError) and info.value.errno == errno.ENOSPC
    import threading
    read, write = os.pipe()
    first = VAE(seed=4, **SMALL).fit(mnist.train_x[:100], epochs=1)
    done = threading.Event()

    def writer():                       # (a pipe holds 64 KB: written from a thread while this one reads)
        with os.fdopen(write, "wb") as w:
            first.save(w)
            model.save(w)
            w.flush()
            done.wait(timeout=120)      # the pipe kept open until both are loaded
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with os.fdopen(read, "rb") as r:
            loaded = [VAE.load(r, backend="cpu"), VAE.load(r, backend="cpu")]
    finally:
        done.set()
        thread.join(timeout=60)
    assert [m.epoch for m in loaded] == [1, 3]
    np.testing.assert_array_equal(loaded[0].state.params, first.state.params)
    np.testing.assert_array_equal(loaded[1].state.params, model.state.params)


def test_integer_pixels_of_any_dtype_are_read_as_0_to_255(mnist):
    """A faint int64 image (values 0 and 1) is read as the uint8 image it is, beside others or alone (alone it was
    read as white pixels: an API review's trial; alone it is now refused, as uint8's binarized images are)."""
    model = VAE(**SMALL).fit(mnist.train_x[:200], epochs=1)
    X = mnist.test_x[:3].astype(np.int64)
    X[0] = (X[0] > 200).astype(np.int64)
    assert np.array_equal(model.reconstruct(X), model.reconstruct(X.astype(np.uint8)))
    with pytest.raises(UserError, match="int64 with no value above 1"):
        model.reconstruct(X[:1])


def test_mistakes_in_the_smaller_arguments_are_one_line_user_errors(mnist):
    """From an API review's trial: each of these was a raw traceback, or silently did something else."""
    from fastvae.config import Config
    from fastvae.errors import StoppedBySignal
    model = VAE(**SMALL)
    X = mnist.train_x[:20]
    with pytest.raises(UserError, match="progress must be True or False, not 'no'"):
        model.fit(X, epochs=1, batch_size=10, progress="no")           # it turned the bar on
    # (sizes past x86-64's 128 TiB of address space: refused whatever the kernel's overcommit setting)
    with pytest.raises(MemoryError, match=r"^VAE.sample\(\): not enough memory \(MemoryError: Unable to alloc"):
        model.sample(2**45)
    with pytest.raises(UserError, match=r"n must be a whole number in \[0, 18,014,398,509,481,984\)"):
        model.sample(2**63)                                             # NumPy's "array is too big"
    # (2**46 codings: their check of finiteness is what cannot be allocated, and fewer rows at a time is the fix)
    with pytest.raises(MemoryError, match=r"^VAE.decode_logits\(\): not enough memory"):
        model.decode_logits(np.broadcast_to(np.zeros(SMALL["latent"]), (2**46, SMALL["latent"])), rows=10**12)
    # (rows at most the codings given: 10**12 rows for one coding asked for 3 PB, an API trial)
    assert model.decode_logits(np.zeros((1, SMALL["latent"])), rows=10**12).shape == (1, 784)
    with pytest.raises(MemoryError, match=r"VAE\(\): not enough memory for a model of 200,016,320,000,824 param"):
        VAE(hidden=(10**7, 10**7), backend="cpu")
    # named once, by the call made: fit's validation pass (evaluate) fails inside it; decode's inside decode_logits
    with pytest.raises(MemoryError, match=r"^VAE.decode\(\): not enough memory \(MemoryError: Unable"):
        model.decode(np.broadcast_to(np.zeros(SMALL["latent"], np.float32), (2**46, SMALL["latent"])))
    with pytest.raises(UserError, match=r"too many positional arguments; it takes \(X, epochs=None, batch_size"):
        model.fit(X, 1, 10, None, None, False, None, 3)
    with pytest.raises(UserError, match="image_shape must be \\(h, w\\) or None, got 5"):
        Config(image_shape=5)
    with pytest.raises(UserError, match="made from a dict of its settings, not NoneType"):
        Config.from_dict(None)
    assert StoppedBySignal("x", signum=99).how == "signal 99"
    mu, logvar = model.encode(X)                  # two arrays of their own, not interleaved views of one buffer
    assert mu.flags.c_contiguous and logvar.flags.c_contiguous and not np.shares_memory(mu, logvar)
