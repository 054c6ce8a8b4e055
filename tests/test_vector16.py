"""The explicit 16-lane passes (fastvae.backends.vector16) against the scalar functions they restate, bit for bit:
ELU's bias + activation and the cross-entropy pass, at widths around and between multiples of 16, on fresh random
inputs with NaN, signed zeros, the -17 clamp and overflowing logits mixed in."""
import numpy as np
import pytest
from numba import njit

from fastvae.backends import cpu

WIDTHS = (1, 15, 16, 17, 40, 101, 784)


@njit(cache=False, error_model="numpy")
def _scalar_bias_act(out, b, code):
    for r in range(out.shape[0]):
        for j in range(b.size):
            out[r, j] = cpu._activate(out[r, j] + b[j], code)


@njit(cache=False, error_model="numpy")
def _scalar_cross_entropy(d, b, x):
    """The pass as it was before vector16: element j of a row to partial sum j % 16, the sums in lane order."""
    total = 0.0
    acc = np.zeros(16, np.float32)
    for r in range(d.shape[0]):
        acc[:] = 0.0
        for j in range(b.size):
            term, d[r, j] = cpu._loss_and_dlogit(d[r, j] + b[j], x[r, j], False)
            acc[j % 16] += term
        row = np.float32(0.0)
        for lane in range(16):
            row += acc[lane]
        total += np.float64(row)
    return total


def _inputs(rand, rows, width, scale):
    z = (rand.standard_normal((rows, width)) * scale).astype(np.float32)
    specials = np.float32([np.nan, -0.0, 0.0, -17.0, -17.5, -1e-30, 1e-30, 100.0, -100.0, np.inf, -np.inf])
    at = rand.choice(z.size, min(z.size, specials.size), replace=False)
    z.reshape(-1)[at] = specials[:at.size]
    return z


def _same_bits(a, b):
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("width", WIDTHS)
def test_elu_in_16_lanes_is_the_scalar_elu_bit_for_bit(rand, width):
    out = _inputs(rand, 7, width, 4.0)
    b = (rand.standard_normal(width) * 0.5).astype(np.float32)
    want = out.copy()
    _scalar_bias_act(want, b, cpu.ACTIVATION_CODES["elu"])
    cpu._bias_act(out, b, cpu.ACTIVATION_CODES["elu"])
    assert _same_bits(out, want)


@pytest.mark.parametrize("width", WIDTHS)
def test_cross_entropy_in_16_lanes_is_the_scalar_pass_bit_for_bit(rand, width):
    with np.errstate(invalid="ignore", over="ignore"):
        logits = _inputs(rand, 7, width, 8.0)
        logits[~np.isfinite(logits)] = 0.5         # a NaN or infinite logit makes the loss NaN: checked apart below
        x = (rand.random((7, width)) < 0.3).astype(np.float32) * rand.random((7, width)).astype(np.float32)
        b = (rand.standard_normal(width) * 0.1).astype(np.float32)
        want = logits.copy()
        want_loss = _scalar_cross_entropy(want, b, x)
        loss = np.zeros(2)
        cpu._bias_loss_dlogits(logits, b, x, loss, False)
    assert _same_bits(logits, want)
    assert loss[cpu.LOSS_RECONSTRUCTION] == want_loss


def test_a_nan_logit_reaches_the_loss_and_its_gradient(rand):
    logits = rand.standard_normal((3, 40)).astype(np.float32)
    logits[1, 5] = np.nan
    loss = np.zeros(2)
    cpu._bias_loss_dlogits(logits, np.zeros(40, np.float32), np.zeros((3, 40), np.float32), loss, False)
    assert np.isnan(loss[cpu.LOSS_RECONSTRUCTION]) and np.isnan(logits[1, 5])
    assert np.isfinite(np.delete(logits.reshape(-1), 45)).all()


def test_rows_without_unit_stride_take_the_scalar_loops(rand):
    """Arrays whose rows are not contiguous (a column slice of a wider array): the vector code, which assumes unit
    stride, is not used; the results are the scalar code's, and the columns in between are not touched."""
    wide = _inputs(rand, 5, 80, 4.0)
    wide[~np.isfinite(wide)] = 0.25
    out = wide[:, ::2]
    b = (rand.standard_normal(40) * 0.5).astype(np.float32)
    want = out.copy()
    _scalar_bias_act(want, b, cpu.ACTIVATION_CODES["elu"])
    before = wide.copy()
    cpu._bias_act(out, b, cpu.ACTIVATION_CODES["elu"])
    assert _same_bits(np.ascontiguousarray(out), want) and _same_bits(wide[:, 1::2], before[:, 1::2])

    x = (rand.random((5, 80)) < 0.3).astype(np.float32)[:, ::2]
    logits = (rand.standard_normal((5, 80)) * 3).astype(np.float32)
    view = logits[:, ::2]
    want = np.ascontiguousarray(view)
    want_loss = _scalar_cross_entropy(want, b, np.ascontiguousarray(x))
    before = logits.copy()
    loss = np.zeros(2)
    cpu._bias_loss_dlogits(view, b, x, loss, False)
    assert _same_bits(np.ascontiguousarray(view), want) and loss[cpu.LOSS_RECONSTRUCTION] == want_loss
    assert _same_bits(logits[:, 1::2], before[:, 1::2])
