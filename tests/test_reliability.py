"""Runs are never lost: bit-exact resume (at an epoch boundary and after Ctrl-C mid-epoch), the divergence guard,
and a full disk while saving. Every run here is a real subprocess of the CLI on a slice of the embedded MNIST."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastvae import VAE, UserError, checkpoint
from fastvae.data import load_mnist
from fastvae.errors import TrainingDiverged
from terminal import Terminal

# long enough per epoch (200 steps of the seed's widths) for a Ctrl-C to land inside one
# one fixed thread count: OpenBLAS's products round differently at 1 and 2 threads, and an adapted count
# (fastvae.threads) follows the machine's load, which differs between the runs compared here
RUN = ["--train-images", "6000", "--test-images", "300", "--batch-size", "30", "--seed", "4",
       "--backend", "cpu", "--no-plots", "--threads", "1"]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fastvae.train", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def final_state(run_dir):
    ck = checkpoint.load(run_dir / "checkpoint.npz")
    return ck, {k: getattr(ck, k) for k in ("params", "m", "v")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 3 epochs without a stop."""
    out = tmp_path_factory.mktemp("straight")
    proc = cli(*RUN, "--epochs", "3", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return final_state(out)


def assert_same_run(run_dir, straight):
    ck, arrays = final_state(run_dir)
    ref_ck, ref_arrays = straight
    assert (ck.epoch, ck.steps, ck.epoch_step) == (ref_ck.epoch, ref_ck.steps, 0)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, ref_arrays[name], err_msg=f"{name} differs from the uninterrupted run")


