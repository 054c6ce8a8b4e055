"""Kernel-vs-reference checks shared by every backend: fresh random inputs, awkward sizes, poison bounds.

Each check builds float32 inputs, runs the backend's kernel on buffers that are views into larger poisoned
allocations, runs the float64 reference on the same values, and compares with the suite's tolerance table.
`be` is a fastvae.backends.contract.Backend; the oracle is the reference module itself.
"""
import numpy as np

from tolerances import TOL, assert_close, tolerance_for
from fastvae import rng
from fastvae.backends import reference as ref

POISON = np.float32(-7.77e33)


class Buffers:
    """Backend arrays carved out of poisoned allocations, with the poison checked afterwards."""

    def __init__(self, be):
        self.be = be
        self.allocs = []

    def out(self, shape, dtype=np.float32, fill=None):
        """A backend array of `shape`, inside an allocation with poisoned margins on both sides."""
        n = int(np.prod(shape))
        host = np.full(n + 64, POISON if dtype != np.int64 else -7, dtype=dtype)
        if fill is not None:
            host[32:32 + n] = np.asarray(fill, dtype=dtype).reshape(-1)
        dev = self.be.asarray(host, dtype=dtype)
        self.allocs.append(dev)
        return dev[32:32 + n].reshape(shape)

    def inp(self, values, dtype=np.float32):
        return self.out(np.shape(values), dtype, fill=values)

    def check_poison(self):
        for dev in self.allocs:
            host = self.be.to_host(dev)
            margin = np.concatenate([host[:32], host[-32:]])
            assert np.all(margin == host[0]), "a kernel wrote outside its output"


def host(be, a):
    return np.asarray(be.to_host(a), dtype=np.float64)


def product_scale(a, b):
    """The size of the terms a product sums: max of |a| @ |b| (cancellation-aware tolerance)."""
    return max(float(np.max(np.abs(a) @ np.abs(b))), 1e-30)


