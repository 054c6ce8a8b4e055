"""What a program embedding fastvae relies on (a fresh user's trial of the library, each failing before): a fit it
can stop from any thread or its own signal handler, its own SIGINT handler left alone, models that pickle (a Pool's
worker returns one), and mistakes it can catch by Python's own exception types. Real signals, real files, a real
multiprocessing Pool."""
import copy
import multiprocessing
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

from fastvae import VAE, TrainingDiverged, UserError
from fastvae.data import load_data, load_mnist
from fastvae.errors import StoppedBySignal
from fastvae.training import FIRST_STEPS_NOTE, duration
from signals import sigint_after

SMALL = dict(hidden=(48, 24), latent=4, batch_size=50, backend="cpu", threads=1)


@pytest.fixture(scope="module")
def x():
    return load_mnist().train_x[:2000]


# ---------------------------------------------------------------- stopping a fit

def test_a_stop_event_set_from_another_thread_ends_the_fit_consistently(x):
    """fit(stop=event) returns after the step in progress once the event is set (a fit in a worker thread could
    not be stopped before its end); the model then goes on from that step, bit for bit as one uninterrupted fit."""
    stop = threading.Event()
    model = VAE(seed=2, **SMALL)
    model.fit(x, epochs=1)                           # compiled and warm: the timer below falls inside the next fit
    seen = []
    worker = threading.Thread(target=lambda: seen.append(model.fit(x, epochs=10_000, stop=stop)))
    worker.start()
    time.sleep(0.5)
    stop.set()
    worker.join(timeout=60)
    assert not worker.is_alive() and seen == [model] and model.epoch < 10_000
    assert len(model.history) == model.epoch        # a part epoch leaves no record
    if model.epoch_step:
        model.fit(x, epochs=1)                       # the rest of the stopped epoch
    straight = VAE(seed=2, **SMALL).fit(x, epochs=model.epoch)
    assert np.array_equal(model.sample(5), straight.sample(5)) and model.steps == straight.steps


def test_a_stop_event_set_in_the_callback_or_before_the_fit(x):
    stop = threading.Event()
    model = VAE(seed=4, **SMALL)
    model.fit(x, epochs=5, callback=lambda m, record: record["epoch"] == 2 and stop.set(), stop=stop)
    assert (model.epoch, model.epoch_step, len(model.history)) == (2, 0, 2)      # early stopping, no exception
    steps = model.steps
    model.fit(x, epochs=5, stop=stop)                # still set: returns at once
    assert model.steps == steps
    fresh = VAE(seed=4, **SMALL).fit(np.random.default_rng(0).random((100, 64)), epochs=1, stop=stop)
    assert fresh.input_width == 784 and fresh.steps == 0          # nothing changed, not even a new model's width
    with pytest.raises(UserError, match="stop must be a threading.Event"):
        model.fit(x, epochs=1, stop=True)


def test_a_programs_own_sigint_handler_is_left_alone_and_can_stop_the_fit(x):
    """fit took SIGINT from a handler the program had set (it never saw a Ctrl-C during a fit); now the program's
    handler runs, and it can end the fit through the stop event."""
    stop = threading.Event()
    calls = []

    def mine(signum, frame):
        calls.append(signum)
        stop.set()
    before = signal.signal(signal.SIGINT, mine)
    try:
        model = VAE(seed=6, **SMALL)
        model.fit(x[:500], epochs=1)
        with sigint_after(0.3, handler=None):
            model.fit(x, epochs=10_000, stop=stop)   # no TrainingInterrupted: the program's handler had it
        assert calls == [signal.SIGINT] and model.epoch < 10_000
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)


def test_with_pythons_own_handler_a_ctrl_c_still_stops_the_fit(x):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # (conftest gives the tests that one)
    model = VAE(seed=6, **SMALL)
    model.fit(x[:500], epochs=1)
    with pytest.raises(StoppedBySignal) as caught, sigint_after(0.3):
        model.fit(x, epochs=10_000)
    assert caught.value.signum == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- pickling

