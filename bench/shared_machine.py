"""Epoch times on a shared or limited machine (issue 18's table): idle, one core kept busy by another process, a
1-CPU cgroup quota, a 1-CPU affinity mask; for fastvae as it was (OpenBLAS's own thread count, no pacing), fastvae
now (threads sized and adapted: fastvae.threads), fastvae fixed at 1 thread, and PyTorch eager when installed.

    python -m bench.shared_machine [--images N] [--rounds R] [--situations idle,busy,quota,affinity]
                                   [--variants as-it-was,fastvae,one-thread,torch] [--torch-python PATH]
                                   [--json bench/results/FILE.json]

Every variant is its own process (python -m bench.shared_machine --serve VARIANT), started inside the situation
(its cgroup or affinity set before it imports anything) and warmed up by a throwaway fit; then the variants train
one epoch each, in turns, round after round, so that a ratio is taken between epochs run seconds apart on a machine
whose speed drifts. The table gives each variant's median epoch and its median ratio to fastvae's idle 1-thread
epoch of the same round set. The quota needs root and a cgroup with the cpu controller (v1 or v2); without one the
situation is skipped with the reason. This is a benchmark, not a test: bench/test_shared_machine.py runs a few
steps of it as a smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITUATIONS = ("idle", "busy", "quota", "affinity")
VARIANTS = {"as-it-was": "fastvae as it was (OpenBLAS's own count)", "fastvae": "fastvae (threads sized, adapted)",
            "one-thread": "fastvae forced to 1 thread", "torch": "PyTorch eager"}
BUSY = "while True: pass"


# ---------------------------------------------------------------- the worker: one variant, one epoch per line read

def serve(variant, images, batch_size=150, seed=0):
    from fastvae.data import load_mnist
    x = load_mnist().train_x[:images]
    if variant == "torch":
        from bench.peers import torch_vae
        reason = torch_vae.unavailable()
        if reason:
            print(f"torch: {reason}", file=sys.stderr)
            return 2
        from fastvae.rng import epoch_permutation
        trainer = torch_vae.Trainer(x, batch_size=batch_size, seed=seed)
        trainer.warmup()

        def epoch(k):
            order = epoch_permutation(seed, k, len(x))
            begin = time.perf_counter()
            loss = trainer.epoch(order)
            return time.perf_counter() - begin, loss, None
    else:
        from fastvae import VAE, threads
        if variant == "as-it-was":
            threads.pacer_for = lambda *a, **k: None        # the trainer before fastvae.threads: no pacing
        count = 1 if variant == "one-thread" else None
        VAE(backend="cpu", seed=seed, batch_size=batch_size).fit(x[:batch_size], epochs=1)   # load the kernels
        model = VAE(backend="cpu", seed=seed, batch_size=batch_size, threads=count)

        def epoch(k):
            record = model.fit(x, epochs=1).history[-1]
            return record["seconds"], record["train"]["total"], record.get("threads")
    print(json.dumps({"variant": variant, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        seconds, loss, thr = epoch(int(line))
        print(json.dumps({"seconds": seconds, "loss": loss, "threads": thr}), flush=True)
    return 0


# ---------------------------------------------------------------- situations

class Quota:
    """A cgroup with a 1-CPU quota (v1 cpu.cfs_quota_us = cpu.cfs_period_us, or v2 cpu.max "100000 100000")."""

    def __init__(self):
        self.folder = self.procs = None
        name = f"fastvae-bench-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = next((p for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                   if "cpu" in _read(p / "cgroup.controllers").split()), None)
        problems = []
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                folder = v1 / name
                folder.mkdir()
                (folder / "cpu.cfs_period_us").write_text("100000")
                (folder / "cpu.cfs_quota_us").write_text("100000")
                self.folder, self.procs, self.kind = folder, folder / "cgroup.procs", "cgroup v1 cpu.cfs_quota_us"
                return
            problems.append("no cgroup v1 cpu controller")
            if v2 is not None:
                folder = v2 / name
                folder.mkdir()
                (folder / "cpu.max").write_text("100000 100000")
                self.folder, self.procs, self.kind = folder, folder / "cgroup.procs", "cgroup v2 cpu.max"
                return
            problems.append("no cgroup v2 hierarchy with the cpu controller")
        except OSError as e:
            problems.append(f"{e.strerror} ({e.filename})")
        self.reason = "; ".join(problems)

    def enter(self):                      # in the child, before exec: it and all its threads are limited
        self.procs.write_text(str(os.getpid()))

    def close(self):
        if self.folder is not None:
            for _ in range(50):
                try:
                    self.folder.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def start(variant, images, situation, quota, torch_python):
    python = torch_python if variant == "torch" and torch_python else sys.executable
    cpu = min(os.sched_getaffinity(0))
    preexec = {"quota": quota.enter if quota else None,
               "affinity": (lambda: os.sched_setaffinity(0, {cpu}))}.get(situation)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.pop(name, None)
    proc = subprocess.Popen([python, "-m", "bench.shared_machine", "--serve", variant, "--images", str(images)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=preexec)
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read().strip().splitlines()
        proc.wait()
        return None, err[-1] if err else f"exit status {proc.returncode}"
    return proc, None


def run_situation(situation, variants, images, rounds, torch_python, log):
    quota = busy = None
    if situation == "quota":
        quota = Quota()
        if quota.folder is None:
            return {"skipped": f"no 1-CPU quota can be made here: {quota.reason}"}
    if situation == "affinity" and not hasattr(os, "sched_setaffinity"):
        return {"skipped": "no sched_setaffinity on this platform"}
    servers, result = {}, {"variants": {}}
    try:
        for v in variants:
            proc, why = start(v, images, situation, quota, torch_python)
            if proc is None:
                result["variants"][v] = {"skipped": why}
            else:
                servers[v] = proc
        if situation == "busy":
            busy = subprocess.Popen([sys.executable, "-c", BUSY])
            time.sleep(0.5)
        for k in range(rounds):
            for v, proc in servers.items():        # in turns: one epoch each, round after round
                proc.stdin.write(f"{k}\n")
                proc.stdin.flush()
                answer = json.loads(proc.stdout.readline())
                r = result["variants"].setdefault(v, {"seconds": [], "loss": [], "threads": []})
                r["seconds"].append(answer["seconds"])
                r["loss"].append(answer["loss"])
                r["threads"].append(answer["threads"])
                log(f"{situation:9s} round {k + 1}/{rounds}  {v:11s} {answer['seconds']:7.3f} s")
    finally:
        for proc in servers.values():
            proc.stdin.close()
        for proc in servers.values():
            proc.wait(timeout=120)
        if busy is not None:
            busy.kill()
            busy.wait()
        if quota is not None:
            result["quota"] = quota.kind
            quota.close()
    return result


def table(results, images):
    """Markdown: one row per situation, one column per variant (median s per epoch, and its ratio to fastvae's
    idle 1-thread median)."""
    idle1 = results.get("idle", {}).get("variants", {}).get("one-thread", {}).get("seconds")
    base = statistics.median(idle1) if idle1 else None
    used = [v for v in VARIANTS if any(v in r.get("variants", {}) for r in results.values())]
    scale = "" if images == 60000 else f" ({images} images)"
    lines = ["| situation | " + " | ".join(VARIANTS[v] + scale for v in used) + " |",
             "| --- |" + " ---: |" * len(used)]
    for situation, r in results.items():
        if "skipped" in r:
            lines.append(f"| {situation} | skipped: {r['skipped']} |" + " |" * (len(used) - 1))
            continue
        cells = []
        for v in used:
            got = r["variants"].get(v)
            if got is None or "skipped" in got:
                cells.append("—")
                continue
            med = statistics.median(got["seconds"])
            ratio = f" ({med / base:.2f}×)" if base else ""
            cells.append(f"{med:.2f} s{ratio}")
        lines.append(f"| {situation} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.shared_machine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, default=60000, help="training images per epoch (default 60000)")
    ap.add_argument("--rounds", type=int, default=3, help="epochs of each variant, in turns (default 3)")
    ap.add_argument("--situations", default=",".join(SITUATIONS),
                    help="comma-separated, of " + ", ".join(SITUATIONS) + " (default: all)")
    ap.add_argument("--variants", default="as-it-was,fastvae,one-thread,torch",
                    help="comma-separated, of " + ", ".join(VARIANTS) + " (default: all)")
    ap.add_argument("--torch-python", help="a Python with torch installed, for the torch column (default: this one)")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--quiet", action="store_true", help="print only the table")
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.images)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    from fastvae import machine
    results = {}
    for situation in args.situations.split(","):
        results[situation] = run_situation(situation, args.variants.split(","), args.images, args.rounds,
                                           args.torch_python, log)
    out = {"machine": machine.describe(), "images": args.images, "rounds": args.rounds, "results": results,
           "table": table(results, args.images), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(out["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
