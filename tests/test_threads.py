"""fastvae.threads: the thread count detected from affinity and cgroup quotas (v1 and v2, as real files in a
temporary root), explicit settings winning, the adaptation's decisions on scripted step times, and training that
switches its thread count mid-run staying correct."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastvae import VAE, UserError, threads


# ---------------------------------------------------------------- detection: cgroup files in a temporary root

def fake_root(tmp_path, cgroup, mountinfo=None, files=()):
    """A folder standing for "/": proc/self/cgroup (and mountinfo unless None), and {relative path: text}."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    if mountinfo is not None:
        (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in dict(files).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("31 23 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
             "32 23 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")


def test_cgroup_v2_quota_of_the_process_cgroup(tmp_path):
    root = fake_root(tmp_path, "0::/user.slice/job\n", V2_MOUNT, {
        "sys/fs/cgroup/user.slice/job/cpu.max": "150000 100000\n",        # 1.5 CPUs
        "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
    })
    assert threads.cgroup_quota(root) == (1.5, "/sys/fs/cgroup/user.slice/job")
    plan = threads.detect(environ={}, root=root, affinity=2)
    assert (plan.threads, plan.adaptive) == (1, True)                    # floor(1.5): a spinning thread never waits
    assert "1.5 CPUs" in plan.reason
    assert threads.detect(environ={}, root=root, affinity=8).threads == 1


def test_cgroup_v2_the_tightest_ancestor_wins_and_max_is_no_limit(tmp_path):
    root = fake_root(tmp_path, "0::/a/b\n", V2_MOUNT, {
        "sys/fs/cgroup/a/b/cpu.max": "400000 100000\n",
        "sys/fs/cgroup/a/cpu.max": "200000 100000\n",
    })
    assert threads.cgroup_quota(root)[0] == 2.0
    assert threads.detect(environ={}, root=root, affinity=8).threads == 2
    unlimited = fake_root(tmp_path / "u", "0::/a\n", V2_MOUNT, {"sys/fs/cgroup/a/cpu.max": "max 100000\n"})
    assert threads.cgroup_quota(unlimited) is None
    assert threads.detect(environ={}, root=unlimited, affinity=8).threads == 8


def test_cgroup_v1_quota_as_docker_cpus_sets_it(tmp_path):
    """docker run --cpus 1: cpu.cfs_quota_us = cpu.cfs_period_us; the cpu controller mounted with cpuacct."""
    root = fake_root(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", V1_MOUNTS, {
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",             # the host's root: no limit
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert threads.cgroup_quota(root) == (1.0, "/sys/fs/cgroup/cpu,cpuacct/docker/abc")
    assert threads.detect(environ={}, root=root, affinity=2).threads == 1


def test_cgroup_v1_inside_a_container_that_sees_its_own_cgroup_at_the_mount_point(tmp_path):
    """The mount's root is the container's cgroup (/docker/abc), so its files sit at the mount point itself."""
    mount = "31 23 0:27 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    root = fake_root(tmp_path, "4:cpu:/docker/abc\n", mount, {
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "50000\n",
        "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    })
    assert threads.cgroup_quota(root)[0] == 0.5
    assert threads.detect(environ={}, root=root, affinity=4).threads == 1    # at least one thread


def test_cgroup_without_mountinfo_looks_in_the_usual_places_and_no_cgroup_means_no_quota(tmp_path):
    root = fake_root(tmp_path, "3:cpu,cpuacct:/\n", None, {
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert threads.cgroup_quota(root)[0] == 3.0
    assert threads.cgroup_quota(tmp_path / "nothing-here") is None
    assert threads.detect(environ={}, root=tmp_path / "nothing-here", affinity=3) == threads.Plan(
        3, True, "3 CPUs in the affinity mask")


def test_the_real_cgroup_quota_is_read_at_most_once_a_second(tmp_path, monkeypatch):
    """detect() read this process's cgroup files in every inference call of several chunks (150 us on the EPYC: an
    encode of 300 images took ~2 ms in all): the real root's quota is read again after QUOTA_SECONDS, a test's folder
    every time."""
    reads, clock = [], [1000.0]
    monkeypatch.setattr(threads, "cgroup_quota", lambda root: reads.append(str(root)) or (1.0, "/q"))
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads, "_quota_read", None)
    plans = [threads.detect(environ={}, affinity=4) for _ in range(3)]
    clock[0] += threads.QUOTA_SECONDS * 0.9
    plans.append(threads.detect(environ={}, affinity=4))
    assert reads == ["/"] and all(p.threads == 1 for p in plans)
    clock[0] += threads.QUOTA_SECONDS * 0.2                 # past the second since the read
    threads.detect(environ={}, affinity=4)
    threads.detect(environ={}, root=tmp_path, affinity=4)
    threads.detect(environ={}, root=tmp_path, affinity=4)
    assert reads == ["/", "/", str(tmp_path), str(tmp_path)]


def test_affinity_of_one_cpu_detected_in_a_real_process():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    cpu = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); from fastvae import threads; "
            "p = threads.detect(environ={}); print(p.threads, p.adaptive)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "True"]


def test_explicit_settings_win_over_detection(tmp_path):
    root = fake_root(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert threads.detect(environ={"OMP_NUM_THREADS": "3"}, root=root, affinity=4) == threads.Plan(
        3, False, "OMP_NUM_THREADS=3")
    both = {"OPENBLAS_NUM_THREADS": "4", "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "8,2"}
    assert threads.detect(environ=both, root=root, affinity=4).threads == 2           # the smallest of those set
    assert threads.detect(environ={"OMP_NUM_THREADS": "junk"}, root=root, affinity=4).threads == 1   # ignored
    assert threads.detect(2, environ=both, root=root, affinity=4) == threads.Plan(2, False, "threads=2 asked for")
    assert threads.detect("auto", environ={}, root=root, affinity=4).adaptive
    # more than the CPUs: the count that runs, and why (threads=64 on 2 CPUs was recorded and shown as 64 threads)
    assert threads.detect(64, environ={}, root=root, affinity=2) == threads.Plan(
        2, False, "threads=64 asked for, 2 run: the CPUs in the affinity mask")
    assert threads.detect(environ={"OMP_NUM_THREADS": "3"}, root=root, affinity=1) == threads.Plan(
        1, False, "OMP_NUM_THREADS=3, 1 run: the CPU in the affinity mask")
    for bad in (0, -1, 1.5, "two", "2", True, float("nan")):     # as every whole-number setting takes them
        with pytest.raises(UserError, match="threads must be"):
            threads.check(bad)
    for good in (2, np.int64(2), 2.0, np.float32(2)):
        assert threads.check(good) == 2 and type(threads.check(good)) is int
    with pytest.raises(UserError, match="threads must be"):
        VAE(backend="cpu", threads=0)


def test_candidate_counts():
    assert threads.candidates(1) == [1]
    assert threads.candidates(2) == [2, 1]
    assert threads.candidates(6) == [6, 3, 1]


# ---------------------------------------------------------------- the adaptation, on scripted step times

class FakeLibraries:
    def __init__(self):
        self.sets, self.closed, self.count = [], False, None

    def set(self, n):
        self.sets.append(n)
        self.count = n

    def release(self):
        self.count = None

    def keep(self):
        pass

    def close(self):
        self.closed = True


class Script:
    """A clock and CPU clock advanced by the steps fed to the pacer, the idle time of the CPUs, and a probe whose
    answer the test sets."""

    def __init__(self, threads_now):
        self.t = self.cpu = self.idle_s = 0.0
        self.threads_now = threads_now
        self.answer = {2: 1.0, 1: 2.0}          # 2 threads twice as fast: the idle machine
        self.probes = 0

    def step(self, pacer, seconds, share=1.0, free=0.0):
        self.t += seconds
        self.cpu += seconds * share * pacer.count
        self.idle_s += seconds * free
        pacer.after_step(seconds)

    def probe(self, libs, counts, current):
        self.probes += 1
        return dict(self.answer)


def scripted_pacer(most=2, adaptive=True):
    libs = FakeLibraries()
    s = Script(most)
    pacer = threads.Pacer(threads.Plan(most, adaptive, "test"), clock=lambda: s.t, cpu_clock=lambda: s.cpu,
                          idle=lambda: s.idle_s, libraries=lambda: libs, probe=s.probe)
    return pacer, s, libs


def test_an_idle_machine_never_probes_nor_switches():
    pacer, s, libs = scripted_pacer()
    with pacer:
        for _ in range(2000):
            s.step(pacer, 0.0075 * (1 + 0.05 * np.sin(s.t)))       # noise well under the jump
    assert s.probes == 0 and libs.sets == [2] and libs.closed
    assert pacer.record() == {"count": 2, "changes": [{"step": 0, "threads": 2, "reason": "start: test"}]}


def test_a_busy_core_switches_to_one_thread_and_back_when_it_is_free():
    pacer, s, libs = scripted_pacer()
    with pacer:
        for _ in range(100):
            s.step(pacer, 0.0075)
        s.answer = {2: 3.0, 1: 1.0}                  # another process takes a core: 2 threads stall
        for _ in range(60):
            s.step(pacer, 0.025 if pacer.count == 2 else 0.010, share=0.6)
        assert pacer.count == 1 and libs.sets[-1] == 1
        changes = pacer.record()["changes"]
        assert [c["threads"] for c in changes] == [2, 1]
        assert "step time went from 7.50 to 25.00 ms" in changes[1]["reason"]
        for _ in range(300):                         # still busy: no idle CPU, nothing to try
            s.step(pacer, 0.010, free=0.0)
        assert s.probes == 1 and pacer.count == 1
        s.answer = {2: 1.0, 1: 2.0}                  # the other process ends: a CPU is idle
        for _ in range(60):
            s.step(pacer, 0.010, free=1.0)
        assert pacer.count == 2 and s.probes == 2
        assert "CPUs idle" in pacer.record()["changes"][0]["reason"]


def test_a_step_that_compiles_its_replays_is_not_timed():
    """A step where step.Stepper compiled its shards' replays (seconds on one thread: a jump in the step time and a
    low CPU share) neither probes nor switches; the window restarts after it."""
    pacer, s, libs = scripted_pacer()

    class Stepper:
        captures = 0

        def __call__(self, seconds, share, compiles):
            self.captures += compiles
            s.t += seconds
            s.cpu += seconds * share * pacer.count
    timed = pacer.wrap(Stepper())
    with pacer:
        for k in range(400):
            compiles = k in (50, 250)                # e.g. the pacer's count changed: another shard count
            timed(3.0 if compiles else 0.0075, 0.5 if compiles else 1.0, compiles)
    assert s.probes == 0 and libs.sets == [2]
    assert [c["threads"] for c in pacer.record()["changes"]] == [2]


def test_contention_from_the_start_shows_in_the_cpu_share():
    """No jump to see when a fit starts on a busy machine: the threads getting too little CPU time is the sign."""
    pacer, s, libs = scripted_pacer()
    s.answer = {2: 3.0, 1: 1.0}
    with pacer:
        for _ in range(40):
            s.step(pacer, 0.025 if pacer.count == 2 else 0.010, share=0.6)
    assert pacer.count == 1 and s.probes == 1
    assert "the threads got 60% of their CPU time" in pacer.record()["changes"][1]["reason"]


def test_a_probe_that_finds_no_gain_keeps_the_count_and_waits_longer_each_time():
    pacer, s, libs = scripted_pacer()
    s.answer = {2: 1.0, 1: 0.95}                      # 1 thread not clearly faster (GAIN)
    with pacer:
        for _ in range(3000):
            s.step(pacer, 0.01, share=0.5)           # a persistent low share keeps asking
    assert pacer.count == 2 and libs.sets == [2]
    assert 3 <= s.probes <= 8                        # backed off: 1, 2, 4, 8, ... windows


def test_a_fixed_count_is_never_adapted():
    pacer, s, libs = scripted_pacer(adaptive=False)
    s.answer = {2: 9.0, 1: 1.0}
    with pacer:
        for _ in range(500):
            s.step(pacer, 0.05, share=0.3)
    assert s.probes == 0 and libs.sets == [2]
    assert pacer.record()["changes"][0]["reason"] == "start: test (fixed)"


# ---------------------------------------------------------------- real training with switches

@pytest.fixture(scope="module")
def mnist():
    from fastvae.data import load_mnist
    return load_mnist()


def blas_threads():
    """{library: thread count} of every BLAS loaded (SciPy's may join NumPy's during a run: Numba imports SciPy)."""
    from threadpoolctl import threadpool_info
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def numpy_blas(counts):
    """NumPy's BLAS's count (the one the products use) among blas_threads()."""
    return ([n for path, n in counts.items() if "numpy" in path] or list(counts.values()))[0]


def test_switching_threads_mid_training_keeps_training_correct(monkeypatch, mnist):
    """A fit whose pacer switches 2 -> 1 -> 2 threads between steps (every probe says the other count is faster)
    trains as a fixed-count fit does: the cpu backend's workers seen inside the steps follow the switches with
    OpenBLAS at one thread (the workers are the step's threads), the losses and parameters match a run at one fixed
    count to float32 rounding, and the counts are put back after the fit."""
    from fastvae.backends import cpu
    before, workers_before = blas_threads(), cpu.workers.count
    monkeypatch.setattr(threads, "WINDOW_STEPS", 4)
    monkeypatch.setattr(threads, "WINDOW_SECONDS", 0.0)
    monkeypatch.setattr(threads, "detect", lambda t=None: threads.Plan(2, True, "forced"))
    seen = []

    def flip(self, why):                             # a probe that always prefers the other count
        other = 1 if self.count == 2 else 2
        self.count = other
        self._libs.set(other)
        self._note(other, "forced switch")
    monkeypatch.setattr(threads.Pacer, "_try_others", flip)
    # every window probes, whatever the step times were (on a quiet machine nothing else would trigger one)
    monkeypatch.setattr(threads.Pacer, "_window", lambda self, median, share, free: self._try_others("forced"))
    original = threads.Pacer.wrap

    def wrap(self, stepper):
        pacer = self

        class Spy:                                   # one step, or a chunk of steps (step.Stepper.many)
            def __getattr__(self, name):
                return getattr(stepper, name)

            def __call__(self, *a):
                seen.append((pacer.count, cpu.workers.count, numpy_blas(blas_threads())))
                return stepper(*a)

            def many(self, *a):
                seen.append((pacer.count, cpu.workers.count, numpy_blas(blas_threads())))
                return stepper.many(*a)
        return original(self, Spy())
    monkeypatch.setattr(threads.Pacer, "wrap", wrap)

    x = mnist.train_x[:5000]            # 78 batches and a short one: chunks of 1, 24, 25 and 25 (step.Stepper.many)
    kw = dict(hidden=(500, 64), latent=8, batch_size=64, backend="cpu", seed=3)   # 2 shards of 32 rows
    switched = VAE(**kw).fit(x, epochs=1)
    monkeypatch.undo()
    fixed = VAE(**kw, threads=1).fit(x, epochs=1)

    changes = switched.history[-1]["threads"]["changes"]
    assert [c["threads"] for c in changes][:4] == [2, 1, 2, 1] and len(changes) >= 4
    assert all(count == workers and blas == 1 for count, workers, blas in seen), seen
    assert {count for count, _, _ in seen} == {1, 2}
    a, b = switched.history[-1]["train"], fixed.history[-1]["train"]
    assert np.isfinite(a["total"]) and a["total"] == pytest.approx(b["total"], rel=1e-4)
    np.testing.assert_allclose(switched.state.params, fixed.state.params, rtol=0, atol=2e-4)
    after = blas_threads()
    assert {k: after[k] for k in before} == before and cpu.workers.count == workers_before


def test_a_fixed_thread_count_trains_bit_identically_and_is_recorded(mnist):
    x = mnist.train_x[:600]
    kw = dict(hidden=(500, 32), latent=4, batch_size=60, backend="cpu", seed=5, threads=1)
    a, b = VAE(**kw).fit(x, epochs=1), VAE(**kw).fit(x, epochs=1)
    np.testing.assert_array_equal(a.state.params, b.state.params)
    assert a.history[-1]["threads"] == {"count": 1, "changes": [
        {"step": 0, "threads": 1, "reason": "start: threads=1 asked for (fixed)"}]}


def test_auto_after_a_fixed_count_starts_from_its_own_plan_not_the_fixed_count(mnist, monkeypatch):
    """A count the user fixed is not the pacer's finding: a later fit at 'auto' starts from the detected plan (it
    said "kept 1 from the previous fit" and ran a window at 1 thread on 2 idle CPUs: a fresh user's trial)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)       # (the suite's fixed count: here auto must adapt)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads.detect("auto").adaptive
    model = VAE(hidden=(64,), latent=4, batch_size=64, backend="cpu", seed=5, threads=1)
    model.fit(mnist.train_x[:256], epochs=1)
    model.threads = "auto"
    model.fit(mnist.train_x[:256], epochs=1)
    first = model.history[-1]["threads"]["changes"][0]
    assert first["threads"] == threads.detect("auto").threads and "kept" not in first["reason"], first


def test_the_cli_takes_threads_and_metrics_json_records_them(tmp_path):
    from fastvae import train
    out = tmp_path / "run"
    assert train.main(["--backend", "cpu", "--train-images", "300", "--test-images", "100", "--epochs", "1",
                       "--hidden", "16", "--latent", "2", "--no-plots", "--quiet", "--threads", "1",
                       "--out", str(out)]) == 0
    epoch = json.loads((out / "metrics.json").read_text())["epochs"][0]
    assert epoch["threads"]["count"] == 1 and epoch["threads"]["changes"][0]["reason"].endswith("(fixed)")
    assert train.main(["--resume", str(out), "--epochs", "2", "--no-plots", "--quiet"]) == 0   # keeps the count
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["threads"] == 1
    assert metrics["epochs"][1]["threads"]["changes"] == [
        {"step": 2, "threads": 1, "reason": "start: threads=1 asked for (fixed)"}]
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--threads", "0"])


def test_more_threads_than_cpus_says_how_many_run(tmp_path, capsys, monkeypatch):
    """--threads 64 on 2 CPUs ran 2 shards but was shown ("64 threads") and recorded as 64: a fresh user's trial. The
    line names what asked for the count: the option, or the environment variable (it said "--threads 5" for
    OPENBLAS_NUM_THREADS=5, an option never given: another trial), or the run's own count on --resume."""
    from fastvae import train
    cpus = len(os.sched_getaffinity(0))
    small = ["--backend", "cpu", "--train-images", "300", "--test-images", "100", "--hidden", "16", "--latent", "2",
             "--no-plots"]
    tail = f"asks for {cpus + 1} threads: {cpus} run, one per CPU this process may use (its affinity mask)"
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    out = tmp_path / "run"
    assert train.main([*small, "--epochs", "1", "--threads", str(cpus + 1), "--out", str(out)]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "asks for" in line]
    assert said == [f"fastvae: --threads {cpus + 1} {tail}"], said
    epoch = json.loads((out / "metrics.json").read_text())["epochs"][0]
    assert epoch["threads"]["count"] == cpus, epoch["threads"]
    assert train.main(["--resume", str(out), "--epochs", "2"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "asks for" in line]
    assert said == [f"fastvae: the run's threads (its metrics.json) {tail}"], said
    # evaluate says it in the same words (it printed the library's line: "threads=N", the training's last bits)
    from fastvae import evaluate
    assert evaluate.main([str(out), "--k", "1", "--test-images", "20", "--threads", str(cpus + 1)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "asks for" in line] == [f"fastvae: --threads {cpus + 1} {tail}"]
    assert "training" not in err, err
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(cpus + 1))
    assert train.main([*small, "--epochs", "1", "--out", str(tmp_path / "env")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "asks for" in line]
    assert said == [f"fastvae: OPENBLAS_NUM_THREADS={cpus + 1} {tail}"], said


def test_a_loaded_model_takes_a_thread_count(tmp_path, mnist):
    kw = dict(hidden=(64,), latent=4, batch_size=64, backend="cpu", seed=5)
    model = VAE(**kw, threads=2).fit(mnist.train_x[:256], epochs=1)
    model.save(tmp_path / "m.npz")
    assert VAE.load(tmp_path / "m.npz", backend="cpu").threads is None
    loaded = VAE.load(tmp_path / "m.npz", backend="cpu", threads=np.int64(1))
    assert loaded.threads == 1
    loaded.fit(mnist.train_x[:256], epochs=1)
    assert loaded.history[-1]["threads"]["changes"][0]["reason"] == "start: threads=1 asked for (fixed)"
    with pytest.raises(UserError, match="threads must be"):
        VAE.load(tmp_path / "m.npz", backend="cpu", threads="2")


def test_a_fit_in_another_thread_holds_openblas_at_one_thread_too():
    """threadpoolctl lets only the thread that first set OpenBLAS's count change it; a fit in a second thread, after
    the main thread had set and restored it, ran its products at 2 OpenBLAS threads under its 2 workers (8-20x
    slower: a fresh user's trial). The count set from another thread must hold, and be put back after."""
    import threading
    from fastvae.backends import cpu
    main = threads.Libraries(cpu.workers)
    main.set(2)                                      # the main thread takes control of OpenBLAS (threadpoolctl) ...
    before = numpy_blas(blas_threads())
    main.close()                                     # ... and puts it back
    seen = []

    def fit_in_a_thread():
        libs = threads.Libraries(cpu.workers)
        libs.set(2)
        seen.append(numpy_blas(blas_threads()))
        libs.close()
        seen.append(numpy_blas(blas_threads()))
    worker = threading.Thread(target=fit_in_a_thread)
    worker.start()
    worker.join()
    original = numpy_blas(blas_threads())
    assert before == 1 and seen == [1, original], (before, seen, original)


def test_openblas_stays_at_one_thread_until_the_last_of_two_fits_at_once_ends():
    """Two fits in two threads: the first to end must not put OpenBLAS back under the other (whose products would
    run at OpenBLAS's full count under its workers); the last puts back the count from before both."""
    from threadpoolctl import ThreadpoolController
    from fastvae.backends import cpu
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [(lib, lib.get_num_threads()) for lib in controllers]
    for lib in controllers:                         # a count above one to come back to, whatever this machine's is
        threads._set_blas(lib, 2)
    try:
        a, b = threads.Libraries(cpu.workers), threads.Libraries(cpu.workers)
        a.set(2)
        b.set(2)
        a.close()                                   # (and again, as record() and close() both release)
        a.release()
        during = numpy_blas(blas_threads())
        b.close()
        assert during == 1 and numpy_blas(blas_threads()) == 2
    finally:
        for lib, count in before:
            threads._set_blas(lib, count)


def test_a_count_another_library_puts_back_during_a_fit_is_kept_after_it(mnist):
    """Another library limits the BLAS count for a while in another thread (threadpoolctl's threadpool_limits, as
    scikit-learn's calls do) and its block ends while a fit runs: the fit's end put back the count from before the
    fit, the other's limit: the process's BLAS at one thread for good (an embedder's trial). Now the count the other
    library put back is the one left (and the fit's next call sets its own again under it: threads._Held.keep)."""
    import threading
    import time
    from threadpoolctl import ThreadpoolController, threadpool_limits
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [(lib, lib.get_num_threads()) for lib in controllers]
    for lib in controllers:                         # a count above one to come back to, whatever this machine's is
        threads._set_blas(lib, 2)
    try:
        limited, ended, stop = threading.Event(), threading.Event(), threading.Event()

        def other_library():
            with threadpool_limits(limits=1, user_api="blas"):
                limited.set()
                time.sleep(0.3)
            ended.set()
        model = VAE(hidden=(64, 32), latent=4, batch_size=50, backend="cpu", threads=2)
        model.fit(mnist.train_x[:1000], epochs=1)        # (compiled)
        other = threading.Thread(target=other_library)
        other.start()
        limited.wait()
        after = []

        def callback(m, record):                         # two epochs after the other's block ended, stop
            after.append(ended.is_set())
            if sum(after) == 2:
                stop.set()
        model.fit(mnist.train_x[:1000], epochs=10_000, stop=stop, callback=callback)
        other.join()
        assert after[0] is False and sum(after) == 2, after      # (the fit began under the other's limit)
        assert numpy_blas(blas_threads()) == 2           # what the other library put back
    finally:
        for lib, count in before:
            threads._set_blas(lib, count)


@pytest.mark.parametrize("with_workers", [True, False])
def test_a_limit_begun_and_ended_inside_a_fit_and_a_second_fit_leave_the_count_from_before(with_workers):
    """(A review of the fix above.) A threadpool_limits(1) block that begins and ends while a fit holds the counts
    puts back the fit's own count itself: taking its limit for the count to put back left the process at it for
    good. And two fits at once (each Libraries with its own controllers of the one library) are not another
    library to each other: keyed by the library's file, not the controller object, the second fit's count was
    taken for a foreign one."""
    from threadpoolctl import ThreadpoolController, threadpool_limits
    from fastvae.backends import cpu
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [(lib, lib.get_num_threads()) for lib in controllers]
    workers = cpu.workers if with_workers else None
    for lib in controllers:                         # a count above two to come back to
        threads._set_blas(lib, 4)
    try:
        fit = threads.Libraries(workers)
        fit.set(2)
        with threadpool_limits(limits=1, user_api="blas"):
            fit.keep()
        fit.keep()
        fit.release()
        assert numpy_blas(blas_threads()) == 4
        a, b = threads.Libraries(workers), threads.Libraries(workers)
        a.set(3)
        b.set(2)
        a.keep()
        during = numpy_blas(blas_threads())
        a.release()
        b.keep()
        b.release()
        assert during == (1 if with_workers else 2) and numpy_blas(blas_threads()) == 4
    finally:
        for lib, count in before:
            threads._set_blas(lib, count)


def test_a_fit_never_starts_numbas_own_thread_pool():
    """No fastvae kernel is parallel=True (the step's threads are fastvae.workers'), but setting Numba's thread count
    started its threading layer: libgomp loaded and an OpenMP pool of idle threads in every process that fitted
    (threadpoolctl listed it; a fresh user's trial). In a fresh process, as a user's first fit runs."""
    code = """
        import json
        from threadpoolctl import threadpool_info
        from numba.np.ufunc import parallel
        from fastvae import VAE
        from fastvae.data import load_mnist
        VAE(hidden=(24,), latent=2, batch_size=64, backend="cpu", threads=2).fit(load_mnist().train_x[:640], epochs=1)
        print(json.dumps({"started": parallel._is_initialized, "apis": [i["user_api"] for i in threadpool_info()]}))
    """
    import textwrap
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["started"] is False and "openmp" not in got["apis"], got


def test_openblas_runs_at_one_thread_in_evaluate_encode_and_decode_at_every_count(mnist, monkeypatch):
    """Outside a fit OpenBLAS ran at its own count whatever model.threads said: with threads=1, evaluate on a
    shared machine took 3.8 s against 0.13 (a fresh user's trial). Now the workers take the chunks, at one OpenBLAS
    thread each, whatever the count ("auto" too: it ran at OpenBLAS's own count until 2026-12-07). The count inside
    each call is read from OpenBLAS itself, and the previous count is back after."""
    from threadpoolctl import threadpool_info
    from fastvae import step as step_module
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    if not blas or blas[0]["num_threads"] < 2:
        pytest.skip("OpenBLAS runs at one thread here already: nothing to hold")
    before = blas[0]["num_threads"]
    seen = []
    for name in ("evaluate_chunk", "encode", "decode"):
        real = getattr(step_module, name)

        def spy(*args, real=real, **kw):
            seen.append([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"][0])
            return real(*args, **kw)
        monkeypatch.setattr(step_module, name, spy)
    model = VAE(hidden=(16,), latent=2, batch_size=50, backend="cpu", threads=1)
    x = mnist.test_x[:100]
    model.evaluate(x), model.encode(x), model.decode(np.zeros((3, 2)))
    model.threads = None
    model.evaluate(x)
    assert seen == [1] * len(seen) and len(seen) >= 5, seen
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"][0] == before
