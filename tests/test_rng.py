"""Philox against the Random123 known-answer vectors; the normal transform against its defining properties."""
from pathlib import Path

import numpy as np
import pytest

from fastvae import rng

KAT = Path(__file__).with_name("philox4x32-10-kat.txt")


def kat_rows():
    rows = []
    for line in KAT.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        assert f[0] == "philox4x32" and f[1] == "10"
        words = [int(w, 16) for w in f[2:]]
        rows.append((words[0:4], words[4:6], words[6:10]))
    return rows


def test_kat_file_has_vectors():
    assert len(kat_rows()) >= 3


@pytest.mark.parametrize("ctr,key,expected", kat_rows())
def test_philox_known_answers(ctr, key, expected):
    got = rng.philox4x32_10(np.array([ctr], dtype=np.uint32), np.array([key], dtype=np.uint32))
    assert got[0].tolist() == expected


def test_normals_are_standard_normal():
    eps = rng.normals(seed=7, stream=rng.STREAM_TRAIN, step=3, rows=500, cols=40)
    assert eps.dtype == np.float32 and eps.shape == (500, 40)
    # 20000 draws: the mean's standard error is 0.007, the variance's 0.01; 5 sigma bounds.
    assert abs(eps.mean()) < 0.035
    assert abs(eps.var() - 1.0) < 0.05
    assert np.all(np.isfinite(eps))


def test_normals_are_a_pure_function_of_their_key():
    a = rng.normals(1, 0, 5, 7, 20)
    assert np.array_equal(a, rng.normals(1, 0, 5, 7, 20))
    # rows are independent of how many rows are drawn (a smaller last batch sees the same noise)
    assert np.array_equal(a[:3], rng.normals(1, 0, 5, 3, 20))
    for other in (rng.normals(2, 0, 5, 7, 20), rng.normals(1, 1, 5, 7, 20), rng.normals(1, 0, 6, 7, 20),
                  rng.normals(1, 0, 5 + (1 << 32), 7, 20)):
        assert not np.any(a == other)


@pytest.mark.parametrize("cols", [1, 3, 20, 7])
def test_rows_drawn_from_a_first_row_are_those_rows_of_the_whole_draw(cols):
    """A shard of rows lo..hi (first_row = lo) sees the rows of the unsplit draw, also where lo * cols is no
    multiple of the four normals of a Philox block."""
    whole = rng.normals(9, 0, 4, 11, cols)
    for lo, hi in ((0, 11), (1, 11), (3, 7), (10, 11), (5, 6)):
        assert np.array_equal(rng.normals(9, 0, 4, hi - lo, cols, first_row=lo), whole[lo:hi])


def test_epoch_permutation_is_pure_and_varies_by_epoch():
    p0 = rng.epoch_permutation(0, 0, 1000)
    assert np.array_equal(np.sort(p0), np.arange(1000))
    assert np.array_equal(p0, rng.epoch_permutation(0, 0, 1000))
    assert not np.array_equal(p0, rng.epoch_permutation(0, 1, 1000))
