"""The model registry: `model.kind` -> class, the built-in kinds and those installed packages register.

A third-party kind is a package that declares an entry point in the group "vaekit.models", e.g. in
its pyproject.toml

    [project.entry-points."vaekit.models"]
    learned-prior = "vaekit_learned_prior:LearnedPriorVAE"

(tests/plugin_example is one). Entry points are read the first time the registry is used, not when
vaekit is imported; a plugin that does not load is skipped with a one-line warning naming it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator, MutableMapping

from flax import nnx

from vaekit.config.schema import Config
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.models.base import ModelBase
from vaekit.models.cvae import CVAE
from vaekit.models.disentangle import DIPVAE, TCVAE, FactorVAE
from vaekit.models.hierarchical import HVAE
from vaekit.models.ladder import LadderVAE
from vaekit.models.sharp import SharpVAE
from vaekit.models.textvae import LanguageModel, TextVAE
from vaekit.models.user_nets import given_or_recorded
from vaekit.models.vae import VAE
from vaekit.models.vaegan import VAEGAN
from vaekit.models.vqprior import VQPrior
from vaekit.models.vqvae import VQVAE

log = logging.getLogger("vaekit")

ENTRY_POINT_GROUP = "vaekit.models"
BUILTIN = {"vae": VAE, "cvae": CVAE, "hvae": HVAE, "ladder": LadderVAE, "vqvae": VQVAE, "vqprior": VQPrior,
           "tcvae": TCVAE, "factorvae": FactorVAE, "dipvae": DIPVAE,
           "sharp": SharpVAE, "vaegan": VAEGAN, "textvae": TextVAE, "lm": LanguageModel}


def plugin_kinds(builtin=BUILTIN) -> dict[str, type]:
    """The kinds of the "vaekit.models" entry points installed now: {name: class}. A plugin that
    fails to import, is not a model class, or reuses a built-in name is skipped with one warning line."""
    found = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"model kind plugin '{ep.name}' ({ep.value})"
        try:
            cls = ep.load()
        except Exception as e:  # a third party's import: whatever it raises, vaekit goes on without it
            first = (str(e).strip().splitlines() or [""])[0]
            log.warning("%s did not load and is skipped: %s: %s", where, type(e).__name__, first)
            continue
        if not (isinstance(cls, type) and issubclass(cls, ModelBase)):
            log.warning("%s is not a model class (a subclass of vaekit.models.base.ModelBase) and is skipped", where)
        elif ep.name in builtin:
            log.warning("%s has the name of a built-in kind and is skipped", where)
        else:
            found[ep.name] = cls
    return found


class Registry(MutableMapping):
    """{kind: class}: the built-in kinds, and the installed plugins' from the first lookup on."""

    def __init__(self, builtin: dict[str, type]):
        self._kinds = dict(builtin)
        self._plugins_read = False

    def _all(self) -> dict[str, type]:
        if not self._plugins_read:
            self._plugins_read = True
            self._kinds.update(plugin_kinds(self._kinds))
        return self._kinds

    def __getitem__(self, kind: str) -> type:
        return self._all()[kind]

    def __setitem__(self, kind: str, cls: type) -> None:
        self._all()[kind] = cls

    def __delitem__(self, kind: str) -> None:
        del self._all()[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


MODELS = Registry(BUILTIN)


def build_model(config: Config, spec: DataSpec, *, rngs: nnx.Rngs, encoder: nnx.Module | None = None,
                decoder: nnx.Module | None = None, **handed):
    """Construct the model named by `config.model.kind` for data of `spec`, parameters from `rngs`.

    encoder, decoder: your own nnx.Modules in place of the nets `model.net` builds, for the kinds
    whose class has `user_nets` (vae, cvae, tcvae, factorvae, dipvae, sharp, vaegan). The contract:
    `encoder(x (N, *event)) -> (mean, raw_scale)`, each (N, latent_dim); `decoder(z (N, latent_dim))
    -> (N, *event)` raw likelihood parameters (bernoulli logits, gaussian means), or (N, *event, P)
    for P > 1 per entry (gaussian_learned: 2, categorical: 256); a conditional kind passes the
    one-hot label as a second argument. They are checked at build, on a shape-only batch of two,
    and a mismatch is one line (`vaekit.models.user_nets`). Without them, the modules that
    `model.encoder`/`model.decoder` record (an import path, `*_args`: `user_nets.record` writes them
    when a run is trained with its own nets) are imported and rebuilt: how a run loads and resumes.
    handed: what the kind is built on besides its config, passed on to its constructor: for a kind
    built on a trained run (`needs_parent_run`), `parent=` that run's model, which
    `vaekit.runs.run.resolve_parent(config)` loads (a model never reads a run directory itself).
    """
    cls = MODELS.get(config.model.kind)
    if cls is None:
        raise VaekitError(f"unknown model.kind '{config.model.kind}' (valid: {', '.join(MODELS)})")
    if cls.needs_parent_run and "parent" not in handed:
        raise VaekitError(f"model.kind={config.model.kind} is built on a trained run: hand it "
                          f"build_model(..., **handed) with `cfg, handed = vaekit.runs.run.resolve_parent(cfg)`")
    nets = given_or_recorded(config.model, rngs, encoder, decoder)
    if nets and not cls.user_nets:
        takers = ", ".join(k for k, c in MODELS.items() if c.user_nets)
        raise VaekitError(f"model.kind '{config.model.kind}' builds its own nets; your {' and '.join(nets)} fit "
                          f"model.kind {takers}")
    return cls(config.model, config.objective, spec, rngs=rngs, **nets, **handed)


def abstract_model(config: Config, spec: DataSpec, **handed):
    """The model's structure with shape-only arrays (no parameters drawn): what restoring needs.
    Handed modules (a parent run's model, concrete or itself abstract) pass through as arguments."""
    return nnx.eval_shape(lambda h: build_model(config, spec, rngs=nnx.Rngs(0), **h), handed)


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "MODELS", "Registry", "abstract_model", "build_model", "plugin_kinds"]
