"""The config dataclasses: the keys every run has, at the bottom of the package.

A run is fully described by one frozen `Config` (data, model, objective, train). This module holds
the shared keys only: a model kind with keys of its own declares a `ModelConfig` subclass as its
class's `config_class` (e.g. `CVAEConfig` in models/cvae.py), and a data source with options of
its own declares a `DataConfig` subclass in `vaekit.data.SOURCE_CONFIGS` (e.g. `TextDataConfig` in
data/text.py). `vaekit.config.resolve` picks the class from `model.kind` and `data.source`.

It imports nothing of vaekit but its errors, so every layer (data, nets, models, core) can import
it without importing the resolution, which looks the classes up in their registries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

BINARIZE_MODES = ("none", "dynamic", "static")  # data.binarize (vaekit.data applies them)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The keys every data source has. A source with options of its own declares a subclass (its
    keys are accepted only with that `source`)."""

    source: str = "mnist"  # registered data source: "mnist", "arrays" (a user .npz, set by `path`), "shapes", "folder", "text"
    path: str | None = None  # .npz file with `x` (N, H, W[, C]) and optional `y`; implies source "arrays"
    limit: int | None = None  # use only the first N training examples (None: all)
    binarize: str = "none"  # "none" (continuous [0,1]), "dynamic" (fresh Bernoulli draw per batch), "static" (one seeded draw)
    seed: int = 0  # seed of the static binarization draw (and of generated sources' subsets)
    val_size: int = 10_000  # validation size where the source carves one (arrays without x_val, shapes); MNIST's is fixed

    def check(self) -> None:
        """Validate the source's own keys (a subclass overrides this); raise VaekitError."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The keys every model kind has. A kind with keys of its own declares a subclass of this
    (e.g. `CVAEConfig` in models/cvae.py) as its class's `config_class`; a key is accepted only
    for the kinds that declare it. The posterior, flow and prior keys are `VAEConfig`'s
    (models/vae.py), which the kinds that take them derive from."""

    kind: str = "vae"  # registered model class (`vaekit.models.MODELS`)
    net: str = "mlp"  # encoder/decoder body (`vaekit.nets.ENCODERS`): "mlp", "conv" or "resnet" (pre-activation residual stages)
    latent_dim: int = 50  # dimensions of z
    hidden: tuple[int, ...] = (200, 200)  # MLP hidden sizes (the decoder mirrors them)
    activation: str = "tanh"  # MLP activation: tanh, relu, gelu, silu, elu, softplus, leaky_relu
    conv_channels: tuple[int, ...] = (32, 64)  # channels of the 4x4 stride-2 conv stack (decoder mirrors)
    conv_dense: int = 0  # width of a dense layer between the conv stack and the latent heads (0: none)
    resnet_blocks: int = 1  # model.net=resnet: pre-activation residual blocks per stage (one stage per conv_channels entry)
    likelihood: str = "bernoulli"  # p(x|z): bernoulli, gaussian (fixed sigma), gaussian_learned, categorical
    sigma: float = 0.1  # standard deviation of the fixed-sigma Gaussian likelihood
    min_scale: float = 1e-3  # floor of a learned Gaussian likelihood's standard deviation
    posterior_scale: str = "softplus"  # q(z|x) std parameterization: "softplus" (+1e-4) or "logvar" (clamped)
    encoder: str | None = None  # your own encoder's class "package.module:Class" (recorded by training from Python with encoder=)
    encoder_args: dict = dataclasses.field(default_factory=dict)  # its constructor arguments: loading and resuming rebuild it
    decoder: str | None = None  # your own decoder's class, as model.encoder
    decoder_args: dict = dataclasses.field(default_factory=dict)  # its constructor arguments

    def check(self) -> None:
        """Validate the kind's own keys (a subclass overrides this); raise VaekitError."""


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "elbo"  # "elbo" (analytic KL) or "iwae" (k-sample importance-weighted bound)
    iwae_k: int = 5  # number of importance samples of the IWAE objective
    beta: float = 1.0  # weight of the KL term (its final value when annealed); 1 is the true ELBO
    beta_schedule: str = "constant"  # constant, linear, sigmoid, cyclical
    anneal_steps: int = 10_000  # length of the annealing schedule in training steps
    cycles: int = 4  # cyclical schedule: number of cycles within anneal_steps
    cycle_ratio: float = 0.5  # cyclical schedule: fraction of each cycle spent rising from 0 to beta
    free_bits: float = 0.0  # nats per latent dimension not penalized (0: off); Kingma et al. 2016
    capacity_max: float = 0.0  # capacity control target C_max in nats (0: off); Burgess et al. 2018
    capacity_steps: int = 100_000  # steps over which C rises linearly from 0 to capacity_max
    capacity_gamma: float = 1000.0  # weight gamma of |KL - C|


