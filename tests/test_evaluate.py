"""fastvae.evaluate: the IWAE bound against an independent float64 NumPy computation from the checkpoint's
parameters, its properties (k = 1 is the ELBO, bound >= ELBO, rises with k), log-mean-exp stability, the CLI."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

import strict_json
from tolerances import TOL, float32_row_sum_tolerance, float64_sum_order_tolerance

import fastvae
from fastvae import VAE, UserError, checkpoint, rng
from fastvae.constants import EVAL_ROWS
from fastvae.data import load_mnist
from fastvae.evaluate import STREAM_IWAE, evaluate_model, iwae_bound, log_mean_exp
from fastvae.params import Layout

N_TEST = 120
ATOL_NATS = TOL["nats_from_float32_logits"]


def assert_nats(actual, expected, what, log_px=None, d=784):
    """Within the float32 logits' error, and where given the images' log-likelihoods log_px (whose terms are all of
    one sign: their sum is the sum of their sizes), the float32 row sums' (fastvae.backends.cpu.row_losses)."""
    atol = ATOL_NATS if log_px is None else ATOL_NATS + float32_row_sum_tolerance(d, np.max(np.abs(log_px)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=what)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained for 2 epochs on 2000 images (cpu backend), saved; and some test images."""
    mnist = load_mnist()
    model = VAE(hidden=(64, 32), latent=4, backend="cpu", seed=5, batch_size=100)
    model.fit(mnist.train_x[:2000], epochs=2)
    path = tmp_path_factory.mktemp("eval") / "checkpoint.npz"
    model.save(path)
    return model, path, mnist.test_x[:N_TEST]


def _elu(a):
    return np.where(a > 0, a, np.expm1(np.minimum(a, 0.0)))


def _oracle_model(path, X):
    """(decoder, latent, x, mu, gamma) in float64 NumPy from the saved parameters alone (no fastvae kernels): the
    decoder's layers (those after the heads) as (w, b) pairs, x the images in [0, 1], (mu, gamma) their codings'."""
    ck = checkpoint.load(path)
    layers = Layout(ck.config).views(ck.params.astype(np.float64))
    n_hidden, latent = len(ck.config.hidden), ck.config.latent
    x = X.astype(np.float64) / 255.0
    h = x
    for w, b in layers[:n_hidden]:
        h = _elu(h @ w + b)
    stats = h @ layers[n_hidden][0] + layers[n_hidden][1]
    return layers[n_hidden + 1:], latent, x, stats[:, :latent], stats[:, latent:]


def _oracle_log_px(layers, x, z):
    """log p(x | z) of the decoder `layers` (the layers after the heads), float64, for rows z."""
    h = z
    for w, b in layers[:-1]:
        h = _elu(h @ w + b)
    logits = h @ layers[-1][0] + layers[-1][1]
    # log Bernoulli(x | sigmoid(l)) = x log s + (1 - x) log(1 - s), written with logaddexp for stability
    return -(x * np.logaddexp(0, -logits) + (1 - x) * np.logaddexp(0, logits)).sum(axis=1)


def _oracle_log_weights(path, X, k, seed, float32_codings=False):
    """(log w, log p(x | z), the sum of its terms' sizes) [i, j] for image i, sample j, in float64 NumPy from the saved
    parameters alone (no fastvae kernels): the noise is row j of rng.normals(seed, STREAM_IWAE, i, k, latent), as
    documented in fastvae.evaluate; float32_codings: (mu, gamma) rounded to float32, as VAE.encode gives them."""
    decoder, latent, x, mu, gamma = _oracle_model(path, X)
    if float32_codings:
        mu, gamma = (a.astype(np.float32).astype(np.float64) for a in (mu, gamma))
    out, px, sizes = np.empty((len(X), k)), np.empty((len(X), k)), np.empty((len(X), k))
    for i in range(len(X)):
        eps = rng.normals(seed, STREAM_IWAE, i, k, latent).astype(np.float64)
        z = mu[i] + np.exp(gamma[i] / 2) * eps
        log_px = _oracle_log_px(decoder, x[i], z)
        log_pz = -0.5 * (z ** 2 + np.log(2 * np.pi)).sum(axis=1)
        log_qz = -0.5 * (((z - mu[i]) ** 2) / np.exp(gamma[i]) + gamma[i] + np.log(2 * np.pi)).sum(axis=1)
        out[i], px[i] = log_px + log_pz - log_qz, log_px
        # log p(x | z)'s terms are all of one sign; log p(z)'s too; log q's: these bound the sizes of its terms
        sizes[i] = np.abs(log_px) + np.abs(log_pz) + 0.5 * (eps ** 2 + np.abs(gamma[i]) + np.log(2 * np.pi)).sum(1)
    return out, px, sizes


def test_evaluate_draws_each_images_noise_at_its_chunks_step(trained):
    """VAE.evaluate's noise is a function of (seed, i): image i, in chunk j = i // EVAL_ROWS, takes row
    i % EVAL_ROWS of rng.normals(seed, STREAM_EVAL, j, rows, latent). Against an independent float64 computation of
    the one-sample negative ELBO with that noise (a mutant that drew chunk j's noise at step j + 1 passed every test:
    the backends share the rule, so they agreed with each other)."""
    model, path, _ = trained
    X = load_mnist().test_x[:2 * EVAL_ROWS + 7]                # three chunks, the last of 7 images
    decoder, latent, x, mu, gamma = _oracle_model(path, X)
    eps = np.concatenate([rng.normals(model.config.seed, rng.STREAM_EVAL, j, len(X[lo:lo + EVAL_ROWS]), latent)
                          for j, lo in enumerate(range(0, len(X), EVAL_ROWS))]).astype(np.float64)
    log_px = _oracle_log_px(decoder, x, mu + np.exp(gamma / 2) * eps)
    kl = 0.5 * (np.exp(gamma) + mu ** 2 - 1 - gamma).sum(axis=1)
    got = model.evaluate(X)
    # the float32 forward's error on each image's sum, within ATOL_NATS (the other tests' bound); one chunk's noise
    # drawn at another step moved the mean by 0.59 nats here
    assert abs(got["reconstruction"] + log_px.mean()) <= ATOL_NATS, (got, -log_px.mean())
    assert abs(got["kl"] - kl.mean()) <= ATOL_NATS, (got, kl.mean())


def test_k1_is_the_one_sample_elbo_of_an_independent_float64_computation(trained):
    model, path, X = trained
    lw, px, _ = _oracle_log_weights(path, X[:40], 1, seed=7)
    res = iwae_bound(model, X[:40], k=1, seed=7)
    assert res["k"] == [1]
    assert_nats(res["bound"][:, 0], lw[:, 0], "IWAE k=1 vs float64 ELBO", px)
    assert_nats(res["elbo"][:, 0], lw[:, 0], "ELBO k=1", px)
    assert np.all(res["bound"] == res["elbo"])          # k = 1: log mean exp of one number is that number


def test_k5_matches_the_oracle_log_mean_exp(trained):
    model, path, X = trained
    lw, px, _ = _oracle_log_weights(path, X[:15], 5, seed=2)
    expected = np.logaddexp.reduce(lw, axis=1) - np.log(5)
    res = iwae_bound(model, X[:15], k=[1, 5], seed=2, batch_size=7)   # chunks that cut images' samples apart
    assert_nats(res["bound"][:, 1], expected, "IWAE k=5", px)
    assert_nats(res["bound"][:, 0], lw[:, 0], "IWAE k=1 as a prefix of k=5", px)
    # the oracle's ELBO of 5 samples is the mean log-weight
    assert_nats(res["elbo"][:, 1], lw.mean(axis=1), "5-sample ELBO", px)


def test_the_reference_backends_bound_is_the_oracles(trained):
    """The reference backend's log-weights (evaluate._float64_log_weights, every term in float64 but the codings,
    which VAE.encode gives as float32) against the oracle's: the float32 backends' codings are held against that path
    in test_iwae_codings, so it is held here to an independent computation (a mutant that left log 2 pi out of
    log p(z) passed every other test)."""
    _, path, X = trained
    lw, _, sizes = _oracle_log_weights(path, X[:6], 4, seed=9, float32_codings=True)
    res = iwae_bound(VAE.load(path, backend="reference"), X[:6], k=[1, 4], seed=9)
    # float64 throughout from the same float32 codings: the same terms summed in other orders (784 pixels' and the
    # codings' terms; the logits' products, whose float64 error is float32's bound scaled by the units' ratio)
    tol = (float64_sum_order_tolerance(784 + 2 * 4, sizes)
           + ATOL_NATS * TOL["float64_unit"] / TOL["float32_unit"])
    for got, expected, t in ((res["bound"][:, 1], np.logaddexp.reduce(lw, axis=1) - np.log(4), tol.max(axis=1)),
                             (res["elbo"][:, 1], lw.mean(axis=1), tol.max(axis=1)),
                             (res["bound"][:, 0], lw[:, 0], tol[:, 0])):
        assert np.all(np.abs(got - expected) <= t), (got - expected, t)


def test_bound_is_above_the_elbo_and_rises_with_k(trained):
    model, _, X = trained
    res = evaluate_model(model, X, k=[1, 10, 100], seed=0)
    rows = {r["k"]: r for r in res["iwae"]}
    # with the same samples, log mean exp >= mean log (Jensen), image by image
    raw = iwae_bound(model, X, k=[1, 10, 100], seed=0)
    assert np.all(raw["bound"] >= raw["elbo"] - 1e-9)
    assert np.all(raw["bound"][:, 0] == raw["elbo"][:, 0])
    nll = [rows[k]["nll"] for k in (1, 10, 100)]
    assert nll[0] > nll[1] > nll[2], nll                # the bound on log p(x) rises, so -bound falls
    assert nll[0] - nll[2] > 0.5                        # by a real margin on a briefly trained model
    for k in (10, 100):
        assert rows[k]["nll"] < res["elbo"]["total"]     # below the trainer's test loss (1 sample, analytic KL)
        assert rows[k]["nll"] < rows[k]["negative_elbo_same_samples"]
    # one sample with an analytic KL and one with the sampled KL estimate the same ELBO
    assert abs(rows[1]["nll"] - res["elbo"]["total"]) < 5 * rows[1]["std_error"] + 1.0
    assert res["images"] == N_TEST and all(np.isfinite(r["std_error"]) for r in res["iwae"])
    # the report's figures are these bounds' mean and its standard error (the sample standard deviation, n - 1)
    for c, k in enumerate((1, 10, 100)):
        b = raw["bound"][:, c]
        assert rows[k]["nll"] == pytest.approx(-b.mean(), rel=1e-12)
        assert rows[k]["std_error"] == pytest.approx(np.std(b, ddof=1) / np.sqrt(N_TEST), rel=1e-12)


def test_the_squared_error_variant_reports_one_density_for_the_elbo_and_the_iwae_bound():
    """reconstruction="mse": the IWAE rows are -log N(x; p, 1/2), so the negative ELBO beside them carries that
    density's constant too (it was the bare squared error: the k = 1 NLL came out 450 nats above it)."""
    mnist = load_mnist()
    model = VAE(hidden=(32,), latent=4, backend="cpu", seed=3, batch_size=100, reconstruction="mse")
    model.fit(mnist.train_x[:1000], epochs=1)
    X = mnist.test_x[:N_TEST]
    res = evaluate_model(model, X, k=[1, 10], seed=0)
    constant = 0.5 * 784 * np.log(np.pi)
    plain = model.evaluate(X)
    assert res["elbo"]["constant"] == pytest.approx(constant, rel=1e-12)
    assert res["elbo"]["reconstruction"] == pytest.approx(plain["reconstruction"] + constant, rel=1e-12)
    assert res["elbo"]["total"] == pytest.approx(plain["total"] + constant, rel=1e-12)
    one, ten = res["iwae"]
    # one sample with an analytic KL and one with the sampled KL estimate the same ELBO; the bound sits below it
    assert abs(one["nll"] - res["elbo"]["total"]) < 5 * one["std_error"] + 1.0, (one, res["elbo"])
    assert ten["nll"] < res["elbo"]["total"]


def test_the_noise_and_the_chunking_do_not_change_the_answer(trained):
    model, _, X = trained
    a = iwae_bound(model, X[:30], k=[3, 20], seed=4)
    b = iwae_bound(model, X[:30], k=20, seed=4, batch_size=13)
    c = iwae_bound(model, X[:30], k=3, seed=4, batch_size=1)
    assert_nats(b["bound"][:, 0], a["bound"][:, 1], "k=20, other chunks")
    assert_nats(c["bound"][:, 0], a["bound"][:, 0], "k=3 alone vs as a prefix")
    d = iwae_bound(model, X[:30], k=3, seed=5)
    assert not np.allclose(d["bound"], c["bound"])      # another seed draws other samples
    again = iwae_bound(model, X[:30], k=[3, 20], seed=4)
    assert np.array_equal(again["bound"], a["bound"])   # a pure function of (seed, image, sample)
    # k above the batch: each image's samples drawn, decoded and summed 7 at a time (k = 3 inside the first batch,
    # 20 across three): the same log-weights (a row's logits do not depend on its call's other rows), summed in
    # another order
    streamed = iwae_bound(model, X[:30], k=[3, 20], seed=4, batch_size=7)
    np.testing.assert_allclose(streamed["bound"], a["bound"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(streamed["elbo"], a["elbo"], rtol=0, atol=1e-9)
    # a k that ends exactly where a batch ends (7 and 14 in batches of 7) is complete with that batch
    edge, whole = (iwae_bound(model, X[:30], k=[7, 14], seed=4, batch_size=b) for b in (7, None))
    np.testing.assert_allclose(edge["bound"], whole["bound"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(edge["elbo"], whole["elbo"], rtol=0, atol=1e-9)


def test_a_nan_log_weight_makes_the_bound_nan_however_the_samples_are_batched():
    """The streamed sums carry a NaN as log_mean_exp does (Python's max(-inf, nan) is -inf: a NaN in an image's
    first batch was dropped with the finite weights beside it, a review found), and an overflow stays +inf."""
    from fastvae.evaluate import _Sums
    for batches in ([[np.nan, 0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [np.nan]], [[np.inf], [np.nan, 1.0]],
                    [[-np.inf], [np.nan]], [[-np.inf, -np.inf], [0.0, 1.0]], [[np.inf, 0.0], [5.0]]):
        total = _Sums()
        for lw in batches:
            total = total.with_(np.array(lw))
        whole = np.concatenate([np.array(b) for b in batches])
        with np.errstate(invalid="ignore"):
            expect = (float(log_mean_exp(whole)), float(whole.mean()))
        got = total.means(len(whole))
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=0, err_msg=str(batches))


def test_a_model_that_is_not_one_is_told_how_to_load_it(trained):
    _, path, X = trained
    for wrong in (str(path), path, None):
        with pytest.raises(UserError, match="model must be a fastvae.VAE, not .*VAE.load"):
            iwae_bound(wrong, X[:2], k=2)
        with pytest.raises(UserError, match="model must be a fastvae.VAE"):
            evaluate_model(wrong, X[:2], k=2)


def test_log_mean_exp_is_stable():
    a = np.array([[-1e4, -1e4 + np.log(3.0)], [-1e300, 0.0], [1e4, 1e4], [-np.inf, 0.0], [-np.inf, -np.inf]])
    out = log_mean_exp(a)
    assert out[0] == pytest.approx(-1e4 + np.log(2.0), abs=1e-9)
    assert out[1] == pytest.approx(-np.log(2.0), abs=1e-12)
    assert out[2] == pytest.approx(1e4, abs=1e-9)
    assert out[3] == pytest.approx(-np.log(2.0), abs=1e-12)
    assert out[4] == -np.inf and not np.isnan(out).any()
    with np.errstate(over="ignore", divide="ignore"):
        naive = np.log(np.mean(np.exp(a[:3]), axis=1))  # what a naive formula gives: -inf and inf
    assert not np.isfinite(naive).all() and np.isfinite(out[:4]).all()


def test_bad_arguments_are_one_line_user_errors(trained):
    from fastvae import UserError
    model, _, X = trained
    for bad in (0, -3, [], [5, 0], 2.5, True):
        with pytest.raises(UserError):
            iwae_bound(model, X[:3], k=bad)
    with pytest.raises(UserError):
        iwae_bound(model, X[:3], k=2, batch_size=0)


def test_integral_numbers_of_any_type_are_taken_and_fractions_refused(trained):
    from fastvae import UserError
    model, _, X = trained
    a = iwae_bound(model, X[:5], k=[2, 3], seed=4, batch_size=7)
    b = iwae_bound(model, X[:5], k=np.array([2.0, 3.0]), seed=np.int64(4), batch_size=np.float32(7))
    assert b["k"] == [2, 3] and all(type(k) is int for k in b["k"])
    np.testing.assert_array_equal(b["bound"], a["bound"])
    for name, bad in (("seed", 4.5), ("batch_size", 7.5), ("k", 2.5), ("seed", "4")):
        with pytest.raises(UserError, match=f"^{name} must"):
            iwae_bound(model, X[:5], **{"k": 2, name: bad})


def test_progress_and_a_huge_k_are_refused_in_one_line(trained):
    """progress="no" turned the bar on (a string is true), and k = 1e12 ran without a word and without an end (a new
    user's trial): both refused, in the library and on the command line."""
    model, path, X = trained
    for call in (iwae_bound, evaluate_model):
        with pytest.raises(UserError, match="progress must be True or False, not 'no'"):
            call(model, X[:2], k=2, progress="no")
        with pytest.raises(UserError, match=r"k must be at most 100,000,000 \(each sample is a decoder pass"):
            call(model, X[:2], k=[5, 10**12])
    proc = _cli(path, "--k", "1e12", "--test-images", 2, "--backend", "cpu")
    assert proc.returncode == 2 and "k must be at most 100,000,000" in proc.stderr, proc.stderr


def test_json_to_standard_output(trained, tmp_path):
    """--json - writes the JSON alone to stdout (for a pipe) and the table to stderr; it wrote a file named "-"."""
    _, path, _ = trained
    proc = subprocess.run([sys.executable, "-m", "fastvae.evaluate", str(path), "--k", "1", "--test-images", "20",
                           "--backend", "cpu", "--json", "-"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 20 and [e["k"] for e in report["iwae"]] == [1]
    assert "-IWAE bound" in proc.stderr and not (tmp_path / "-").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastvae.evaluate", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_table_and_json(trained, tmp_path):
    _, path, _ = trained
    out = tmp_path / "eval.json"
    proc = _cli(path, "--k", "1", "10", "--test-images", 50, "--backend", "cpu", "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "-IWAE bound" in proc.stdout and "reconstruction" in proc.stdout
    assert "wrote" not in proc.stdout                   # (--quiet)
    r = json.loads(out.read_text())
    assert {"checkpoint", "backend", "config", "epochs_trained", "images", "seed", "elbo", "iwae", "seconds",
            "machine"} <= set(r)
    assert r["images"] == 50 and r["backend"] == "cpu" and r["epochs_trained"] == 2
    assert set(r["elbo"]) == {"reconstruction", "kl", "total", "constant"} and r["elbo"]["constant"] == 0  # xent
    assert [e["k"] for e in r["iwae"]] == [1, 10]
    assert r["iwae"][1]["nll"] < r["iwae"][0]["nll"]
    assert f"{r['iwae'][1]['nll']:.3f}" in proc.stdout


def test_json_is_strict_rfc_8259_an_undefined_value_is_null(trained, tmp_path):
    _, path, _ = trained
    out = tmp_path / "e.json"
    proc = _cli(path, "--k", "1", "10", "--test-images", 1, "--backend", "cpu", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith(f"wrote {out}")               # (it never said where)
    r = strict_json.loads(out.read_text())
    assert [row["std_error"] for row in r["iwae"]] == [None, None]      # one image: no standard error
    assert "nan" in proc.stdout                                        # the table may say so, in words


@pytest.mark.parametrize("where, says", [("{tmp}", "it is a folder; give a file name"),
                                         ("{tmp}/new/", "it is a folder; give a file name"),     # (wrote file new)
                                         ("/proc/e.json", "cannot write /proc/e.json ("),
                                         ("{tmp}/no/e.json", "does not exist")])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_computing(trained, tmp_path, where, says):
    """--json to a folder, or into a folder that takes no new file (/proc, even for root), is one line and status 2
    before anything is computed (it came after the whole evaluation, minutes on a full test set: a fresh user)."""
    _, path, _ = trained
    proc = _cli(path, "--k", "1", "--test-images", 10, "--backend", "cpu", "--json", where.format(tmp=tmp_path))
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("fastvae: error: cannot write") and says in line, line


def test_json_replaces_an_earlier_report_and_no_other_file(trained, tmp_path):
    """--json onto the checkpoint being measured, a data file or any file that is not an earlier report is refused
    before anything is computed, and the file is left as it was (the run's checkpoint.npz, its metrics.json and its
    data were replaced by the JSON report: an adversarial user's trial lost a trained model so); an earlier report
    is replaced."""
    _, path, _ = trained
    data = tmp_path / "rows.npy"
    np.save(data, np.zeros((3, 4), np.float32))
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    for target in (path, data, notes):
        before = target.read_bytes()
        proc = _cli(path, "--k", "1", "--test-images", 5, "--backend", "cpu", "--json", target)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        line, = proc.stderr.strip().splitlines()
        assert line == (f"fastvae: error: --json {target}: that file exists and is not an earlier fastvae-evaluate "
                        "report (only those are replaced); choose a new file name"), line
        assert target.read_bytes() == before
    out = tmp_path / "eval.json"
    for seed in (1, 2):
        proc = _cli(path, "--k", "1", "--test-images", 5, "--backend", "cpu", "--json", out, "--seed", seed)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(out.read_text())["seed"] == seed


@pytest.mark.parametrize("args, says", [
    (["missing.npz"], "does not exist; pass a training run's folder or its checkpoint.npz"),
    (["{ck}", "--k", "0"], "--k"),
    (["{ck}", "--test-images", "0"], "--test-images"),
    (["{bad}"], "not a readable fastvae checkpoint"),
])
def test_cli_mistakes_exit_2_with_one_line(trained, tmp_path, args, says):
    _, path, _ = trained
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    proc = _cli(*[a.format(ck=path, bad=bad) for a in args], "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastvae: error:") and says in lines[0], proc.stderr


def test_a_stopped_evaluation_closes_its_progress_bar_first(trained, monkeypatch, capsys):
    """A Ctrl-C during evaluate's IWAE closes the bar before the stop line (a fresh user's trial: 'fastvae:
    interrupted' was glued to the bar's line)."""
    from fastvae import evaluate
    path = trained[1]
    calls, real = [], evaluate._log_weights

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(evaluate, "_log_weights", interrupted)
    monkeypatch.setattr(evaluate, "on_terminal", lambda stream: True)      # (the bar is drawn on a terminal only)
    assert evaluate.main([str(path), "--k", "1", "10", "--test-images", "200", "--batch-size", "20"]) == 130
    err = capsys.readouterr().err
    last = [line for line in err.replace("\r", "\n").split("\n") if line.strip()][-1]
    assert last.startswith("fastvae: interrupted"), repr(err[-300:])


def test_a_bare_checkpoint_says_it_is_measured_on_mnist(trained, tmp_path):
    """A run's checkpoint copied away from its metrics.json (which says what it was trained on) was measured on the
    embedded MNIST without a word (a fresh user's trial): one notice says so; --data and --quiet silence it."""
    _, path, _ = trained                                  # (saved by the library: no metrics.json beside it)
    proc = _cli(path, "--k", "1", "--test-images", 20, "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "no metrics.json" in line]
    assert notes == [f"fastvae: no metrics.json beside {path} says which data set it was trained on: measuring it "
                     "on the embedded MNIST (--data PATH for another)"], proc.stderr
    proc = _cli(path, "--k", "1", "--test-images", 20, "--backend", "cpu", "--quiet")
    assert proc.returncode == 0 and "no metrics.json" not in proc.stderr, proc.stderr


def test_the_log_likelihoods_take_rows_and_say_so_otherwise():
    """From an API review: a 1-D input gave einsum's raw "too many subscripts", a list an AttributeError."""
    from fastvae.evaluate import bernoulli_log_likelihood, gaussian_log_likelihood
    rows = [[0.5, -1.0], [2.0, 0.0]]
    for fn in (bernoulli_log_likelihood, gaussian_log_likelihood):
        with pytest.raises(UserError, match=r"logits and x must be arrays of one shape \(n, d\), got \(2,\)"):
            fn(np.zeros(2), np.zeros(2))
        got = fn(rows, [[0.0, 1.0], [1.0, 0.5]])                            # lists of rows are arrays
        assert got.shape == (2,) and got.dtype == np.float64
    x = np.array([[0.0, 1.0], [1.0, 0.5]])
    expect = (x * -np.logaddexp(0, -np.array(rows)) + (1 - x) * -np.logaddexp(0, np.array(rows))).sum(axis=1)
    np.testing.assert_allclose(bernoulli_log_likelihood(rows, x), expect, rtol=1e-12)


def test_the_log_likelihoods_read_targets_as_fastvae_reads_pixels_and_refuse_the_rest():
    """uint8 targets scored -1254 nats where the same images as floats scored -47, without a word (an API trial):
    integer pixels are 0..255, read as x / 255 as everywhere in fastvae; integers with no value above 1, values
    outside the ranges, NaN, text and complex numbers are one-line UserErrors, as are log_mean_exp's and
    gaussian_constant's bad arguments (NumPy's own errors came through)."""
    from fastvae.evaluate import bernoulli_log_likelihood, gaussian_constant, gaussian_log_likelihood
    rand = np.random.default_rng(3)
    logits = rand.standard_normal((5, 17)) * 4
    pixels = rand.integers(0, 256, (5, 17)).astype(np.uint8)
    pixels[0, :2] = 255, 0
    x = pixels / 255.0
    expect = (x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits)).sum(axis=1)
    p = 1 / (1 + np.exp(-logits))
    for given in (pixels, pixels.astype(np.int64), pixels.astype(np.uint16)):
        np.testing.assert_allclose(bernoulli_log_likelihood(logits, given), expect, rtol=1e-12)
        np.testing.assert_allclose(gaussian_log_likelihood(logits, given),
                                   -((p - x) ** 2).sum(axis=1) - 17 / 2 * np.log(np.pi), rtol=1e-12)
    both = (bernoulli_log_likelihood, gaussian_log_likelihood)
    bad = [(both, pixels * 1.0, r"x has values outside \[0, 1\] \(min 0.0, max 255.0\)"),
           (both, x + 1e-9, r"x has values outside \[0, 1\]"),
           (both, pixels.astype(np.int64) * 2, "x holds integers from 0 to 510; integer pixels are 0..255"),
           (both, pixels.astype(np.int16) - 1, "x holds integers from -1 to"),
           (both, (pixels > 128).astype(np.uint8), "x holds integers with no value above 1"),
           (both, np.where(pixels > 9, x, np.nan), r"x has \d+ NaN and 0 infinite values"),
           (both, np.full((5, 17), "a"), "x must be an array of real numbers, got dtype <U1"),
           (both, x + 0j, "x must be an array of real numbers, got dtype complex128")]
    for fns, targets, says in bad:
        for fn in fns:
            with pytest.raises(UserError, match=says):
                fn(logits, targets)
    with pytest.raises(UserError, match="logits must be an array of real numbers, got dtype complex128"):
        bernoulli_log_likelihood(logits + 0j, x)
    for args, says in [((np.zeros((2, 0)),), r"no values to average along axis -1 of `a` \(shape \(2, 0\)\)"),
                       ((3.0,), "takes an array to average along an axis, not a single number"),
                       ((logits, 2), r"axis must be an axis of `a` \(shape \(5, 17\): -2..1\), got 2"),
                       ((logits, 0.5), "axis must be an axis"), ((["a"],), "a must be an array of real numbers")]:
        with pytest.raises(UserError, match=says):
            log_mean_exp(*args)
    np.testing.assert_array_equal(log_mean_exp(logits, np.int64(0)), log_mean_exp(logits.T))
    for d in ("784", -1, 0, 2.5):
        with pytest.raises(UserError, match="d must be a positive integer"):
            gaussian_constant(d)
    assert gaussian_constant(np.int64(784)) == 392 * np.log(np.pi)


def test_format_table_takes_evaluate_models_result_and_refuses_anything_else(trained):
    """format_table's docstring named "the report of run()", which returns a status; evaluate_model's result raised
    KeyError 'epochs_trained' and {} KeyError 'elbo' (an API trial). The result's table names its images, seed and
    time; the command's report keeps its fuller first line (the CLI tests)."""
    from fastvae.evaluate import format_table
    model, _, X = trained
    res = evaluate_model(model, X[:6], k=[1, 3])
    lines = format_table(res).splitlines()
    assert lines[0] == f"6 images, noise seed 0, {res['seconds']:.1f} s"
    assert lines[1] == "nats per image (lower is better)"
    assert f"{res['elbo']['total']:9.3f}" in lines[2] and len(lines) == 6
    assert lines[4].split()[:2] == ["1", f"{res['iwae'][0]['nll']:.3f}"]
    for bad, says in [({}, "a dict without elbo, images, iwae, seconds, seed"), (5, "; got int"),
                      ({k: v for k, v in res.items() if k != "iwae"}, "a dict without iwae$")]:
        with pytest.raises(UserError, match=says):
            format_table(bad)


def test_main_returns_argparses_statuses_too_and_refuses_a_string(capsys):
    """main(argv) is documented to return its exit status: --help, --version and a mistake in the options raised
    SystemExit, and main("ck.npz") read the string letter by letter (an API trial). Every tool's main."""
    from fastvae import plot, train
    from fastvae import evaluate
    assert evaluate.main(iter(["--version"])) == 0 and capsys.readouterr().out.startswith("fastvae ")
    for tool in (evaluate, train, plot):
        assert tool.main(["--help"]) == 0 and "usage:" in capsys.readouterr().out
        assert tool.main(["--version"]) == 0
        assert tool.main(["x", "--no-such-option"]) == 2 and "unrecognized arguments" in capsys.readouterr().err
        with pytest.raises(TypeError, match=r"main takes a list of strings \(as sys.argv\[1:\]\), not 'ck.npz --k 1'; "
                                            r"e.g. main\(\['ck.npz', '--k', '1'\]\)"):
            tool.main("ck.npz --k 1")
        with pytest.raises(UserError, match="main takes a list of strings"):
            tool.main(["ck.npz", 5])
    assert evaluate.main([]) == 2 and "required: checkpoint" in capsys.readouterr().err


def test_a_bound_is_of_one_model_while_a_fit_runs_on_it(trained):
    """iwae_bound holds the model for its whole run: a fit started on another thread while it ran took the model
    between its encoding and its decodings, and the bound was of neither model (an embedder's trial). Now the bound
    is the model's before the fit (the fit waits), and bit for bit what it is alone."""
    import copy
    import threading
    model = copy.deepcopy(trained[0])
    X = trained[2][:20]
    before = iwae_bound(copy.deepcopy(model), X, k=2000, seed=3, batch_size=500)["bound"]
    result = {}
    bound = threading.Thread(target=lambda: result.update(iwae_bound(model, X, k=2000, seed=3, batch_size=500)))
    bound.start()
    time.sleep(0.05)
    fit = threading.Thread(target=lambda: model.fit(load_mnist().train_x[:1000], epochs=2))
    fit.start()
    bound.join()
    fit.join()
    assert model.epoch == trained[0].epoch + 2
    np.testing.assert_array_equal(result["bound"], before)


def test_the_model_is_held_when_passed_by_name(trained):
    """iwae_bound(model=m, ...) ran without the model held (the lock was looked for in the first positional argument
    only: a review's catch), and a wrong keyword was a plain TypeError: both calls take turns the same way."""
    model, _, X = trained
    held = []
    original = type(model)._images

    def spy(self, *args, **kw):
        held.append(self._lock._is_owned())
        return original(self, *args, **kw)
    type(model)._images = spy
    try:
        iwae_bound(model=model, X=X[:2], k=2)
        iwae_bound(model, X[:2], k=2)
    finally:
        type(model)._images = original
    assert held and all(held), held
    with pytest.raises(UserError, match=r"^evaluate_model\(\): got an unexpected keyword argument 'foo'"):
        evaluate_model(model=model, X=X[:2], foo=1)


def test_a_batch_size_above_the_samples_needed_costs_no_memory(trained):
    """batch_size = 10**12 asked NumPy for 62 TiB (a MemoryError naming VAE.decode_logits) to decode 30 samples: the
    decoder's rows are at most the samples asked for, and the bound is the same."""
    model, _, X = trained
    want = iwae_bound(model, X[:3], k=[1, 10], seed=2)
    for call in (iwae_bound, evaluate_model):
        got = call(model, X[:3], k=[1, 10], seed=2, batch_size=10**12)
        if call is iwae_bound:
            np.testing.assert_array_equal(got["bound"], want["bound"])


def test_the_command_line_measures_a_run_at_its_thread_count_and_gives_its_test_loss_to_the_last_bit(tmp_path):
    """A run trained with --threads 1 measured its test loss with OpenBLAS at one thread; fastvae-evaluate ran at
    OpenBLAS's own count and its negative ELBO differed in the last bits (an auditor's trial: 147.35042134 against
    147.35042232). Since 2026-12-07 the cpu backend's numbers are the same at every count (fastvae.inference: the
    workers take the chunks, one OpenBLAS thread each): it takes every CPU unless --threads, records the count that
    ran with the fastvae version and the batch size, and agrees with metrics.json to the last bit at each count."""
    from fastvae import threads
    if threads.detect(None).threads < 2:
        pytest.skip("one CPU: every count runs as one thread, so no other count to compare")
    run = tmp_path / "run"
    # (the seed's layers: OpenBLAS's last bits at 1 and 2 threads differ there, not at 300 x 256 x 256)
    proc = subprocess.run([sys.executable, "-m", "fastvae.train", "--train-images", "1500", "--test-images", "500",
                           "--epochs", "1", "--no-plots", "--quiet", "--backend", "cpu", "--threads", "1", "--out",
                           str(run)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loss = json.loads((run / "metrics.json").read_text())["epochs"][-1]["test"]["total"]
    report = {}
    for given in ([], ["--threads", "2"]):
        out = tmp_path / f"eval{len(given)}.json"
        proc = _cli(run, "--k", "1", "--backend", "cpu", "--json", out, "--quiet", *given)
        assert proc.returncode == 0, proc.stderr
        report[len(given)] = json.loads(out.read_text())
    assert report[0]["elbo"]["total"] == loss == report[2]["elbo"]["total"]
    # the cpu backend takes every CPU (the same numbers): the report says the count that ran
    cpus = threads.detect(None).threads
    assert (report[0]["threads"], report[2]["threads"]) == (cpus, 2)
    assert report[0]["batch_size"] == 2048 and report[0]["fastvae"] == fastvae.__version__
    assert " backend at 1 thread, " in _cli(run, "--k", "1", "--backend", "cpu", "--quiet", "--threads", "1").stdout


def test_a_decoder_that_overflows_is_refused_by_the_bound_in_one_line():
    """The bound's log-likelihoods come from the decoder's chunks directly (no longer through decode_logits, whose
    refusal it took): NaN logits are refused the same way, not averaged into a NaN bound."""
    model = VAE(hidden=(16,), latent=3, backend="cpu", seed=1)
    w = model.state.weights[-1][0]
    w[...] = 3e38
    w[::2] = -3e38                      # inf - inf in every logit's sum
    X = load_mnist().test_x[:5]
    with pytest.raises(UserError, match=r"^decoding these codings overflowed float32 .*extreme size$"):
        iwae_bound(model, X, k=3)


def test_codings_too_large_for_float32_are_named_by_their_size():
    """An encoder whose logvar is 200 (sigma e^100) gives codings of ~1e43, inf in float32: the refusal names their
    size, as the float64 coding it is (it said "|z| up to inf", the coding rounded to float32 first: a review)."""
    model = VAE(hidden=(16,), latent=3, backend="cpu", seed=1)
    heads_bias = model.state.weights[1][1]
    heads_bias[3:] = 200.0                                  # logvar of every coding
    X = load_mnist().test_x[:5]
    with pytest.raises(UserError, match=r"^decoding these codings overflowed float32 \(\|z\| up to ") as info:
        iwae_bound(model, X, k=3)
    size = float(str(info.value).split("up to ")[1].split()[0])
    assert float(np.finfo(np.float32).max) < size < np.inf, str(info.value)


def test_on_the_reference_backend_the_command_line_takes_the_runs_thread_count(tmp_path):
    """There OpenBLAS's count decides the products' last bits, so a run's own count is the default (--threads
    overrides it). (Its test loss does not come back to the bit: a checkpoint holds float32 parameters, the reference
    model trained in float64.)"""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fastvae.train", "--train-images", "300", "--test-images", "200",
                           "--epochs", "1", "--no-plots", "--quiet", "--backend", "reference", "--hidden", "16",
                           "--latent", "2", "--threads", "1", "--out", str(run)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    for given, count in (([], 1), (["--threads", "2"], 2)):
        out = tmp_path / f"eval{len(given)}.json"
        proc = _cli(run, "--k", "1", "--backend", "reference", "--json", out, "--quiet", *given)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text())
        assert report["threads"] == count and report["backend"] == "reference"