def layer_inputs(rand, rows, fan_in, fan_out):
    inp = rand.normal(0, 1, (rows, fan_in)).astype(np.float32)
    w = (rand.normal(0, 1, (fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    b = rand.normal(0, 0.5, fan_out).astype(np.float32)
    return inp, w, b


def check_gather(be, rand, rows, width=784, dtype=np.uint8):
    """A batch gathered from uint8 pixels (read as /255) or float32 ones (copied), rows picked with repeats."""
    if dtype == np.uint8:
        data = rand.integers(0, 256, (300, width)).astype(np.uint8)
    else:
        data = rand.random((300, width)).astype(dtype)
    idx = rand.integers(0, 300, rows).astype(np.int64)
    buf = Buffers(be)
    x = buf.out((rows, width))
    be.gather_batch(x, be.asarray(data, dtype=dtype), be.asarray(idx, dtype=np.int64))
    expect = np.empty((rows, width))
    ref.gather_batch(expect, data, idx)
    assert_close(host(be, x), expect, TOL["float32"], scale=1.0, what="gather")
    if dtype == np.uint8:
        # and bit for bit the float images (data / 255).astype(float32) a user would pass: v / 255 correctly rounded
        # (v * float32(1/255) differed in 126 of the 256 values, so uint8 images and the same images as floats
        # trained to other bits: an auditor's trial)
        # (rounded to the buffer's dtype: float32 for the reference backend in bench/'s kernel timings)
        np.testing.assert_array_equal(host(be, x), (data[idx] / 255.0).astype(x.dtype))
    buf.check_poison()


def check_dense(be, rand, rows, fan_in, fan_out, activation, zeros=0.0):
    """dense_forward then dense_backward (from the backend's own forward output, as a real step does); a share
    `zeros` of the input's entries exactly 0 (MNIST's pixels: 81 %), and then its last row all zeros too (a blank
    image: the cpu's sparse product skips every entry of it, and must still write its row of the poisoned output)."""
    tol = tolerance_for(be)
    inp, w, b = layer_inputs(rand, rows, fan_in, fan_out)
    inp[rand.random(inp.shape) < zeros] = 0.0
    if zeros:
        inp[-1] = 0.0
    dout = rand.normal(0, 1, (rows, fan_out)).astype(np.float32)
    f64 = [a.astype(np.float64) for a in (inp, w, b, dout)]
    buf = Buffers(be)
    d_inp, d_w, d_b = buf.inp(inp), buf.inp(w), buf.inp(b)
    out = buf.out((rows, fan_out))
    expect = np.empty((rows, fan_out))
    be.dense_forward(out, d_inp, d_w, d_b, activation)
    ref.dense_forward(expect, *f64[:3], activation)
    # every activation in constants.ACTIVATIONS is 1-Lipschitz (|act'| <= 1): an error in z moves y by at most as
    # much, and dz = dy act'(z) is at most dy. A new activation that is not must scale these tolerances.
    scale_fwd = product_scale(inp, w) + float(np.max(np.abs(b)))
    assert_close(host(be, out), expect, tol, scale=scale_fwd, what="forward")

    y = host(be, out)
    identity = activation == "identity"
    dinp, dw, db = buf.out((rows, fan_in)), buf.out((fan_in, fan_out)), buf.out(fan_out)
    d_dout = buf.inp(dout)
    e_dinp, e_dw, e_db, e_dout = np.empty((rows, fan_in)), np.empty_like(f64[1]), np.empty(fan_out), f64[3].copy()
    be.dense_backward(dinp, dw, db, d_dout, d_inp, d_w, None if identity else out, activation)
    ref.dense_backward(e_dinp, e_dw, e_db, e_dout, f64[0], f64[1], None if identity else y, activation)
    dz = e_dout if identity else f64[3] * ref.activation_grad_from_output(y, activation)
    # dout is scratch (contract.py): afterwards it holds dy (untouched) or dz, nothing else
    left = host(be, d_dout)
    d_scale = float(np.max(np.abs(dout)))
    assert (np.max(np.abs(left - f64[3])) <= TOL["float32"] * d_scale
            or np.max(np.abs(left - dz)) <= TOL["float32"] * d_scale), "dout holds neither dy nor dz"
    assert_close(host(be, dw), e_dw, tol, scale=product_scale(inp.T, np.abs(dout)), what="dw")
    # db sums dz formed in float32 from the backend's own output (no product): float32's tolerance
    assert_close(host(be, db), e_db, TOL["float32"], scale=float(np.abs(dout).sum(0).max()), what="db")
    assert_close(host(be, dinp), e_dinp, tol, scale=product_scale(dout, w.T), what="dinp")
    buf.check_poison()


def _layer_forward(be, rand, buf, rows, fan_in, fan_out, activation):
    """A layer's fresh inputs and its forward on `be`, as a backward test starts: (inp, w, dout, inp and w on the
    backend, the backend's output, that output on the host in float64)."""
    inp, w, b = layer_inputs(rand, rows, fan_in, fan_out)
    dout = rand.normal(0, 1, (rows, fan_out)).astype(np.float32)
    out = buf.out((rows, fan_out))
    d_inp, d_w = buf.inp(inp), buf.inp(w)
    be.dense_forward(out, d_inp, d_w, buf.inp(b), activation)
    return inp, w, dout, d_inp, d_w, out, host(be, out)


def check_backward_without_weight_gradient(be, rand, rows, fan_in, fan_out, activation, first_layer):
    """dw = db = None (a backend with weight_update): dz is left in dout (weight_update reads it) and dinp is right
    (None for a first layer); nothing else is written."""
    tol = tolerance_for(be)
    buf = Buffers(be)
    inp, w, dout, d_inp, d_w, out, y = _layer_forward(be, rand, buf, rows, fan_in, fan_out, activation)
    identity = activation == "identity"
    dinp, d_dout = None if first_layer else buf.out((rows, fan_in)), buf.inp(dout)
    be.dense_backward(dinp, None, None, d_dout, d_inp, d_w, None if identity else out, activation)
    dz = dout.astype(np.float64) * (1.0 if identity else ref.activation_grad_from_output(y, activation))
    e_dinp, e_dout = np.empty((rows, fan_in)), dout.astype(np.float64)
    ref.dense_backward(None if first_layer else e_dinp, None, None, e_dout, inp.astype(np.float64),
                       w.astype(np.float64), None if identity else y, activation)
    assert_close(e_dout, dz, TOL["float32"], scale=float(np.max(np.abs(dout))), what="the reference's dz")
    assert_close(host(be, d_dout), dz, TOL["float32"], scale=float(np.max(np.abs(dout))), what="dz left in dout")
    if not first_layer:
        assert_close(host(be, dinp), e_dinp, tol, scale=product_scale(dout, w.T), what="dinp")
    buf.check_poison()


def check_first_layer_backward(be, rand, rows, fan_in, fan_out, activation):
    """dinp=None (the first layer has no input gradient): dw and db still right, nothing else written."""
    tol = tolerance_for(be)
    buf = Buffers(be)
    inp, w, dout, d_inp, d_w, out, y = _layer_forward(be, rand, buf, rows, fan_in, fan_out, activation)
    dw, db = buf.out((fan_in, fan_out)), buf.out(fan_out)
    be.dense_backward(None, dw, db, buf.inp(dout), d_inp, d_w, out, activation)
    e_dw, e_db = np.empty((fan_in, fan_out)), np.empty(fan_out)
    ref.dense_backward(None, e_dw, e_db, dout.astype(np.float64), inp.astype(np.float64), w.astype(np.float64), y,
                       activation)
    assert_close(host(be, dw), e_dw, tol, scale=product_scale(inp.T, np.abs(dout)), what="dw")
    # db sums dz formed in float32 from the backend's own output (no product): float32's tolerance
    assert_close(host(be, db), e_db, TOL["float32"], scale=float(np.abs(dout).sum(0).max()), what="db")
    buf.check_poison()


def check_heads(be, rand, rows, fan_in, latent, encoder):
    """heads_forward (product, sampling, KL) and heads_backward against the reference, in either form."""
    tol = tolerance_for(be)
    inp, w, b = layer_inputs(rand, rows, fan_in, 2 * latent)
    w *= 0.3  # keep logvar (or sigma) in a realistic range, a few units
    # a random first row: the rows' noise is rows row.. of the step's draw (a shard of a split batch)
    counters = np.array([int(rand.integers(1 << 62)), int(rand.integers(1 << 40)), int(rand.integers(300))],
                        dtype=np.int64)
    noise_stream = int(rand.integers(3))
    f64 = [a.astype(np.float64) for a in (inp, w, b)]
    buf = Buffers(be)
    d_inp, d_w, d_b, d_counters = buf.inp(inp), buf.inp(w), buf.inp(b), buf.inp(counters, np.int64)
    z, mu_logvar = buf.out((rows, latent)), buf.out((rows, 2 * latent))
    loss = buf.out(2, np.float64, fill=[0.25, 0.5])
    be.heads_forward(z, mu_logvar, loss, d_inp, d_w, d_b, d_counters, noise_stream, encoder)
    e_z, e_ml, e_loss = np.empty((rows, latent)), np.empty((rows, 2 * latent)), np.array([0.25, 0.5])
    ref.heads_forward(e_z, e_ml, e_loss, *f64, counters, noise_stream, encoder)
    s_scale = product_scale(inp, w) + float(np.max(np.abs(b)))
    assert_close(host(be, mu_logvar), e_ml, tol, scale=s_scale, what="mu_logvar")
    eps = rng.normals(counters[0], noise_stream, counters[1], rows, latent, first_row=counters[2]).astype(np.float64)
    mu, second = e_ml[:, :latent], e_ml[:, latent:]
    if encoder == "gamma":
        sigma = np.exp(0.5 * second)
        # mu's error plus logvar's, carried by sigma * eps (d sigma / d logvar = sigma / 2)
        z_scale = s_scale * (1 + float(np.max(np.abs(eps) * sigma)))
        kl_terms = np.exp(second) + mu * mu + 1 + np.abs(second)
        kl_scale = 0.5 * float(kl_terms.sum())
    else:
        z_scale = s_scale * (1 + float(np.max(np.abs(eps))))
        # d/d sigma of log(1e-10 + sigma^2) is ~2 / sigma: a float32 error in sigma moves the KL by that much
        kl_terms = second ** 2 + mu ** 2 + 1 + np.abs(np.log(1e-10 + second ** 2)) + s_scale * 2 / np.abs(second)
        kl_scale = 0.5 * float(kl_terms.sum())
    assert_close(host(be, z), e_z, tol, scale=z_scale, what="z")
    assert_close(host(be, loss)[1], e_loss[1], tol, scale=kl_scale, what="kl")
    assert host(be, loss)[0] == 0.25, "heads_forward must not touch the reconstruction loss"
    assert list(be.to_host(d_counters)) == list(counters), "heads_forward must not change the counters"

    dz = rand.normal(0, 1, (rows, latent)).astype(np.float32)
    dinp, dw, db, dmu_logvar = buf.out((rows, fan_in)), buf.out((fan_in, 2 * latent)), buf.out(2 * latent), \
        buf.out((rows, 2 * latent))
    be.heads_backward(dinp, dw, db, dmu_logvar, buf.inp(dz), d_inp, d_w, mu_logvar, z, d_counters, noise_stream,
                      encoder)
    e_dinp, e_dw, e_db, e_dml = np.empty((rows, fan_in)), np.empty((fan_in, 2 * latent)), \
        np.empty(2 * latent), np.empty((rows, 2 * latent))
    ref.heads_backward(e_dinp, e_dw, e_db, e_dml, dz.astype(np.float64), *f64[:2], host(be, mu_logvar),
                       host(be, z), counters, noise_stream, encoder)
    dml_scale = float(np.max(np.abs(e_dml))) + (z_scale if encoder == "gamma" else 0.0)
    # formed by float32 passes from the backend's own mu_logvar and z (no product): float32's tolerance
    assert_close(host(be, dmu_logvar), e_dml, TOL["float32"], scale=dml_scale, what="dmu_logvar")
    assert_close(host(be, dw), e_dw, tol, scale=product_scale(np.abs(inp.T), np.abs(e_dml)), what="dw")
    assert_close(host(be, dinp), e_dinp, tol, scale=product_scale(e_dml, w.T), what="dinp")
    buf.check_poison()


def check_output(be, rand, rows, fan_in, width, reconstruction):
    """output_forward (product, loss, dlogits) against the reference, either reconstruction."""
    tol = tolerance_for(be)
    inp, w, b = layer_inputs(rand, rows, fan_in, width)
    w *= 3  # logits of several units, both signs: exercises both branches of the stable forms
    x = rand.uniform(0, 1, (rows, width)).astype(np.float32)
    x[:, ::3] = rand.integers(0, 2, x[:, ::3].shape)  # exact 0/1 pixels, as in MNIST
    buf = Buffers(be)
    dlogits = buf.out((rows, width))
    loss = buf.out(2, np.float64, fill=[1.5, 2.5])
    be.output_forward(dlogits, loss, buf.inp(inp), buf.inp(w), buf.inp(b), buf.inp(x), reconstruction)
    e_dl, e_loss = np.empty((rows, width)), np.array([1.5, 2.5])
    ref.output_forward(e_dl, e_loss, *(a.astype(np.float64) for a in (inp, w, b, x)), reconstruction)
    l_scale = product_scale(inp, w) + float(np.max(np.abs(b)))
    if reconstruction == "xent":
        # dlogits = sigmoid(l) - x moves by at most |dl| / 4; each loss term is at most |l| + log 2
        dl_scale, loss_scale = max(1.0, l_scale) * 0.25, rows * width * (l_scale + np.log(2.0))
    else:
        dl_scale = max(1.0, l_scale)
        loss_scale = rows * width * dl_scale
    assert_close(host(be, dlogits), e_dl, tol, scale=dl_scale, what="dlogits")
    assert_close(host(be, loss)[0], e_loss[0], tol, scale=loss_scale, what=f"{reconstruction} loss")
    assert host(be, loss)[1] == 2.5, "output_forward must not touch the KL"
    buf.check_poison()


def check_adam(be, rand, size, t, shards=1):
    """adam_update against the reference, with the partial gradients of `shards` row shards (summed into grads[0]);
    returns the backend's params, m, v and grads[0] (host arrays)."""
    p, g = rand.normal(0, 1, size).astype(np.float32), rand.normal(0, 1e-2, (shards, size)).astype(np.float32)
    m = rand.normal(0, 1e-2, size).astype(np.float32)
    v = (rand.normal(0, 1e-2, size) ** 2).astype(np.float32)
    counters = np.array([3, t, 0], dtype=np.int64)
    buf = Buffers(be)
    dp, dg, dm, dv, dc = buf.inp(p), buf.inp(g), buf.inp(m), buf.inp(v), buf.inp(counters, np.int64)
    be.adam_update(dp, dg, dm, dv, dc, 1e-3, 0.9, 0.999, 1e-8)
    e = [a.astype(np.float64) for a in (p, g, m, v)]
    e_c = counters.copy()
    ref.adam_update(e[0], e[1], e[2], e[3], e_c, 1e-3, 0.9, 0.999, 1e-8)
    assert list(be.to_host(dc)) == list(e_c)
    # the sum of `shards` float32 terms: shards - 1 roundings, each relative to the terms' magnitudes
    g_abs = np.abs(g).sum(axis=0)
    assert np.all(np.abs(host(be, dg)[0] - e[1][0]) <= (shards - 1) * 2.0 ** -24 * g_abs), "grads[0] is not the sum"
    # m = 0.9 m + 0.1 g can cancel, so its float32 rounding is judged against the terms' size, 0.9 |m| + 0.1 |g|, not
    # the result's: a size-1 case whose m cancelled to 2.5e-7 from terms of 1e-2 failed at 7e-11 (a CI run,
    # FASTVAE_TEST_SEED=1620881120); v's two terms are positive and cannot cancel
    m_scale = 0.9 * np.abs(m).astype(np.float64) + 0.1 * g_abs
    err_m = np.abs(host(be, dm) - e[2])
    assert np.all(err_m <= TOL["float32"] * m_scale), f"m: error {err_m.max():.3g} beyond the terms' rounding"
    assert_close(host(be, dv), e[3], TOL["float32"], what="v")
    # each parameter's step lr_t m / (sqrt v + eps) is a few float32 operations, judged against the size of the
    # terms it is made of: m = 0.9 m + 0.1 g can cancel, and then its float32 rounding is relative to
    # 0.9 |m| + 0.1 |g|, not to the small result. Plus the one rounding of the stored parameter (half an ulp).
    lr_t = 1e-3 * np.sqrt(1 - 0.999 ** (t + 1)) / (1 - 0.9 ** (t + 1))
    step_scale = lr_t * (0.9 * np.abs(m) + 0.1 * g_abs) / (np.sqrt(e[3]) + 1e-8)
    assert np.all(np.abs(host(be, dp) - e[0]) <= TOL["float32"] * step_scale + np.abs(e[0]) * 2.0 ** -24)
    buf.check_poison()
    return host(be, dp), host(be, dm), host(be, dv), host(be, dg)[0]


def check_weight_update(be, rand, rows, shapes, t, zero_columns=False):
    """weight_update against the reference: each layer's dw and db (the products' tolerance, scaled by the terms
    summed), then Adam's m, v and parameters against the reference's Adam applied to the backend's own gradient
    (so a bf16 gradient's rounding is judged once, where it is made), and the step counter. zero_columns: the first
    layer's input has columns that are zero in every row (as MNIST's borders are in a batch): the first and the last
    ones and about 40 % of the others, in runs and alone, and 70 % of the other entries are zero too (as MNIST's
    pixels are): the cpu backend skips those columns, and those rows within blocks of columns (sparse_dw), whether
    the gradient is kept or not, with the same bits."""
    from fastvae.params import flat_offsets
    offsets, size = flat_offsets(shapes)
    inputs = [rand.normal(0, 1, (rows, k)).astype(np.float32) for k, _ in shapes]
    if zero_columns:
        k = shapes[0][0]
        zero = rand.random(k) < 0.4
        zero[[0, k - 1]] = True
        inputs[0][:, zero] = 0
        inputs[0][rand.random(inputs[0].shape) < 0.7] = 0
    douts = [rand.normal(0, 1e-2, (rows, n)).astype(np.float32) for _, n in shapes]
    p = rand.normal(0, 1, size).astype(np.float32)
    m = rand.normal(0, 1e-2, size).astype(np.float32)
    v = (rand.normal(0, 1e-2, size) ** 2).astype(np.float32)
    counters = np.array([3, t, 0], dtype=np.int64)
    buf = Buffers(be)
    dp, dg, dm, dv = buf.inp(p), buf.out((size,)), buf.inp(m), buf.inp(v)
    dc = buf.inp(counters, np.int64)
    be.weight_update(dp, dg, dm, dv, dc, tuple(buf.inp(a) for a in inputs), tuple(buf.inp(a) for a in douts),
                     1e-3, 0.9, 0.999, 1e-8)
    want_g = np.zeros(size)
    ref.weight_update(p.astype(np.float64), want_g, m.astype(np.float64), v.astype(np.float64), counters.copy(),
                      [a.astype(np.float64) for a in inputs], [a.astype(np.float64) for a in douts],
                      1e-3, 0.9, 0.999, 1e-8)
    got_g = host(be, dg)
    for l, ((k, n), (w_off, b_off)) in enumerate(zip(shapes, offsets)):
        w_scale = product_scale(inputs[l].T, douts[l])
        assert_close(got_g[w_off:w_off + k * n], want_g[w_off:w_off + k * n], tolerance_for(be), scale=w_scale,
                     what=f"dw of layer {l}")
        assert_close(got_g[b_off:b_off + n], want_g[b_off:b_off + n], TOL["float32"],
                     scale=max(float(np.abs(douts[l]).sum(axis=0).max()), 1e-30), what=f"db of layer {l}")
    e_p, e_m, e_v, e_c = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64), counters.copy()
    ref.adam_update(e_p, got_g[None].copy(), e_m, e_v, e_c, 1e-3, 0.9, 0.999, 1e-8)
    assert list(be.to_host(dc)) == list(e_c) == [3, t + 1, 0]
    assert_close(host(be, dm), e_m, TOL["float32"], what="m")
    assert_close(host(be, dv), e_v, TOL["float32"], what="v")
    lr_t = 1e-3 * np.sqrt(1 - 0.999 ** (t + 1)) / (1 - 0.9 ** (t + 1))
    step_scale = lr_t * (0.9 * np.abs(m) + 0.1 * np.abs(got_g)) / (np.sqrt(e_v) + 1e-8)
    assert np.all(np.abs(host(be, dp) - e_p) <= TOL["float32"] * step_scale + np.abs(e_p) * 2.0 ** -24), "params"
    buf.check_poison()
    # grads None (the step's call: the gradient is not kept): the same update, bit for bit
    again = [buf.inp(a) for a in (p, m, v)]
    be.weight_update(again[0], None, again[1], again[2], buf.inp(counters, np.int64),
                     tuple(buf.inp(a) for a in inputs), tuple(buf.inp(a) for a in douts), 1e-3, 0.9, 0.999, 1e-8)
    for a, b, what in zip(again, (dp, dm, dv), ("params", "m", "v")):
        assert np.array_equal(be.to_host(a), be.to_host(b)), f"{what} differ when the gradient is not kept"
    # weight_update_parts (the step runs them on its shards' threads): its parts, however many run, then finish(),
    # are weight_update bit for bit, counter included
    if be.weight_update_parts is not None:
        for count in (1, 2, 3):
            split = [buf.inp(a) for a in (p, m, v)] + [buf.inp(counters, np.int64)]
            _, part, finish = be.weight_update_parts(split[0], None, split[1], split[2], split[3],
                                                     tuple(buf.inp(a) for a in inputs),
                                                     tuple(buf.inp(a) for a in douts), 1e-3, 0.9, 0.999, 1e-8)
            for k in range(count):
                part(k)
            finish()
            for a, b, what in zip(split, (dp, dm, dv, dc), ("params", "m", "v", "counters")):
                assert np.array_equal(be.to_host(a), be.to_host(b)), f"{what} differ in {count} parts"
    buf.check_poison()


def sigma_away_from_zero(layout, params, latent):
    """The sigma form's KL has d/d sigma = sigma - sigma / (1e-10 + sigma^2): near sigma = 0 it amplifies float32's
    rounding of sigma itself (sigma = 0.0012 turned a 1e-6 error into a 5e-4 relative gradient error), and its
    third derivative a finite difference's truncation error (sigma = 0.005: 2e-5 relative at h = 1e-5), so
    comparisons are only meaningful away from it. Here sigma = 1 + a tenth of the
    He-initialised product: 0.47 <= sigma <= 1.53 over 300 seeds of check_train_steps' inputs and
    0.29 <= sigma <= 1.71 over 300 of the finite-difference test's (x uniform in [0, 1])."""
    heads = next(L for L in layout.layers if L.name == "heads")
    w = params[heads.w_offset:heads.w_offset + heads.fan_in * heads.fan_out].reshape(heads.fan_in, heads.fan_out)
    w[:, latent:] *= 0.1
    params[heads.b_offset + latent:heads.b_offset + 2 * latent] = 1.0


def check_train_steps(be, cfg, rand, rows, n_steps=3, parts=1):
    """Whole training steps on `be` (its batches split into `parts` row shards) against the reference (unsplit)
    started from the same float32 state.

    After the first step: the loss, every gradient and the updated parameters. Adam's first step moves each
    parameter by about lr * sign(g), so where a gradient is below what float32 resolves the sign (and hence
    the update) is arbitrary; those parameters are held to the bound |update| <= lr instead. Then the losses of
    the following steps, which also carry the parameters forward.
    """
    from fastvae import step
    from fastvae.backends import get_backend
    from fastvae.params import Layout, he_init

    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)))
    params[layout.n_weights:] = rand.normal(0, 0.1, layout.size - layout.n_weights)
    if cfg.encoder == "sigma":
        sigma_away_from_zero(layout, params, cfg.latent)
    data = rand.integers(0, 256, (max(rows * n_steps, 50), cfg.input_width)).astype(np.uint8)
    seed = int(rand.integers(1 << 40))
    runs = {}
    for name, b in (("ref", get_backend("reference")), ("be", be)):
        st = step.State(b, layout, params, seed, keep_gradients=True)
        ws = step.Workspace(b, cfg, rows)
        d_data = b.asarray(data, dtype=np.uint8)
        losses, grads0, params1 = [], None, None
        for k in range(n_steps):
            idx = np.arange(k * rows, (k + 1) * rows) % len(data)
            ws.loss[...] = 0
            step.train_step(b, cfg, st, ws, d_data, b.asarray(idx, dtype=np.int64), parts if b is be else 1)
            losses.append(np.asarray(b.to_host(ws.loss), dtype=np.float64).copy())
            if k == 0:      # adam_update left the step's gradient (the shards' sum) in grads[0]
                grads0 = np.asarray(b.to_host(st.grads)[0], dtype=np.float64).copy()
                params1 = np.asarray(b.to_host(st.params), dtype=np.float64).copy()
        runs[name] = (losses, grads0, params1, int(b.to_host(st.counters)[1]))
    (l_ref, g_ref, p_ref, t_ref), (l_be, g_be, p_be, t_be) = runs["ref"], runs["be"]
    assert t_ref == t_be == n_steps
    tol = tolerance_for(be, step=True, activation=cfg.activation)
    assert_close(l_be[0], l_ref[0], tol, what="first loss")
    for L in layout.layers:
        for off, size, part in ((L.w_offset, L.fan_in * L.fan_out, "W"), (L.b_offset, L.fan_out, "b")):
            sl = slice(off, off + size)
            scale = float(np.max(np.abs(g_ref[sl])))
            assert_close(g_be[sl], g_ref[sl], tol, scale=scale, what=f"gradient of {L.name}.{part}")
            resolved = np.abs(g_ref[sl]) > 10 * tol * scale
            assert_close(p_be[sl][resolved], p_ref[sl][resolved], tol, scale=cfg.lr, what=f"updated {L.name}.{part}")
            assert np.all(np.abs(p_be[sl] - params[sl]) <= cfg.lr * (1 + tol)), f"{L.name}.{part} moved > lr"
    for k in range(1, n_steps):
        assert_close(l_be[k], l_ref[k], tol, what=f"loss of step {k + 1}")


