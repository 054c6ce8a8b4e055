"""The model and training settings. Defaults are the seed's (Géron, Hands-On ML 1st ed., ch. 15)."""
import decimal
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .constants import ENCODERS, HIDDEN_ACTIVATIONS, RECONSTRUCTIONS
from .errors import UserError

N_PIXELS = 784  # 28 x 28 MNIST images, flattened


@dataclass(frozen=True)
class Config:
    """Every setting of a VAE and its training, frozen (VAE.config; change one with dataclasses.replace). Defaults
    are the seed's: hidden (500, 500), latent 20, batch_size 150, epochs 50, Adam lr 0.001, beta1 0.9, beta2 0.999,
    adam_eps 1e-8, seed 0, encoder "gamma" (heads output logvar = log sigma^2), reconstruction "xent" (sigmoid
    cross-entropy), input_width 784 with image_shape (28, 28), activation "elu". Each field's comment in the source
    says why.

    Ranges (else UserError, one line): hidden a non-empty sequence of positive integers (any iterable in order,
    read once); latent, batch_size, epochs, input_width positive integers (NumPy's and integral floats too); seed an
    integer in [0, 2**63); lr > 0, 0 <= beta1 < 1, 0 <= beta2 < 1, adam_eps > 0, finite reals; image_shape (h, w)
    with h * w = input_width, or None for feature rows; encoder, reconstruction and activation one of the names
    above. Adam is TensorFlow's form (Kingma & Ba 2015, Algorithm 1 with epsilon added to sqrt(v) before the bias
    correction: lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), p -= lr_t m / (sqrt(v) + adam_eps)), as the seed's
    tf.train.AdamOptimizer."""
    # Encoder widths; the decoder mirrors them (784 -> 500 -> 500 -> latent -> 500 -> 500 -> 784).
    hidden: Sequence[int] = field(default=(500, 500))     # (any sequence given; a tuple of ints once made)
    # Size of the coding z; the encoder's heads output mu and gamma = log sigma^2, `latent` each.
    latent: int = 20
    # The seed trains on mini-batches of 150 for 50 epochs.
    batch_size: int = 150
    epochs: int = 50
    # Adam with TensorFlow's defaults, which the seed uses (epsilon applied to sqrt(v), not to sqrt(v_hat)).
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    # One integer decides the initial weights, the shuffles and every noise draw.
    seed: int = 0
    # The seed's variants. "gamma": the heads output gamma = log sigma^2 (the seed's final form); "sigma": they
    # output sigma itself, with a 1e-10 smoothing term inside the KL's log (the seed's first form).
    encoder: str = "gamma"
    # "xent": sigmoid cross-entropy (the seed's choice); "mse": squared error of sigmoid(logits) against the pixels.
    reconstruction: str = "xent"
    # The data's width: inputs per row (the output layer reconstructs as many) and, for images, their (h, w). The
    # defaults are MNIST's 28 x 28; VAE.fit takes them from the data it is first fitted on.
    input_width: int = N_PIXELS
    image_shape: tuple | None = (28, 28)
    # The hidden layers' activation: "elu" is the seed's; "relu" and "tanh" also have derivatives that follow from
    # their output, so the fused kernels keep only y (constants.ACTIVATIONS).
    activation: str = "elu"

    def __post_init__(self):
        # every setting becomes a plain Python value here, so whatever trains also saves (the config is JSON)
        object.__setattr__(self, "hidden", _widths(self.hidden))
        for name in ("latent", "batch_size", "epochs", "input_width"):
            object.__setattr__(self, name, integer(getattr(self, name), name))
        object.__setattr__(self, "seed", seed_value(self.seed))
        for name in ("lr", "beta1", "beta2", "adam_eps"):
            object.__setattr__(self, name, real(getattr(self, name), name))
        for name in ("encoder", "reconstruction", "activation"):
            if isinstance(getattr(self, name), str):            # np.str_ too: checked against the choices below
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.image_shape is not None:
            if isinstance(self.image_shape, (str, bytes)) or not hasattr(self.image_shape, "__iter__"):
                raise UserError(f"image_shape must be (h, w) or None, got {self.image_shape!r}")
            object.__setattr__(self, "image_shape", tuple(integer(k, "image_shape") for k in self.image_shape))
            if len(self.image_shape) != 2 or self.image_shape[0] * self.image_shape[1] != self.input_width:
                # (28, 28) is also the default: say so, for an input_width given alone (an API trial)
                mnist = " (MNIST's, the default)" if self.image_shape == (28, 28) else ""
                raise UserError(f"image_shape {self.image_shape}{mnist} does not hold input_width {self.input_width} "
                                "values; give (h, w) with h * w = input_width, or None for feature rows")
        if not (self.lr > 0 and self.lr < float("inf")):
            raise UserError(f"lr must be a positive number, got {self.lr!r}; the seed uses 0.001")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.adam_eps > 0):
            raise UserError(f"Adam needs 0 <= beta1, beta2 < 1 and adam_eps > 0, got beta1={self.beta1!r}, "
                            f"beta2={self.beta2!r}, adam_eps={self.adam_eps!r}; the seed uses 0.9, 0.999, 1e-08")
        if self.encoder not in ENCODERS:
            raise UserError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise UserError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {self.reconstruction!r}")
        if self.activation not in HIDDEN_ACTIVATIONS:
            raise UserError(f"activation must be one of {', '.join(HIDDEN_ACTIVATIONS)}, got {self.activation!r}")

    def to_dict(self) -> dict:
        """The settings as JSON values (tuples as lists): what a checkpoint and metrics.json record."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The Config of to_dict's `d`; keys it does not know are left out (a newer version's), missing ones take
        their defaults (an older one's). Raises UserError for a `d` that is no dict, or a value out of range."""
        if not isinstance(d, dict):
            raise UserError(f"a Config is made from a dict of its settings, not {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def integer(value, name, low=1, high=None, what="a positive integer"):
    """`value` as a plain int, when it is a whole number in [low, high): an integer (Python's or NumPy's) or an
    integral float (2.0, np.float32(2)). Anything else (1.5, "2", True, None, NaN) is a UserError naming `name`."""
    whole = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
             and float(value).is_integer())
    if not whole or value < low or (high is not None and value >= high):
        raise UserError(f"{name} must be {what}, got {value!r}")
    return int(value)