def start_and_wait_inside_epoch(out, epoch=2, **popen):
    """A 3-epoch training process, returned once tqdm's progress shows it 25 steps into `epoch` (of 200): its stderr
    a terminal (the bar is drawn only there), read through proc.stderr (a tests/terminal.py Terminal)."""
    terminal = Terminal()
    proc = subprocess.Popen([sys.executable, "-m", "fastvae.train", *RUN, "--epochs", "3", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=terminal.slave, **popen)
    terminal.close_slave()
    proc.stderr = terminal
    seen = b""
    deadline = time.monotonic() + 300
    mark = f"epoch {epoch}: ".encode()
    while mark not in seen or b" 25/200" not in seen.split(mark, 1)[1]:
        chunk = terminal.read_chunk()
        assert chunk and time.monotonic() < deadline, seen.decode(errors="replace")[-500:]
        seen += chunk
    return proc


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A run a script starts in the background (`cmd &`: the shell starts it with SIGINT ignored) must not stop for
    a Ctrl-C meant for the script (it took SIGINT over and stopped with status 130; a fresh user's trial)."""
    proc = start_and_wait_inside_epoch(tmp_path, epoch=1,
                                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    proc.send_signal(signal.SIGINT)
    proc.stderr.read()
    assert proc.wait(timeout=300) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]["epoch"] == 3


def test_resume_at_an_epoch_boundary_is_bit_exact(tmp_path, straight):
    assert cli(*RUN, "--epochs", "1", "--quiet", "--out", str(tmp_path)).returncode == 0
    proc = cli("--resume", str(tmp_path), "--epochs", "3", "--no-plots", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(tmp_path, straight)


@pytest.mark.parametrize("signum,status,how", [(signal.SIGINT, 130, b"Ctrl-C"), (signal.SIGTERM, 143, b"SIGTERM")])
def test_ctrl_c_mid_epoch_saves_and_resume_is_bit_exact(tmp_path, straight, signum, status, how):
    """A Ctrl-C, or a SIGTERM (plain `kill`, `timeout`, a batch scheduler: it killed the run, losing its epoch, a
    fresh user's trial), stops after the step in progress and saves it; the resumed run ends with the same bits."""
    proc = start_and_wait_inside_epoch(tmp_path)
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == status, rest.decode(errors="replace")
    assert b"stopped by " + how + b" after step" in rest and b"--resume" in rest and b"Traceback" not in rest
    ck = checkpoint.load(tmp_path / "checkpoint.npz")
    assert ck.epoch == 1 and 25 <= ck.epoch_step < 200, "stopped inside epoch 2, after the step in progress"
    proc = cli("--resume", str(tmp_path), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(tmp_path, straight)
    # the done line names the part epoch it timed first (it read as a slow first epoch: a fresh user's trial)
    assert "per epoch after the first (the rest of epoch 2, " in proc.stdout.splitlines()[-1], proc.stdout


def test_the_resume_command_printed_after_ctrl_c_in_the_first_epoch_works(tmp_path, straight):
    proc = start_and_wait_inside_epoch(tmp_path, epoch=1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read().decode(errors="replace")
    assert proc.wait(timeout=120) == 130, rest
    command = rest.split("continue with: ", 1)[1].split()
    assert command[0] in ("python", sys.executable) and command[1:3] == ["-m", "fastvae.train"], rest
    proc = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(tmp_path, straight)


def test_sigkill_mid_epoch_loses_at_most_that_epoch(tmp_path, straight):
    proc = start_and_wait_inside_epoch(tmp_path)
    proc.kill()                                              # SIGKILL: no handler, no last save
    proc.wait(timeout=60)
    ck = checkpoint.load(tmp_path / "checkpoint.npz")        # the epoch-1 checkpoint, whole
    assert (ck.epoch, ck.epoch_step) == (1, 0)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    proc = cli("--resume", str(tmp_path), "--no-plots", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(tmp_path, straight)


def test_divergence_stops_with_the_step_and_writes_nothing_bad(tmp_path):
    proc = cli(*RUN, "--epochs", "2", "--lr", "1000", "--quiet", "--out", str(tmp_path))
    assert proc.returncode == 3
    line, = proc.stderr.strip().splitlines()
    assert "diverged at step" in line and "lower the learning rate (now 1000), e.g. --lr 100, with" in line
    assert "VAE" not in line, line                       # (the library's advice is noise on the command line)
    assert not (tmp_path / "checkpoint.npz").exists()
    # what it said was kept was not there; the run it advised was refused (the folder holds a run): a fresh user
    assert line.endswith("with --overwrite to start this run again (or another --out); no checkpoint was saved (no "
                         "epoch ended)"), line
    # with its bar: the error starts a line of its own (it was appended to the bar, which still said "loading")
    proc = cli(*RUN, "--epochs", "1", "--lr", "1000", "--out", str(tmp_path), "--overwrite")
    last = proc.stderr.strip().replace("\r", "\n").splitlines()[-1]
    assert proc.returncode == 3 and last.startswith("fastvae: error: training diverged"), proc.stderr
    proc = cli(*RUN, "--epochs", "1", "--quiet", "--out", str(tmp_path), "--overwrite")
    assert proc.returncode == 0, proc.stderr


def test_a_diverged_model_keeps_the_last_good_checkpoint(tmp_path):
    x = load_mnist().train_x[:600]
    model = VAE(hidden=(32, 16), latent=3, batch_size=50, backend="cpu").fit(x, epochs=1)
    model.save(tmp_path / "ck.npz")
    good = (tmp_path / "ck.npz").read_bytes()
    model.config = dataclasses.replace(model.config, lr=1e4)
    with pytest.raises(TrainingDiverged, match=r"at step 1[3-9]|at step 2\d"):
        model.fit(x, epochs=1)
    with pytest.raises(UserError, match="diverged"):
        model.save(tmp_path / "ck.npz")
    assert (tmp_path / "ck.npz").read_bytes() == good


def test_a_step_stopped_part_way_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A step that raises part-way (here a KeyboardInterrupt, as a second Ctrl-C gives, right after the calling thread's
    shard marked the heads done: the other thread may already have updated the decoder) leaves the model half-stepped:
    save() refuses it in one line, the last good checkpoint stays as it was, and fit() refuses to go on from it."""
    from fastvae.backends import get_backend
    from fastvae.threads import affinity_count
    if affinity_count() < 2:
        pytest.skip("the step splits between threads only where the process may run on two CPUs")
    x = load_mnist().train_x[:600]
    model = VAE(hidden=(32, 16), latent=3, batch_size=64, backend="cpu", threads=2).fit(x, epochs=1)
    model.save(tmp_path / "ck.npz")
    good = (tmp_path / "ck.npz").read_bytes()
    be = get_backend("cpu")
    real, calls = be.layer_done, []

    def mark(ready, layer):
        real(ready, layer)
        calls.append(layer)
        if layer == 2 and len(calls) > 40:            # (the heads; some steps in, past the recording of the replays)
            raise KeyboardInterrupt
    monkeypatch.setattr(be, "layer_done", mark)
    monkeypatch.setenv("FASTVAE_CAPTURE", "0")      # (read at import: the step below calls the kernels from Python)
    monkeypatch.setattr("fastvae.step.RECORD_SHARDS", False)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, epochs=1)
    assert model.step_broken
    with pytest.raises(UserError, match="stopped part-way") as e:
        model.save(tmp_path / "ck.npz")
    assert "\n" not in str(e.value)
    assert (tmp_path / "ck.npz").read_bytes() == good
    with pytest.raises(UserError, match="load the last checkpoint"):          # nor trained further
        model.fit(x, epochs=1)


def test_an_interrupt_between_an_epochs_last_step_and_its_end_leaves_a_model_that_goes_on(tmp_path, monkeypatch):
    """A KeyboardInterrupt (a second Ctrl-C) after an epoch's last step but before its end (here in the device
    synchronisation that follows the loop) leaves every batch done and the epoch not counted: the model saves, loads
    and trains on (found by a fresh user's trial: every later fit refused it). The next fit runs that epoch's end, with
    the record of the uninterrupted epoch (since 2026-12-07: the epoch was counted as done without one), as one of its
    epochs."""
    from fastvae.backends import get_backend
    x = load_mnist().train_x[:600]
    settings = dict(hidden=(32, 16), latent=3, batch_size=150, backend="cpu", threads=1)
    straight = VAE(**settings).fit(x, epochs=2)
    model = VAE(**settings)
    be = get_backend("cpu")
    real = be.synchronize

    def once():
        monkeypatch.setattr(be, "synchronize", real)
        raise KeyboardInterrupt
    monkeypatch.setattr(be, "synchronize", once)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, epochs=1)
    assert (model.epoch, model.epoch_step, model.steps) == (0, 4, 4)
    model.save(tmp_path / "ck.npz")
    again = VAE.load(tmp_path / "ck.npz", backend="cpu", threads=1)
    for m in (model, again):
        m.fit(x, epochs=1)
        assert (m.epoch, m.epoch_step, m.steps) == (1, 0, 4)
        assert m.history[-1]["train"] == straight.history[0]["train"]
        m.fit(x, epochs=1)
        assert (m.epoch, m.epoch_step, m.steps) == (2, 0, 8)
        assert np.array_equal(m.state.params, straight.state.params)


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
from fastvae.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path):
    small = ["--train-images", "600", "--test-images", "100", "--hidden", "64", "32", "--latent", "4",
             "--batch-size", "50", "--backend", "cpu", "--no-plots", "--quiet"]
    assert cli(*small, "--epochs", "1", "--out", str(tmp_path)).returncode == 0
    before = (tmp_path / "checkpoint.npz").read_bytes()
    assert len(before) > 300_000, "the checkpoint must be larger than the simulated free space"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, "--resume", str(tmp_path), "--epochs", "2",
                           "--no-plots", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "could not write checkpoint" in line and "nothing was overwritten" in line
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["checkpoint.npz", "metrics.json"]


@pytest.mark.parametrize("args,phrase", [
    (["--hidden", "10"], "cannot be changed when resuming"),
    (["--epochs", "1"], "already trained 1 of 1 epochs"),
])
def test_resume_refuses_what_it_cannot_honour(tmp_path, args, phrase):
    assert cli("--train-images", "300", "--test-images", "50", "--batch-size", "50", "--hidden", "16",
               "--latent", "2", "--epochs", "1", "--quiet", "--no-plots", "--out", str(tmp_path)).returncode == 0
    proc = cli("--resume", str(tmp_path), "--backend", "cpu", *args)
    assert proc.returncode == 2 and phrase in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_resume_from_a_folder_that_is_not_a_run(tmp_path):
    proc = cli("--resume", str(tmp_path))
    assert proc.returncode == 2 and "not a fastvae run folder" in proc.stderr


_TRAIN_AND_PRINT = """
import numpy as np
from fastvae import VAE
from fastvae.data import load_mnist
mnist = load_mnist()
model = VAE(hidden=(40, 24), latent=3, backend="cpu", seed=3, batch_size=50, threads=1)
model.fit(mnist.train_x[:200], epochs=1)
params = model.backend.to_host(model.state.params)
print(repr(model.evaluate(mnist.test_x[:200])["total"]), params.view(np.uint32).sum(dtype=np.uint64))
"""


def test_freshly_compiled_kernels_and_their_cached_copies_give_the_same_bits(tmp_path):
    """Numba compiles the kernels in the first process and loads them from its cache in the next: both must train and
    evaluate to the same bits (a resumed run, or a checkpoint's metrics read in another process, depend on it). A
    fastmath reduction once broke this: the loss summed in another order, 1e-8 apart."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", _TRAIN_AND_PRINT], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    fresh, cached = (run.stdout.strip().splitlines()[-1] for run in runs)
    assert fresh == cached


_SMALL = ["--train-images", "300", "--test-images", "60", "--batch-size", "50", "--hidden", "16", "--latent", "2",
          "--backend", "cpu", "--threads", "1", "--quiet"]


def _stop_line(capsys):
    line, = capsys.readouterr().err.strip().splitlines()
    return line


def _command(line, after):
    """The command a stop line suggests (shlex: paths may need quoting), as an argv for this interpreter."""
    import shlex
    words = shlex.split(line.split(after, 1)[1])
    assert words[0] in ("python", sys.executable) and words[1] == "-m", line    # (cli.command_of)
    return [sys.executable, *words[1:]]


@pytest.mark.parametrize("second", [False, True])
def test_ctrl_c_in_the_last_epochs_end_says_the_run_is_done(tmp_path, monkeypatch, capsys, second):
    """A Ctrl-C that lands in the last epoch's end, as its checkpoint is written: a first one (a real SIGINT to this
    process, whose handler is fit's) or a second, which stops at once (a KeyboardInterrupt right after the save).
    Every epoch is trained, so the run says so, with the command that draws the figures it did not draw, not a
    --resume that would refuse ("already trained 2 of 2 epochs"). The folder's name has a space: the command quotes
    it, and it works."""
    from fastvae import train
    from fastvae.model import VAE
    out = tmp_path / "a run"
    real_save, sent = VAE.save, []

    def save_then_ctrl_c(self, *args, **kw):
        real_save(self, *args, **kw)
        if self.epoch == 2 and not sent:
            sent.append(True)
            if second:
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(VAE, "save", save_then_ctrl_c)
    status = train.main([*_SMALL, "--epochs", "2", "--out", str(out)])
    line = _stop_line(capsys)
    assert status == 130 and sent and "after the last epoch (2 of 2)" in line and "--resume" not in line, line
    assert checkpoint.load(out / "checkpoint.npz").epoch == 2
    assert not (out / "loss.png").exists()                        # the final figures were not drawn
    command = _command(line, "draw its figures with: ")
    proc = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "loss.png").exists() and (out / "samples.png").exists()


@pytest.mark.parametrize("signum,status,how", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_while_the_final_figures_are_drawn_gives_their_command(tmp_path, monkeypatch, capsys, signum, status,
                                                                      how):
    """A Ctrl-C or a SIGTERM (a real signal to this process) while the final figures are drawn: the line says every
    epoch is trained and gives the command that draws them (a SIGTERM killed the run there without a word: a fresh
    user's trial)."""
    from fastvae import plot, train

    def interrupted(*args, **kw):
        os.kill(os.getpid(), signum)
        time.sleep(5)                                   # (the handler raises before this ends)
    monkeypatch.setattr(plot, "write_figures", interrupted)
    got = train.main([*_SMALL, "--epochs", "1", "--out", str(tmp_path)])
    line = _stop_line(capsys)
    assert got == status and line.startswith(f"fastvae: {how} after the last epoch (1 of 1)"), line
    monkeypatch.undo()
    proc = subprocess.run([*_command(line, "draw its figures with: "), "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and (tmp_path / "loss.png").exists(), proc.stderr


def test_ctrl_c_before_training_starts_writes_nothing(tmp_path, monkeypatch, capsys):
    from fastvae import train

    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "load_data", interrupted)
    out = tmp_path / "run"
    assert train.main([*_SMALL, "--epochs", "1", "--out", str(out)]) == 130
    assert "before the run started; nothing was written" in _stop_line(capsys) and not out.exists()


@pytest.mark.parametrize("saved_first", [False, True])
def test_a_second_ctrl_c_says_what_was_kept(tmp_path, monkeypatch, capsys, saved_first):
    """A second Ctrl-C stops a step at once (a KeyboardInterrupt out of fit: here raised in a step of the second
    epoch, or of the first, before any checkpoint). The line says what is kept and the command that goes on: --resume
    where a checkpoint was saved, else --overwrite (the eighth session's note: it said "the last saved checkpoint is
    kept" where none was). Each command works; without --overwrite the folder's refusal says to use it."""
    from fastvae import step, train
    calls, real_call = [], step.Stepper.__call__
    stop_at = 9 if saved_first else 2                             # 6 steps an epoch

    def interrupted(self, idx):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        real_call(self, idx)
    monkeypatch.setattr(step.Stepper, "__call__", interrupted)
    status = train.main([*_SMALL, "--no-plots", "--epochs", "2", "--out", str(tmp_path)])
    line = _stop_line(capsys)
    assert status == 130, line
    monkeypatch.setattr(step.Stepper, "__call__", real_call)
    if saved_first:
        assert "the checkpoint of epoch 1 is kept" in line and checkpoint.load(tmp_path / "checkpoint.npz").epoch == 1
        command = _command(line, "continue with: ")
        assert command[3:] == ["--resume", str(tmp_path)], line
        proc = subprocess.run([*command, "--no-plots", "--quiet"], capture_output=True, text=True, timeout=300)
    else:
        assert "before the run saved a checkpoint" in line and not (tmp_path / "checkpoint.npz").exists(), line
        assert "--resume" not in line and line.endswith(f"--out {tmp_path} --overwrite")
        refused = cli(*_SMALL, "--no-plots", "--epochs", "2", "--out", str(tmp_path))
        assert refused.returncode == 2 and "before its first checkpoint" in refused.stderr
        assert "--resume" not in refused.stderr and "--overwrite" in refused.stderr
        # the line gives the whole command, its options included (it said "start it again with its options")
        command = _command(line, "start it again with: ")
        assert command[3:] == [*_SMALL, "--no-plots", "--epochs", "2", "--out", str(tmp_path), "--overwrite"], line
        proc = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.load(tmp_path / "checkpoint.npz").epoch == 2


def test_a_stop_between_an_epochs_two_writes_loses_no_record(tmp_path, monkeypatch, capsys):
    """An epoch's end writes metrics.json and the checkpoint; a second Ctrl-C between the two (here: whichever
    comes second raises instead of writing, in epoch 2) must leave a run whose --resume ends with one record per
    epoch (a fresh user's trial: with the checkpoint first, epoch 2's record was lost for good)."""
    import json
    from fastvae import jsonfile, train
    from fastvae.model import VAE
    real_save, real_write, order = VAE.save, jsonfile.write, []

    def save(self, *args, **kw):
        order.append(("save", self.epoch))
        if self.epoch == 2 and ("write", 2) in order:
            raise KeyboardInterrupt
        real_save(self, *args, **kw)

    def write(path, data, *args, **kw):
        epochs = len(data.get("epochs", ()))
        order.append(("write", epochs))
        if epochs == 2 and ("save", 2) in order:
            raise KeyboardInterrupt
        real_write(path, data, *args, **kw)
    monkeypatch.setattr(VAE, "save", save)
    monkeypatch.setattr(jsonfile, "write", write)
    assert train.main([*_SMALL, "--no-plots", "--epochs", "3", "--out", str(tmp_path)]) == 130
    line = _stop_line(capsys)
    monkeypatch.undo()
    proc = subprocess.run([*_command(line, "continue with: "), "--no-plots", "--quiet"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_a_stop_line_after_the_progress_bar_has_a_line_of_its_own(tmp_path, monkeypatch, capsys):
    """With the progress bar on, a second Ctrl-C in a step (a KeyboardInterrupt out of it) closes the bar first: the
    stop line is a line of its own, not glued to the bar's (a fresh user's trial)."""
    from fastvae import step, train
    calls, real_call = [], step.Stepper.__call__

    def interrupted(self, idx):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_call(self, idx)
    monkeypatch.setattr(step.Stepper, "__call__", interrupted)
    terminal = Terminal()                               # stderr a terminal: the bar is drawn only there
    stderr = terminal.open_slave()
    monkeypatch.setattr(sys, "stderr", stderr)
    small = [a for a in _SMALL if a != "--quiet"]
    assert train.main([*small, "--no-plots", "--epochs", "1", "--out", str(tmp_path)]) == 130
    stderr.flush()
    terminal.close_slave()
    err = terminal.read().decode(errors="replace")
    terminal.close()
    assert "step/s" in err, err                         # (the bar was drawn)
    last = [line for line in err.replace("\r", "\n").split("\n") if line.strip()][-1]
    assert last.startswith("fastvae: interrupted before the run saved a checkpoint"), repr(err[-300:])


def test_a_ctrl_c_python_drops_in_a_callback_during_the_figures_still_stops_the_run(tmp_path, monkeypatch, capsys):
    """A SIGINT whose KeyboardInterrupt is raised inside a weakref callback is dropped by Python ('Exception ignored
    in ...'): a fresh user's trial got 'done' and exit status 0 after such a Ctrl-C during the final figures (2 of 22
    tries). The run notes the signal and stops as for any Ctrl-C there: status 130, the line with the figures'
    command. Here the signal lands in a real weakref.finalize callback, deterministically."""
    from fastvae import plot, train
    from signals import a_dropped_interrupt
    ran = []
    monkeypatch.setattr(plot, "write_figures", lambda *a, **kw: ran.append(a_dropped_interrupt()))
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)     # Python's, which prints (pytest's warns)
    status = train.main([*_SMALL, "--epochs", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert ran == [None]
    assert status == 130 and "after the last epoch (1 of 1)" in captured.err and "done:" not in captured.out
    # Python's report of the dropped interrupt (9 lines of 'Exception ignored in ...' above the run's line: a fresh
    # user's trial, 4 of 14 Ctrl-Cs) is not printed
    assert "Exception ignored" not in captured.err and "Traceback" not in captured.err, captured.err


def test_the_quiet_ctrl_c_leaves_every_other_dropped_exception_to_the_programs_hook(monkeypatch):
    """CtrlCNoted silences only the interrupt it noted: another exception Python drops (a __del__'s) reaches the hook
    in place, a Ctrl-C dropped before it is a plain one, and the hook is put back after the block, once."""
    from fastvae.sigint import CtrlCNoted
    seen = []

    class Failing:
        def __del__(self):
            raise ValueError("from __del__")
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value)))
    program = sys.unraisablehook
    noted = CtrlCNoted()
    with noted:
        assert sys.unraisablehook is not program        # (SIGINT is Python's default here: the block took it)
        Failing()
        assert seen == [ValueError]
        noted.seen = signal.SIGINT
        Failing()
        assert seen == [ValueError, ValueError]
    noted.__exit__()                                    # (idempotent: a second exit keeps the program's hook)
    assert sys.unraisablehook is program


def test_file_names_with_undecodable_bytes_are_written_to_json_as_their_utf8(tmp_path):
    """Under the C locale a path's non-ASCII bytes reach Python as lone surrogates, which JSON wrote as escapes no
    reader turns back into the name ('run\\udcc3\\udca9': jq printed two U+FFFD; a fresh user's trial): metrics.json
    and evaluate's --json hold the name's UTF-8 text, and bytes that are not UTF-8 as \\xNN; a real subprocess under
    the C locale with UTF-8 mode off."""
    import json
    import os
    import subprocess
    import sys
    from fastvae import jsonfile
    assert jsonfile.strict({"p": "run\udcc3\udca9", "q": ["x\udcff"], "run\udcc3\udca9": 1}) == \
        {"p": "runé", "q": ["x\\xff"], "runé": 1}
    out = tmp_path / "runé"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    proc = subprocess.run([sys.executable, "-m", "fastvae.train", "--epochs", "1", "--train-images", "100",
                           "--test-images", "20", "--hidden", "8", "--latent", "2", "--batch-size", "50", "--no-plots",
                           "--backend", "cpu", "--out", os.fsencode(out)], capture_output=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    proc = subprocess.run([sys.executable, "-m", "fastvae.evaluate", os.fsencode(out), "--k", "1", "--test-images",
                           "20", "--json", os.fsencode(out / "e.json")], capture_output=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    report = json.loads((out / "e.json").read_text(encoding="utf-8"))
    assert report["checkpoint"] == str(out / "checkpoint.npz"), report["checkpoint"]
