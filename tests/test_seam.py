"""The widened model seam: parameter groups against hand-computed Adam steps, Monte Carlo KL
against the closed form, exact masked reductions, and the three conditioning modes."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import synthetic_splits, tiny_config
from vaekit.core import metrics as metrics_lib
from vaekit.core import objectives
from vaekit.config import ModelConfig, ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.core.distributions import DiagonalGaussian
from vaekit.core.metrics import Accumulator, Mean, mean_of
from vaekit.models import MODELS, Capabilities, ParamGroup
from vaekit.models.base import ModelBase
from vaekit.models.cvae import CVAE, CVAEConfig
from vaekit.core.priors import KL, StandardNormal, kl_divergence
from vaekit.training.loop import Trainer

# --------------------------------------------------------------------------- parameter groups


class TwoGroups(ModelBase):
    """Two parameter groups with their own losses, and a parameter in neither (frozen)."""

    kind = "two-groups"

    def __init__(self, model_cfg, objective_cfg, spec, *, rngs):
        self.a = nnx.Param(jnp.array([1.0, -2.0]))
        self.b = nnx.Param(jnp.array([0.5]))
        self.frozen = nnx.Param(jnp.array([3.0]))
        update = "alternating" if model_cfg.latent_dim == 2 else "simultaneous"
        self.capabilities = Capabilities(likelihood_bound=False, latent_vector=False, kl_per_dim=False,
                                         best_metric="loss", best_mode="min", update=update)

    def param_groups(self):
        return {"a": ParamGroup(nnx.All(nnx.Param, nnx.PathContains("a"))),
                "b": ParamGroup(nnx.All(nnx.Param, nnx.PathContains("b")), learning_rate=0.05)}

    def loss(self, batch, *, rngs, step):
        a, b, f = self.a[...], self.b[...], self.frozen[...]
        loss_a = jnp.sum(a**2) * b[0] + f[0] * a[0]
        loss_b = (b[0] - jnp.sum(a)) ** 2 * f[0]
        n = batch["x"].shape[0]
        return {"a": loss_a, "b": loss_b}, {"loss": mean_of(jnp.full((n,), loss_a + loss_b))}


def _losses(a, b, f=3.0):
    """(grad of loss_a in a, grad of loss_b in b), by hand."""
    ga = 2 * a * b[0] + np.array([f, 0.0])
    gb = np.array([2 * (b[0] - a.sum()) * f])
    return ga, gb


class Adam:
    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.m, self.v, self.t = lr, b1, b2, eps, 0.0, 0.0, 0

    def step(self, p, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        mhat, vhat = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
        return p - self.lr * mhat / (np.sqrt(vhat) + self.eps)


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_parameter_groups_follow_hand_computed_adam(update, monkeypatch):
    monkeypatch.setitem(MODELS, "two-groups", TwoGroups)
    cfg = tiny_config(model={"kind": "two-groups", "latent_dim": 2 if update == "alternating" else 3},
                      train={"steps": 3, "eval_every": 3, "chunk_steps": 3, "learning_rate": 0.1})
    trainer = Trainer(cfg, synthetic_splits(n=60))
    trainer.fit_epoch()
    a, b = np.array([1.0, -2.0]), np.array([0.5])
    opt_a, opt_b = Adam(0.1), Adam(0.05)  # group b has its own learning rate
    for _ in range(3):
        if update == "simultaneous":  # both gradients at the same point
            ga, gb = _losses(a, b)
            a, b = opt_a.step(a, ga), opt_b.step(b, gb)
        else:  # b's gradient at the a that a's update left
            a = opt_a.step(a, _losses(a, b)[0])
            b = opt_b.step(b, _losses(a, b)[1])
    params = trainer.state.params
    np.testing.assert_allclose(np.asarray(params["a"]["a"][...]), a, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(params["b"]["b"][...]), b, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(trainer.state.rest["frozen"][...]), [3.0])  # in no group: frozen
    assert set(trainer.state.opt_state) == {"a", "b"}


# --------------------------------------------------------------------------- KL


class GaussianWithoutClosedForm(DiagonalGaussian):
    """The same posterior, but not registered for a closed-form KL: the Monte Carlo path runs."""


def test_monte_carlo_kl_matches_closed_form_within_three_standard_errors():
    rng = np.random.default_rng(0)
    mean = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.3, 1.5, size=(4, 3)), jnp.float32)
    prior = StandardNormal(3)
    closed = kl_divergence(DiagonalGaussian(mean, scale), prior, None, None)
    assert closed.closed_form and closed.per_dim.shape == (4, 3)
    q = GaussianWithoutClosedForm(mean, scale)
    k = 20_000
    z, log_q = q.sample_and_log_prob(jax.random.PRNGKey(1), (k,))
    mc = kl_divergence(q, prior, z, log_q)
    assert not mc.closed_form and mc.per_dim is None
    per_draw = np.asarray(log_q - prior.log_prob(z))  # (k, 4)
    stderr = per_draw.std(axis=0) / np.sqrt(k)
    assert np.all(np.abs(np.asarray(mc.total) - np.asarray(closed.total)) < 3 * stderr)


def test_kl_term_free_bits_without_per_dimension_kl_uses_one_group():
    cfg = ObjectiveConfig(free_bits=0.5)
    low = KL(total=jnp.asarray([0.2, 0.4]), per_dim=None, closed_form=False)  # mean 0.3 nats, budget 2 x 0.5
    assert float(objectives.kl_term(low, jnp.asarray(0), cfg, latent_dim=2)[0]) == pytest.approx(1.0)
    high = KL(total=jnp.asarray([2.0, 4.0]), per_dim=None, closed_form=False)
    assert float(objectives.kl_term(high, jnp.asarray(0), cfg, latent_dim=2)[0]) == pytest.approx(3.0)


# --------------------------------------------------------------------------- reductions


def test_masked_mean_and_short_last_batch_are_exact():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(23, 7)).astype(np.float32)  # per-token values
    mask = (rng.uniform(size=(23, 7)) < 0.6).astype(np.float32)
    acc = Accumulator()
    for start in range(0, 23, 10):  # batches of 10, 10 and a short 3
        acc.add({"tok": mean_of(jnp.asarray(values[start:start + 10]), jnp.asarray(mask[start:start + 10]), axis=(0, 1)),
                 "ex": mean_of(jnp.asarray(values[start:start + 10].sum(1)))})
    out = acc.result()
    assert float(out["tok"]) == pytest.approx(values[mask > 0].mean(), rel=1e-5)
    assert float(out["ex"]) == pytest.approx(values.sum(1).mean(), rel=1e-5)
    # A mean of batch means would weigh the short batch's tokens more: the exact value differs.
    naive = np.mean([values[s:s + 10][mask[s:s + 10] > 0].mean() for s in range(0, 23, 10)])
    assert abs(naive - values[mask > 0].mean()) > 1e-3


def test_plain_values_stacked_over_steps_average_per_step():
    acc = Accumulator()
    acc.add({"lr": np.array([1.0, 2.0, 3.0]), "loss": Mean(np.array([10.0, 20.0, 30.0]), np.array([5.0, 5.0, 5.0]))},
            stacked=True)
    acc.add({"lr": np.array([4.0]), "loss": Mean(np.array([8.0]), np.array([2.0]))}, stacked=True)
    out = acc.result()
    assert float(out["lr"]) == pytest.approx(2.5)  # the mean over 4 steps, not a sum per chunk
    assert float(out["loss"]) == pytest.approx(68.0 / 17.0)


def test_validation_metrics_are_exact_over_a_short_last_batch():
    splits = synthetic_splits(n=80)  # 20 validation examples
    cfg = tiny_config(train={"eval_batch_size": 7})  # batches of 7, 7, 6
    trainer = Trainer(cfg, splits)
    whole = tiny_config(train={"eval_batch_size": 64})
    one = Trainer(whole, splits)
    one.state = trainer.state
    a, b = trainer.validate(), one.validate()
    # Different batchings draw different posterior samples, so compare the deterministic KL.
    assert a["val/kl"] == pytest.approx(b["val/kl"], rel=1e-5)


# --------------------------------------------------------------------------- conditioning


def _perturbed(model, seed=0):
    """Every parameter moved randomly, so that initial values (FiLM or CBN at identity) hide nothing."""
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else x
              for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("mode", ["concat", "film", "cbn"])
def test_each_conditioning_mode_changes_the_output_when_only_y_changes(net, mode):
    cfg = CVAEConfig(net=net, hidden=(16,), conv_channels=(4, 4), latent_dim=3, condition=mode)
    model = _perturbed(CVAE(cfg, ObjectiveConfig(), DataSpec("images", (8, 8, 1), 3), rngs=nnx.Rngs(0)))
    model.train()  # batch statistics in BatchNorm: the batch holds several classes
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    y0, y1 = jnp.zeros(6, jnp.int32), jnp.ones(6, jnp.int32)
    encode = nnx.jit(lambda m, y: m.encode(x, y).mean)  # each call one program, not op by op
    decode = nnx.jit(lambda m, z, y: m.decode(z, y).mean())
    m0, m1 = encode(model, y0), encode(model, y1)
    assert float(jnp.max(jnp.abs(m0 - m1))) > 1e-3
    np.testing.assert_array_equal(np.asarray(m0), np.asarray(encode(model, y0)))
    z = jax.random.normal(jax.random.PRNGKey(2), (6, 3))
    d0, d1 = decode(model, z, y0), decode(model, z, y1)
    assert float(jnp.max(jnp.abs(d0 - d1))) > 1e-3
    # Draw axes broadcast against per-example labels: (k, B, D) latents with (B,) labels.
    assert decode(model, jnp.stack([z, z]), y0).shape == (2, 6, 8, 8, 1)


def test_cvae_needs_labelled_data_and_labels():
    from vaekit.errors import VaekitError

    with pytest.raises(VaekitError, match="needs labelled data"):
        CVAE(CVAEConfig(hidden=(8,), latent_dim=2), ObjectiveConfig(), DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(0))
    model = CVAE(CVAEConfig(hidden=(8,), latent_dim=2), ObjectiveConfig(), DataSpec("images", (8, 8, 1), 2),
                 rngs=nnx.Rngs(0))
    with pytest.raises(VaekitError, match="labels"):
        model.sample(3, rngs=nnx.Rngs(sample=0))


def test_plain_vae_on_flat_vectors():
    from vaekit.models import VAE

    cfg = ModelConfig(hidden=(8,), latent_dim=2, likelihood="gaussian")
    model = VAE(cfg, ObjectiveConfig(), DataSpec("vectors", (5,)), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    loss, metrics = model.loss({"x": x}, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0))
    assert np.isfinite(float(loss)) and model.reconstruct(x).shape == (4, 5)
    assert model.log_weights({"x": x}, 3, rngs=nnx.Rngs(sample=0)).shape == (4, 3)
    assert metrics_lib.values(metrics)["kl_per_dim"].shape == (2,)


def test_rng_streams_reach_the_model(monkeypatch):
    seen = {}

    class Spy(MODELS["vae"]):
        def loss(self, batch, *, rngs, step):
            seen.update({s: hasattr(rngs, s) for s in ("sample", "dropout", "noise")})
            rngs.dropout(), rngs.noise()
            return super().loss(batch, rngs=rngs, step=step)

    monkeypatch.setitem(MODELS, "vae", Spy)
    Trainer(tiny_config(train={"steps": 1, "eval_every": 1, "chunk_steps": 1}), synthetic_splits(n=40)).fit_epoch()
    assert seen == {"sample": True, "dropout": True, "noise": True}


def test_a_group_may_override_the_optimizer_settings():
    """ParamGroup.train_overrides: the group's Adam uses its own b1, b2; two steps on fixed
    gradients match optax.adam with those betas and differ from the train config's."""
    import optax

    from vaekit.training.optim import group_optimizers

    class Groups:
        def param_groups(self):
            return {"a": ParamGroup(nnx.Param), "b": ParamGroup(nnx.Param, learning_rate=0.1,
                                                                train_overrides={"adam_b1": 0.5, "adam_b2": 0.9})}

    t = tiny_config(train={"lr_schedule": "constant", "grad_clip": 0.0, "warmup_steps": 0}).train
    opts = group_optimizers(Groups(), t, data_pass_steps=10)
    grads = [jnp.asarray([1.0, -2.0]), jnp.asarray([0.3, 4.0])]

    def run(tx):
        p, s = jnp.zeros(2), tx.init(jnp.zeros(2))
        for g in grads:
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
        return np.asarray(p)

    want = run(optax.adam(0.1, b1=0.5, b2=0.9, eps=t.adam_eps))
    np.testing.assert_allclose(run(opts["b"][0]), want, rtol=1e-6)
    assert not np.allclose(run(optax.adam(0.1, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps)), want)


def test_apply_batched_equals_one_call_for_arrays_and_pytrees():
    """The shared batched-apply helper: uneven last batch, array and pytree outputs, equal to one call."""
    import numpy as np
    from flax import nnx

    from vaekit.models.base import apply_batched

    layer = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    np.testing.assert_allclose(apply_batched(layer, lambda m, b: m(b), x, 3), np.asarray(layer(x)), rtol=1e-6)
    out = apply_batched(layer, lambda m, b: {"y": m(b), "n": b.sum(-1)}, x, 4)
    np.testing.assert_allclose(out["n"], x.sum(-1), rtol=1e-6)
    assert out["y"].shape == (10, 3)