def seed_value(value, name="seed"):
    """A seed as a plain int: the Philox key takes any integer in [0, 2**63)."""
    return integer(value, name, 0, 2**63, "an integer in [0, 2**63)")


def flag(value, name):
    """`value` as a plain bool, when it is one (Python's or NumPy's); else a UserError naming `name` (a string such as
    "no" is true, and turned progress bars on: an API review's trial)."""
    import numpy as np
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise UserError(f"{name} must be True or False, not {value!r}")


def real(value, name):
    """`value` as a plain float, when it is a finite real number (Python's or NumPy's, a Fraction, a Decimal: not a
    numbers.Real, so lr=Decimal("0.001") was refused, an API trial); else a UserError naming it."""
    if isinstance(value, decimal.Decimal) and value.is_finite() and math.isfinite(float(value)):
        return float(value)                 # (Decimal("1e400") is finite, its float is not: a review)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise UserError(f"{name} must be a finite number, got {value!r}")


def _widths(hidden):
    bad = UserError(f"hidden widths must be positive integers, got {hidden!r}; e.g. hidden=(500, 500)")
    # (sets and mappings have no order of layers to give)
    if isinstance(hidden, (str, bytes, set, frozenset, dict)) or not hasattr(hidden, "__iter__"):
        raise bad
    try:
        # read once: a generator was read by the check and then found empty (a model of no hidden layer was built
        # without a word, and its checkpoint could not be loaded: an API trial)
        widths = tuple(hidden)
        if not widths:
            raise bad
        return tuple(integer(h, "hidden") for h in widths)
    except (UserError, TypeError):
        raise bad from None