def _trained_in_a_worker(seed):
    return VAE(seed=seed, **SMALL).fit(load_mnist().train_x[:300], epochs=1)


def test_a_model_pickles_copies_and_comes_back_from_a_pool(x, tmp_path):
    model = VAE(seed=7, **SMALL).fit(x[:600], epochs=1)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), copy.copy(model)):
        assert (other.steps, other.epoch, other.threads, other.config) == (model.steps, model.epoch, 1, model.config)
        assert other.history == model.history and np.array_equal(other.sample(4), model.sample(4))
        other.fit(x[:600], epochs=1)                 # independent: training the copy leaves the model as it was
        assert model.steps == 12 and other.steps == 24
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        back, = pool.map(_trained_in_a_worker, [8])
    here = _trained_in_a_worker(8)
    assert np.array_equal(back.sample(4), here.sample(4)) and back.history[0]["train"] == here.history[0]["train"]
    broken = VAE(seed=7, lr=1e4, **SMALL)
    with pytest.raises(TrainingDiverged) as diverged:
        broken.fit(x[:600], epochs=3)
    assert diverged.value.step == broken.steps and diverged.value.epoch >= 1
    with pytest.raises(UserError, match="diverged"):
        pickle.dumps(broken)


# ---------------------------------------------------------------- Python's own exception types

def test_file_problems_are_the_oserrors_python_raises(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as missing:
        VAE.load(tmp_path / "nope.npz")
    e = missing.value
    assert isinstance(e, UserError) and e.errno == 2 and e.filename == str(tmp_path / "nope.npz")
    assert str(e).startswith(f"checkpoint {tmp_path / 'nope.npz'} does not exist")     # the one line, as before
    with pytest.raises(FileNotFoundError):
        load_data(tmp_path / "no-data")
    again = pickle.loads(pickle.dumps(e))          # (from a Pool's worker)
    assert type(again) is type(e) and str(again) == str(e) and again.errno == 2
    model = VAE(seed=1, **SMALL)
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="check the permissions") as denied:
            model.save(folder / "m.npz")
        assert "free some space" not in str(denied.value)
    monkeypatch.setenv("HOME", str(tmp_path))
    model.save("~/m.npz")                            # ~ expanded, as a shell does (it made a folder named ~)
    assert (tmp_path / "m.npz").is_file() and VAE.load("~/m.npz").steps == 0


def test_mistakes_are_pythons_own_kinds_too():
    with pytest.raises(TypeError, match="no setting 'foo'") as unknown:
        VAE(foo=1, **SMALL)
    assert isinstance(unknown.value, UserError)
    model = VAE(**SMALL)
    with pytest.raises(AttributeError, match="no attribute 'lr' to set"):
        model.lr = 0.01
    with pytest.raises(AttributeError, match="own state"):
        model.epoch = 3
    assert not hasattr(model, "lr") and getattr(model, "lr", None) is None


def test_a_progress_bar_without_stderr_is_no_bar(x, monkeypatch, capsys):
    """pythonw and some services run with sys.stderr None: fit(progress=True) raised tqdm's AttributeError; nor do
    its epoch lines go to stdout instead."""
    import sys
    monkeypatch.setattr(sys, "stderr", None)
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=1, progress=True)
    assert model.epoch == 1 and capsys.readouterr().out == ""