def check_captured_steps(be, seed=11):
    """step.Stepper captures the first full batch and replays it for every later batch (new indices copied into
    its buffer, Adam's t and the noise step advanced in device memory); a short last batch runs uncaptured. Its
    parameters, Adam moments and loss are those of calling train_step on every batch (the same launches; only the
    loss's float64 atomics may add up in another block order)."""
    from fastvae import step
    from fastvae.config import Config
    from fastvae.params import Layout, he_init
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    layout = Layout(cfg)
    batches = [np.arange(7) + 7 * k for k in range(4)] + [np.arange(28, 33)]
    data_host = np.random.default_rng(seed).integers(0, 256, (40, 784)).astype(np.uint8)
    runs, launched = [], None
    for captured in (False, True):
        st, ws = step.State(be, layout, he_init(layout, seed=1), seed=3), step.Workspace(be, cfg, 7)
        data = be.asarray(data_host, dtype=np.uint8)
        ws.loss[...] = 0
        stepper = step.Stepper(be, cfg, st, ws, data)
        for idx in batches:
            idx = be.asarray(idx, dtype=np.int64)
            before = be.impl.launches
            stepper(idx) if captured else step.train_step(be, cfg, st, ws, data, idx)
            if launched is None:                # the launches of one uncaptured full-batch step
                launched = be.impl.launches - before
        if captured:   # the graph holds every launch an uncaptured full-batch step makes, no more
            assert stepper.kernels_per_step == launched
        runs.append([host(be, a) for a in (st.params, st.m, st.v, ws.loss)] +
                    [int(host(be, st.counters)[1]), stepper.captures])
    (*arrays0, t0, c0), (*arrays1, t1, c1) = runs
    assert (t0, c0, t1, c1) == (5, 0, 5, 1)
    for a, b, what in zip(arrays1, arrays0, ("params", "m", "v", "loss")):
        assert_close(a, b, TOL["float32_step"], what=what)


def fits_alone_and_at_once(backend, threads, epochs, seeds=(1, 2)):
    """The parameters of small MNIST-shaped fits of `backend` (one per seed), run one after another and then all at
    once in Python threads: (alone, together), lists in the order of `seeds`."""
    import threading

    from fastvae import VAE
    x = (np.random.default_rng(0).random((256, 784)) * 255).astype(np.uint8)
    kw = dict(hidden=(64,), latent=4, batch_size=64, backend=backend, threads=threads)
    alone = [VAE(**kw, seed=s).fit(x, epochs=epochs).state.params.copy() for s in seeds]
    together = {}

    def fit(s):
        together[s] = VAE(**kw, seed=s).fit(x, epochs=epochs).state.params.copy()
    workers = [threading.Thread(target=fit, args=(s,)) for s in seeds]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return alone, [together[s] for s in seeds]
