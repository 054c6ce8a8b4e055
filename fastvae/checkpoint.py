"""Checkpoints: one .npz holding the config (JSON), parameters, Adam's m and v, step and epoch.

Written atomically (temporary file in the same folder, fsync, rename), so a crash never leaves half a file
under the real name; read with allow_pickle=False, so loading never executes code.
"""
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import UserError
from .params import Layout

FORMAT = "fastvae-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    config: Config
    params: np.ndarray
    m: np.ndarray
    v: np.ndarray
    steps: int
    epoch: int


def save(path, config, *, params, m, v, steps, epoch):
    path = Path(path)
    arrays = {
        "format": np.array(FORMAT), "version": np.array(VERSION, dtype=np.int64),
        "config": np.array(json.dumps(config.to_dict())),
        "params": np.asarray(params, dtype=np.float32), "m": np.asarray(m, dtype=np.float32),
        "v": np.asarray(v, dtype=np.float32),
        "steps": np.array(steps, dtype=np.int64), "epoch": np.array(epoch, dtype=np.int64),
    }
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write a checkpoint in {folder} ({e.strerror}); choose a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"could not write checkpoint {path} ({e.strerror}); nothing was overwritten") from None
        raise


def load(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the .npz file written by a training run")
    bad = f"{path} is not a readable fastvae checkpoint"
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != FORMAT:
                raise UserError(f"{bad} (format {str(f['format'])!r})")
            if int(f["version"]) != VERSION:
                raise UserError(f"{bad}: version {int(f['version'])}, this fastvae reads version {VERSION}")
            config = Config.from_dict(json.loads(str(f["config"])))
            ck = Checkpoint(config, f["params"], f["m"], f["v"], int(f["steps"]), int(f["epoch"]))
    except UserError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{bad} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'truncated'}); "
                        "it may be truncated or corrupt") from None
    size = Layout(config).size
    for name in ("params", "m", "v"):
        a = getattr(ck, name)
        if a.dtype != np.float32 or a.shape != (size,):
            raise UserError(f"{bad}: {name} has shape {a.shape}, the architecture in it needs ({size},)")
    if ck.steps < 0 or ck.epoch < 0:
        raise UserError(f"{bad}: negative step or epoch count")
    return ck