def test_no_rows_in_gives_no_rows_out(x):
    """encode/decode/reconstruct of zero rows of the right width answer zero rows, as NumPy does (they refused:
    batched code had to treat its last, empty batch apart); fit and evaluate, which have nothing to average over,
    and an empty array of the wrong width still refuse."""
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=1)
    for empty in (x[:0], x[:0].astype(np.float32) / 255, x[:0].reshape(0, 28, 28)):
        mu, logvar = model.encode(empty)
        assert mu.shape == logvar.shape == (0, 4) and mu.dtype == np.float32
        assert model.reconstruct(empty).shape == (0, 784)
    assert model.decode(np.zeros((0, 4))).shape == (0, 784) and model.decode_logits(np.zeros((0, 4))).shape == (0, 784)
    for refused in (lambda: model.evaluate(x[:0]), lambda: model.fit(x[:0], epochs=1),
                    lambda: model.encode(np.zeros((0, 783))), lambda: model.decode(np.zeros((0, 5)))):
        with pytest.raises(UserError):
            refused()


def test_the_first_steps_cost_is_in_the_first_epochs_record():
    """A library fit's first epoch after an install took 20 s compiling without a word or a field saying so (a fresh
    user's trial): the epoch of a process's first steps records them, a later epoch not. A fresh process."""
    import json
    import subprocess
    import sys
    code = ("import json; from fastvae import VAE; from fastvae.data import load_mnist; x = load_mnist().train_x[:200];"
            "m = VAE(hidden=(16,), latent=2, batch_size=50, backend='cpu', threads=1).fit(x, epochs=2);"
            "print(json.dumps([r.get('first_steps_seconds') for r in m.history] + [r['seconds'] for r in m.history]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second, first_epoch, _ = json.loads(proc.stdout.splitlines()[-1])
    assert second is None and 0 < first <= first_epoch, proc.stdout


def test_a_program_without_cupy_gets_its_arrays_back(tmp_path):
    """The first VAE() of a process whose CuPy does not import kept that import's error with its traceback for good,
    and through its frames every caller's locals (400 MB of a program's array, a fresh user's trial). A real failed
    import: a cupy package that raises, first on the path of a fresh process."""
    import subprocess
    import sys
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise ImportError('this CuPy is broken')\n")
    code = ("import gc, weakref, numpy as np\nfrom fastvae import VAE\n"
            "def job():\n    big = np.ones(1000)\n    VAE(hidden=(8,), latent=2)\n    return weakref.ref(big)\n"
            "alive = job(); gc.collect(); print('alive' if alive() is not None else 'freed')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["freed"], proc.stdout


def test_settings_cannot_change_under_a_running_fit_nor_be_deleted(x):
    """A callback (or another thread) that set model.config or model.threads during a fit was accepted: the fit ran
    on at its old settings and the checkpoint recorded the new lr as if it had trained (a fresh user's trial). Now
    refused while a fit runs, taken between fits; `del model.config` broke the model later and is refused."""
    import dataclasses
    refused = []

    def change(model, record):
        for name, value in (("config", dataclasses.replace(model.config, lr=1e-5)), ("threads", 2)):
            with pytest.raises(UserError, match=f"model.{name} cannot change while fit runs") as caught:
                setattr(model, name, value)
            refused.append(str(caught.value))
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=2, callback=change)
    assert len(refused) == 4 and model.config.lr == 0.001 and model.threads == 1
    model.config = dataclasses.replace(model.config, lr=1e-4)    # between fits
    model.threads = 2
    assert model.fit(x[:300], epochs=1).config.lr == 1e-4
    for name in ("config", "history", "threads"):
        with pytest.raises(AttributeError, match=f"model.{name} cannot be deleted"):
            delattr(model, name)
    with pytest.raises(AttributeError, match="VAE has no attribute 'nothing' to delete"):
        del model.nothing
    assert model.evaluate(x[:100])["total"] > 0


def test_none_asked_is_none_done(x):
    """fit(X, epochs=target - model.epoch) once the target is reached, and sample(0), were refused (a fresh user's
    trial): zero epochs train nothing, zero samples are zero rows; negative counts are still refused."""
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=1)
    steps = model.steps
    assert model.fit(x[:300], epochs=0).steps == steps and model.sample(0).shape == (0, 784)
    for refused in (lambda: model.fit(x[:300], epochs=-1), lambda: model.sample(-1)):
        with pytest.raises(UserError, match=r"must be a whole number (>= 0|in \[0, [\d,]+\))"):
            refused()


