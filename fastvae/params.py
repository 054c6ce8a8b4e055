"""The flat parameter buffer: [all weights | all biases], with named views per layer.

Gradients and Adam's m and v share this layout, so the optimizer is one pass over one buffer.
Weights are stored (fan_in, fan_out) row-major, so a layer is y = x @ W + b.
"""
from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class Layer:
    name: str
    fan_in: int
    fan_out: int
    w_offset: int
    b_offset: int


def layer_shapes(cfg):
    """(name, fan_in, fan_out) in forward order: encoder, heads (mu|logvar), decoder, output logits."""
    widths = [cfg.input_width, *cfg.hidden]
    shapes = [(f"enc{i + 1}", a, b) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    shapes.append(("heads", widths[-1], 2 * cfg.latent))
    dec = [cfg.latent, *reversed(cfg.hidden)]
    shapes += [(f"dec{i + 1}", a, b) for i, (a, b) in enumerate(zip(dec[:-1], dec[1:]))]
    shapes.append(("out", dec[-1], cfg.input_width))
    return shapes


def flat_offsets(shapes):
    """([(w_offset, b_offset)] per layer, P) for layers of (fan_in, fan_out) `shapes` in the flat layout: every
    weight row-major in order, then every bias in the same order (what kernels given only shapes rely on)."""
    n_weights = sum(a * b for a, b in shapes)
    offsets, w_off, b_off = [], 0, n_weights
    for a, b in shapes:
        offsets.append((w_off, b_off))
        w_off += a * b
        b_off += b
    return offsets, b_off


def update_shapes(inputs, douts, size):
    """((K_l, N_l), ...) of a weight_update's layers from their (n, K_l) inputs and (n, N_l) douts; ValueError unless
    they pair up and their weights and biases make `size` parameters."""
    if len(inputs) != len(douts) or not inputs:
        raise ValueError(f"weight_update needs one input per dout, got {len(inputs)} and {len(douts)}")
    shapes = []
    for l, (inp, dz) in enumerate(zip(inputs, douts)):
        if inp.ndim != 2 or dz.ndim != 2 or inp.shape[0] != dz.shape[0]:
            raise ValueError(f"weight_update: layer {l}'s input {inp.shape} and dz {dz.shape} are not (n, K), (n, N)")
        shapes.append((int(inp.shape[1]), int(dz.shape[1])))
    total = flat_offsets(shapes)[1]
    if total != size:
        raise ValueError(f"weight_update: layers {shapes} have {total} parameters, not {size}")
    return tuple(shapes)


class Layout:
    """Offsets of every layer's weight and bias inside the flat buffer."""

    def __init__(self, cfg):
        shapes = layer_shapes(cfg)
        offsets, self.size = flat_offsets([(a, b) for _, a, b in shapes])
        self.layers = [Layer(name, a, b, w, o) for (name, a, b), (w, o) in zip(shapes, offsets)]
        self.n_weights = sum(a * b for _, a, b in shapes)

    def views(self, flat):
        """[(W, b)] per layer: views into `flat` (NumPy or CuPy), no copies."""
        out = []
        for L in self.layers:
            w = flat[L.w_offset:L.w_offset + L.fan_in * L.fan_out].reshape(L.fan_in, L.fan_out)
            b = flat[L.b_offset:L.b_offset + L.fan_out]
            out.append((w, b))
        return out


def he_init(layout, seed, dtype=np.float32):
    """He / variance-scaling init (normal, fan-in, scale 2): W ~ N(0, 2 / fan_in); biases zero."""
    gen = np.random.default_rng([int(seed), 0x1A17])
    flat = np.zeros(layout.size, dtype=np.float64)
    for L in layout.layers:
        n = L.fan_in * L.fan_out
        flat[L.w_offset:L.w_offset + n] = gen.standard_normal(n) * np.sqrt(2.0 / L.fan_in)
    return flat.astype(dtype)
