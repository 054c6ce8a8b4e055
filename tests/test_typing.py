"""The annotations a program embedding fastvae reads (the package ships py.typed), checked by mypy: the package itself
has no type error (pyproject's [tool.mypy]; 162 before 2026-12-07), a strictly typed program using the README's API
gets the types the docstrings state (arrays, lists of rows, paths and open files accepted; `model.threads = "auto"`),
and misuse is reported (so the annotations are not Any). mypy runs as a subprocess, as a user's CI would run it."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastvae

pytest.importorskip("mypy", reason="mypy is a test dependency (pip install -e '.[test]')")

ROOT = Path(fastvae.__file__).resolve().parent.parent


def _mypy(tmp_path, *args, cwd=ROOT):
    # MYPYPATH: an editable install is found through setuptools' import hook, which mypy does not run; an installed
    # wheel needs nothing (the README says so)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def _program(tmp_path, body):
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_package_has_no_type_error(tmp_path):
    result = _mypy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_strictly_typed_program_gets_the_documented_types(tmp_path):
    program = _program(tmp_path, """\
        from __future__ import annotations

        import dataclasses
        import gzip
        import io
        import threading
        from pathlib import Path
        from typing import Any

        import numpy as np
        from typing_extensions import assert_type

        import fastvae
        from fastvae import VAE, Config, UserError
        from fastvae.evaluate import iwae_bound

        model = VAE(hidden=(64,), latent=2, backend="cpu", threads="auto", beta1=0.9)
        assert_type(model.threads, int | None)
        model.threads = "auto"
        model.threads = None
        model.threads = 2
        assert_type(model.config, Config)
        model.config = dataclasses.replace(model.config, lr=0.01)
        X = np.zeros((10, 784), np.uint8)
        rows = [[0.0] * 784] * 3


        class Flag:
            def is_set(self) -> bool:
                return False


        def seen(m: VAE, record: dict[str, Any]) -> None:
            print(m.epoch, record["train"])


        assert_type(model.fit(X, epochs=1, callback=seen, stop=threading.Event(), validation=rows), VAE)
        assert_type(model.fit(rows), VAE)
        mu, logvar = model.encode(X)
        assert_type(mu, np.ndarray)
        assert_type(model.decode([[0.0, 0.0]]), np.ndarray)
        assert_type(model.sample(3, seed=1), np.ndarray)
        assert_type(model.reconstruct(X), np.ndarray)
        assert_type(model.evaluate(rows), dict[str, float])
        assert_type(model.weights(), list[tuple[np.ndarray, np.ndarray]])
        assert_type(model.history, list[dict[str, Any]])
        VAE(hidden=[64, 64])
        model.fit(X, stop=Flag())
        with gzip.open("m.npz.gz", "wb") as out:
            model.save(out)
        with gzip.open("m.npz.gz", "rb") as saved:
            assert_type(VAE.load(saved), VAE)
        buffer = io.BytesIO()
        model.save(buffer)
        model.save("m.npz")
        model.save(Path("m.npz"))
        assert_type(VAE.load(Path("m.npz"), backend="cpu", threads=1), VAE)
        assert_type(VAE.load(io.BytesIO(buffer.getvalue())), VAE)
        assert_type(iwae_bound(model, X, k=[1, 10]), dict[str, Any])
        assert_type(fastvae.__version__, str)
        try:
            VAE(latent=0)
        except UserError as e:
            print(e)
        """)
    result = _mypy(tmp_path, "--strict", "--follow-imports=silent", str(program), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_misuse_is_reported(tmp_path):
    """Each marked line is an error mypy must name: were an annotation Any, it would pass silently."""
    program = _program(tmp_path, """\
        import numpy as np

        from fastvae import VAE

        model = VAE(hidden=500)  # wrong: a tuple of widths
        model.threads = 1.5  # wrong
        model.encode(np.zeros((1, 784))).shape  # wrong: (mu, logvar)
        model.fit(np.zeros((1, 784)), epochs="3")  # wrong
        VAE.load(3)  # wrong
        model.sample(2).keys()  # wrong
        """)
    wrong = {i for i, line in enumerate(program.read_text().splitlines(), 1) if "# wrong" in line}
    result = _mypy(tmp_path, "--follow-imports=silent", str(program), cwd=tmp_path)
    flagged = {int(m) for m in re.findall(r"^program\.py:(\d+): error", result.stdout, re.M)}
    assert result.returncode == 1 and flagged == wrong, result.stdout + result.stderr


def test_the_backend_declares_exactly_the_contracts_hooks():
    """contract.Backend's class annotations (what a type checker sees) are the hooks and optional parts it sets."""
    from fastvae.backends.contract import HOOKS, OPTIONAL, Backend
    assert set(Backend.__annotations__) - {"impl"} == set(HOOKS) | set(OPTIONAL)