@pytest.mark.parametrize("failing", ["closed", "broken pipe"])
def test_a_stderr_that_fails_loses_progress_lines_not_the_fit(x, monkeypatch, tmp_path, failing):
    """A service whose log reader went away (a pipe with no reader) or whose stderr was closed: fit(progress=True)
    raised BrokenPipeError (or ValueError) after the first epoch, its record lost and the callback not called (an
    embedder's trial). The lines are lost, the fit is not."""
    import sys
    if failing == "closed":
        stream = open(tmp_path / "log", "w")
        stream.close()
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        stream = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stderr", stream)
    seen = []
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=2, progress=True, callback=lambda m, r: seen.append(r))
    assert model.epoch == 2 and len(model.history) == 2 and seen == model.history
    monkeypatch.undo()
    try:
        stream.close()                  # (a pipe's buffer still holds what could not be written)
    except BrokenPipeError:
        pass


def test_fit_from_its_own_callback_is_refused(x):
    """A fit called from the callback of a fit of the same model trained in its own batch size while the outer fit
    went on in its; a stop then finished the epoch in the inner one's, some rows trained twice (an embedder's
    trial). Refused in one line; the outer fit goes on; another model may fit there."""
    model = VAE(seed=1, **SMALL)
    other = VAE(seed=2, **SMALL)
    said = []

    def callback(m, record):
        try:
            m.fit(x[:300], epochs=1, batch_size=100)
        except UserError as e:
            said.append(str(e))
        other.fit(x[:300], epochs=1)

    model.fit(x[:300], epochs=2, callback=callback)
    assert said == ["fit cannot be called while this model's fit runs (from its callback): return from the "
                    "callback, and fit again after it; a stop=event set in the callback ends the fit early"] * 2
    assert model.epoch == 2 and model.config.batch_size == 50 and model.steps == 12 and other.epoch == 2


def test_progress_into_a_log_is_a_line_per_epoch(x, capsys):
    """progress=True with stderr in a file or pipe wrote tqdm's redraws (carriage returns, cleared at each epoch's
    end: nothing stayed in a log; two fresh users' trials): there it is one line per epoch, the bar stays for a
    terminal (tests/terminal.py's tests)."""
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=2, validation=x[:100], progress=True)
    err = capsys.readouterr().err
    # (the line before this process's first steps, where this test fits first: the next test's)
    lines = [line for line in err.splitlines() if FIRST_STEPS_NOTE not in line]
    assert "\r" not in err and len(lines) == 2, err
    for record, line in zip(model.history, lines):
        assert line.startswith(f"epoch {record['epoch']}: train loss {record['train']['total']:.3f} per image, "
                               f"test {record['test']['total']:.3f} (its pass {duration(record['test_seconds'])}), ")
        assert 0 < record["test_seconds"] < 60
        assert line.endswith((" img/s", "img/s, loading the kernels included")), line


def test_a_models_codings_can_be_read_between_epochs_from_its_fits_callback(x):
    """The README's way to look at a model while it trains (an encode from another thread waits for the whole fit):
    the callback runs between epochs on the fit's thread, and its encode gives the codings of the model as it is
    after that epoch, the same bits as a model fitted that far and encoded after."""
    seen = []
    VAE(seed=4, **SMALL).fit(x[:300], epochs=2, callback=lambda model, record: seen.append(model.encode(x[:7])))
    for epochs, (mu, logvar) in enumerate(seen, start=1):
        after = VAE(seed=4, **SMALL).fit(x[:300], epochs=epochs).encode(x[:7])
        np.testing.assert_array_equal(mu, after[0])
        np.testing.assert_array_equal(logvar, after[1])
    assert not np.array_equal(seen[0][0], seen[1][0])