#: train.loop: "scan" (a chunk of steps as one jitted lax.scan), "steps" (a host loop of jitted
#: steps) or "auto" (`training.loop.resolve_loop` picks one by the model).
LOOPS = ("auto", "scan", "steps")
PRECISIONS = ("fp32", "bf16")  # train.precision: the compute dtype of the nets' hidden layers while training
KL_OPTIONS = ("beta", "beta_schedule", "free_bits", "capacity_max")  # what acts on an ELBO's KL term


def changed_objective(objective: ObjectiveConfig, keys=("kind", *KL_OPTIONS)) -> str:
    """The options among `keys` that differ from their defaults, as "objective.k=v, ..." ("" if none):
    for a model or bound that would otherwise ignore them."""
    default = ObjectiveConfig()
    return ", ".join(f"objective.{k}={getattr(objective, k)}" for k in keys
                     if getattr(objective, k) != getattr(default, k))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training split; setting it explicitly on a steps-counted preset clears `steps`
    max_minutes: float = 0.0  # stop after the first epoch (or validation) that ends past this much training time in this invocation (0: off); --resume continues
    steps: int | None = None  # count training in optimizer steps instead: batches drawn uniformly with replacement
    eval_every: int = 1000  # with `steps`: steps between validations, metrics records and checkpoints
    batch_size: int = 100  # examples per step
    seed: int = 0  # seeds parameters, shuffling, binarization draws and posterior samples
    optimizer: str = "adam"  # "adam" or "adamw"
    learning_rate: float = 1e-3  # peak learning rate
    adam_b1: float = 0.9  # Adam first-moment decay
    adam_b2: float = 0.999  # Adam second-moment decay
    adam_eps: float = 1e-8  # Adam epsilon (the IWAE paper used 1e-4)
    weight_decay: float = 0.0  # decoupled weight decay (adamw only)
    lr_schedule: str = "constant"  # constant, cosine, exponential, step, iwae (Burda et al. 3^i-epoch stages)
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    decay_rate: float = 0.1  # exponential/step: factor applied every decay_steps
    decay_steps: int = 10_000  # exponential/step: steps per decay_rate
    grad_clip: float = 0.0  # clip gradients to this global norm (0: off)
    chunk_steps: int = 100  # steps per chunk: the host syncs (progress, NaN guard) once per chunk
    loop: str = "auto"  # a chunk as one compiled lax.scan ("scan") or as jitted steps ("steps"); auto: steps for conv nets on CPU
    eval_batch_size: int = 1000  # batch size of validation passes
    checkpoint_every: int = 1  # save a checkpoint every N epochs (with `steps`: every N validations) (the best-by-validation one is kept too)
    keep_checkpoints: int = 2  # how many periodic checkpoints to keep
    compilation_cache: bool = True  # reuse compiled steps across runs (JAX's persistent cache; also VAEKIT_COMPILATION_CACHE=0)
    log_every: int = 10  # TensorBoard's step/* curves: one point per N training steps, the mean over them (1: every step)
    pictures: bool = True  # draw samples, reconstructions, curves and the model's own pictures when the run ends (false: none, e.g. for a sweep's runs; `vaekit sample`, `reconstruct` and `report` draw from the run later)
    loggers: tuple[str, ...] = ("tensorboard",)  # where metrics go besides metrics.jsonl: tensorboard, mlflow (pip install 'vaekit[mlflow]')
    devices: str = "1"  # data parallel over this many local devices per process ("all": every one); batch_size is global
    precision: str = "fp32"  # fp32, or bf16: the encoder/decoder nets' hidden layers compute in bfloat16 while training (parameters, optimizer state, output layers, losses and validation stay float32)


@dataclasses.dataclass(frozen=True)
class Config:
    """One run. `data` and `model` hold the classes their source and kind declare once resolved
    (`vaekit.config.merge` puts them there); the defaults here are the shared bases."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    train: TrainConfig = TrainConfig()
    preset: str | None = None  # the preset this config started from (informational)

    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML-friendly dict (tuples become lists)."""

        def plain(v):
            if isinstance(v, tuple):
                return [plain(e) for e in v]
            return v

        out: dict[str, Any] = {"preset": self.preset}
        for sec in SECTIONS:
            out[sec] = {k: plain(v) for k, v in dataclasses.asdict(getattr(self, sec)).items()}
        return out


SECTIONS = ("data", "model", "objective", "train")
