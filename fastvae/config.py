"""The model and training settings. Defaults are the seed's (Géron, Hands-On ML 1st ed., ch. 15)."""
from dataclasses import asdict, dataclass, field

from .constants import ENCODERS, HIDDEN_ACTIVATIONS, RECONSTRUCTIONS
from .errors import UserError

N_PIXELS = 784  # 28 x 28 MNIST images, flattened


@dataclass(frozen=True)
class Config:
    # Encoder widths; the decoder mirrors them (784 -> 500 -> 500 -> latent -> 500 -> 500 -> 784).
    hidden: tuple = field(default=(500, 500))
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
    # The hidden layers' activation: "elu" is the seed's; "relu" and "tanh" also have derivatives that follow from
    # their output, so the fused kernels keep only y (constants.ACTIVATIONS).
    activation: str = "elu"

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise UserError(f"hidden widths must be positive integers, got {self.hidden}; e.g. hidden=(500, 500)")
        for name in ("latent", "batch_size", "epochs"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and self.lr < float("inf")):
            raise UserError(f"lr must be a positive number, got {self.lr!r}; the seed uses 0.001")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.adam_eps > 0):
            raise UserError("Adam needs 0 <= beta1, beta2 < 1 and adam_eps > 0")
        if self.encoder not in ENCODERS:
            raise UserError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise UserError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {self.reconstruction!r}")
        if self.activation not in HIDDEN_ACTIVATIONS:
            raise UserError(f"activation must be one of {', '.join(HIDDEN_ACTIVATIONS)}, got {self.activation!r}")
        if not (0 <= int(self.seed) < 2**63):
            raise UserError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")

    def to_dict(self):
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