def test_without_a_bar_the_first_steps_are_said_before_they_load_the_kernels():
    """progress=True in a log or a notebook (no terminal): the first epoch's line came only after the kernels'
    compile, which a notebook cell sat through blank for 20 s, its interrupt acting only at the first step's end (a
    notebook user's trial). A line says so before the first steps of a process, once (whether they load the kernels
    from the cache, as here, or compile them); a real process, its stderr a pipe."""
    import subprocess
    import sys
    code = ("import numpy as np; from fastvae import VAE; from fastvae.data import load_mnist; "
            f"x = load_mnist().train_x[:200]; VAE(**{SMALL!r}).fit(x, epochs=2, progress=True); "
            f"VAE(**{SMALL!r}).fit(x, epochs=1, progress=True)")     # (the file's model: compiled by its tests)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines[0] == f"epoch 1: {FIRST_STEPS_NOTE}; Ctrl-C stops after them" and len(lines) == 4, lines
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1", "epoch 2", "epoch 1"], lines
    assert lines[1].endswith(", loading the kernels included") and FIRST_STEPS_NOTE not in "".join(lines[2:])


def test_a_model_made_before_its_module_was_reloaded_still_refuses_unknown_attributes():
    """importlib.reload(fastvae.model) in a notebook made earlier models look like a user's subclass of VAE, which
    keeps what it sets: `model.lr = 0.2` was taken without a word (a notebook user's trial). A subclass still keeps
    what it sets. In a process of its own: a reload here would change the class under the other tests."""
    import subprocess
    import sys
    code = ("import importlib, fastvae, fastvae.model as fm\n"
            "m = fastvae.VAE(hidden=(8,), latent=2, backend='cpu')\n"
            "importlib.reload(fm)\n"
            "try:\n    m.lr = 0.2\n    print('taken')\nexcept AttributeError as e:\n    print(e)\n"
            "class Mine(fm.VAE):\n    pass\n"
            "k = Mine(hidden=(8,), latent=2, backend='cpu')\nk.note = 3\nprint(k.note)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["VAE has no attribute 'lr' to set: lr is a setting in model.config "
                                        "(model.config = dataclasses.replace(model.config, lr=...) for a training "
                                        "setting)", "3"], done.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_another_thread_fits_a_model_is_told_not_left_waiting(x):
    """A process forked (multiprocessing's fork start method) while another thread of the parent fits a model: the
    model's lock is held in the child by a thread it does not have, and every call on the model waited forever (an
    embedder's trial). The child's calls on it are refused in one line; another model works there."""
    from threadpoolctl import threadpool_info
    from fastvae import threads
    model = VAE(seed=1, **SMALL).fit(x[:300], epochs=1)       # (compiled)
    other = VAE(seed=2, **SMALL).fit(x[:300], epochs=1)
    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    stop = threading.Event()
    fitting = threading.Thread(target=lambda: model.fit(x, epochs=10_000, stop=stop))
    fitting.start()
    while model.steps < 20:                                    # the fit holds the model
        time.sleep(0.01)
    context = multiprocessing.get_context("fork")
    answers = context.Queue()

    def child():
        try:
            model.encode(x[:2])
            answers.put("encoded")
        except UserError as e:
            answers.put(str(e))
        answers.put(other.encode(x[:2])[0].shape)
        # the parent's fit holds no BLAS counts here: they are as before it (a review's catch)
        answers.put((threads._HELD.holders, [lib["num_threads"] for lib in threadpool_info()
                                             if lib["user_api"] == "blas"]))

    process = context.Process(target=child)
    process.start()
    stop.set()
    try:
        said = answers.get(timeout=120)
        assert said.startswith("this model was in use by another thread of the parent process when this process "
                               "was forked from it"), said
        assert answers.get(timeout=120) == (2, SMALL["latent"])
        assert answers.get(timeout=120) == (0, blas)
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
        fitting.join()
