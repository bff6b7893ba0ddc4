"""Sentence VAE (Bowman et al. 2016, "Generating sentences from a continuous space") and its
baseline, a recurrent language model of the same size. Kinds "textvae" and "lm"; token data only.

textvae:
    q(z|x)   word embeddings -> bidirectional GRU/LSTM over the sentence (padding masked) -> the
             last states of both directions -> a diagonal Gaussian (D,).
    p(z)     N(0, I).
    p(x|z)   a GRU/LSTM decoder whose initial state is a linear map of z and whose input at every
             step is [embedding of the previous word, z]; a softmax over the vocabulary per step.
             log p(x|z) = sum over the real positions (the words and <eos>; `mask`) of
             log softmax(logits_t)[x_t]: padding never counts.
    Word dropout (`model.word_keep`): during training each decoder input word (never <bos>) is
    replaced by <unk> with probability 1 - word_keep; evaluation feeds every word. word_keep = 0
    is the inputless decoder: its inputs are always <unk>, in training and evaluation alike (it is
    a different model, not a regularizer), so every word must come through z.
    The objective is the ELBO with the KL weight schedule and free bits of `objectives.kl_term`
    (Bowman et al. anneal the KL weight with a sigmoid: objective.beta_schedule=sigmoid).

lm: the decoder alone (no z, zero initial state), trained by exact maximum likelihood. Its
    `log_weights` are the exact log p(x) for every "draw", so `vaekit evaluate` reports its exact
    NLL, comparable with the VAE's importance-sampled one.

Every recurrence is one `lax.scan` over time; decoding (greedy, temperature sampling, top-k and
beam search) is a scan too, compiled whole, with no per-token host call. Generated sentences
are (N, T) ids in the data's layout: the words, <eos>, then <pad>; the last position is always
<eos>, <pad> and <bos> are never generated.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.config.schema import ModelConfig, ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.data.text import BOS, EOS, PAD, UNK
from vaekit.core.distributions import DiagonalGaussian, posterior_scale
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import DEFAULT_GROUPS, Capabilities, ModelBase, ParamGroup
from vaekit.models.vae import variational_objective
from vaekit.core.priors import StandardNormal

log = logging.getLogger("vaekit")

CELLS = {"gru": nnx.GRUCell, "lstm": nnx.LSTMCell}


@dataclasses.dataclass(frozen=True)
class TextConfig(ModelConfig):
    """Keys of the text kinds (textvae, lm); `latent_dim` is the VAE's code size (the LM has none)."""

    # model.likelihood is not read: p(x|z) is always a softmax over the vocabulary at every position.
    likelihood: str = "categorical"
    embed_dim: int = 128  # word embedding width
    rnn_hidden: int = 256  # recurrent state width: the decoder's, and each direction's of the encoder
    cell: str = "gru"  # recurrent cell: "gru" or "lstm"
    word_keep: float = 1.0  # decoder word keep rate: 1 feeds every word, 0 the inputless decoder (Bowman et al.)

    def check(self) -> None:
        def need(cond, message):
            if not cond:
                raise VaekitError(message)

        need(self.cell in CELLS, f"model.cell must be one of {', '.join(CELLS)}; got '{self.cell}'")
        need(self.embed_dim > 0, f"model.embed_dim must be positive, got {self.embed_dim}")
        need(self.rnn_hidden > 0, f"model.rnn_hidden must be positive, got {self.rnn_hidden}")
        need(0.0 <= self.word_keep <= 1.0, f"model.word_keep must be in [0, 1], got {self.word_keep}")


def _bidirectional(fwd_cell, bwd_cell, carry, inputs: jax.Array, mask: jax.Array):
    """Both directions of a bidirectional RNN in one scan: inputs (..., T, F), mask (..., T) ->
    the final carries (forward, backward). Where the mask is 0 a carry is held, so the forward
    carry is the one after the last real token and the backward pass, reading the sentence
    reversed (padding first), starts at <eos>."""
    to_time = lambda a, axis: jnp.moveaxis(a, axis, 0)  # noqa: E731
    xs = (to_time(inputs, -2), to_time(mask, -1), to_time(inputs[..., ::-1, :], -2), to_time(mask[..., ::-1], -1))

    def hold(new, old, m):
        return jax.tree.map(lambda n, o: jnp.where(m[..., None] > 0, n, o), new, old)

    def body(c, step):
        (cf, cb), (xf, mf, xb, mb) = c, step
        nf, _ = fwd_cell(cf, xf)
        nb, _ = bwd_cell(cb, xb)
        return (hold(nf, cf, mf), hold(nb, cb, mb)), None

    (fwd, bwd), _ = jax.lax.scan(body, (carry, carry), xs)
    return fwd, bwd


def _hidden(carry) -> jax.Array:
    """The output state of a carry: GRU h, LSTM (c, h) -> h."""
    return carry[1] if isinstance(carry, tuple) else carry


def _sentence_mask(x: jax.Array) -> jax.Array:
    """1.0 on the words and <eos>, 0.0 on padding: (..., T)."""
    return (x != PAD).astype(jnp.float32)


class SentenceLikelihood:
    """p(x|z) of the decoder for codes z (..., N, D): `log_prob(x)` for ids (N, T) -> (..., N);
    `mean()` the greedy sentences, `sample(key)` ancestral samples, both (N, T) (z of shape (N, D))."""

    def __init__(self, model: "TextVAE", z: jax.Array):
        self.model, self.z = model, z

    def log_prob(self, x: jax.Array) -> jax.Array:
        return jnp.sum(self.model.token_log_probs(self.z, x), axis=-1)

    def mean(self) -> jax.Array:
        return self.model.generate(self.z, method="greedy")

    def sample(self, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        return self.model.generate(self.z, method="sample", key=key, temperature=temperature)


class TextVAE(ModelBase):
    """Sentence VAE (see the module docstring)."""

    kind = "textvae"
    config_class = TextConfig
    capabilities = Capabilities(kl_per_dim=True, data_kinds=("tokens",))

    def __init__(self, model: TextConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs):
        if spec.kind not in self.capabilities.data_kinds:
            raise VaekitError(f"model.kind '{self.kind}' takes token data (data.source=text), not {spec.kind}")
        self.model_cfg, self.objective, self.spec = model, objective, spec
        self.vocab_size, self.seq_len = int(spec.vocab_size), int(spec.shape[0])
        self.latent_dim = self._latent_size(model)
        self.word_keep = float(model.word_keep)
        self.deterministic = False  # eval(): no word dropout
        cell, e, h, d = CELLS[model.cell], model.embed_dim, model.rnn_hidden, self.latent_dim
        self.lstm = model.cell == "lstm"
        self.embed = nnx.Embed(self.vocab_size, e, rngs=rngs)
        if d:
            self.enc_fwd = cell(e, h, rngs=rngs)
            self.enc_bwd = cell(e, h, rngs=rngs)
            self.enc_head = nnx.Linear(2 * h, 2 * d, rngs=rngs)
            self.z_to_state = nnx.Linear(d, (2 if self.lstm else 1) * h, rngs=rngs)
        self.dec_cell = cell(e + d, h, rngs=rngs)
        self.out = nnx.Linear(h, self.vocab_size, rngs=rngs)
        self.rnn_hidden = h
        self.prior = nnx.data(StandardNormal(d) if d else None)

    def _latent_size(self, model: TextConfig) -> int:
        return model.latent_dim

    def param_groups(self) -> dict[str, ParamGroup]:
        return DEFAULT_GROUPS

    # ------------------------------------------------------------------ the recurrent parts

    def _zeros_carry(self, batch_shape: tuple[int, ...]):
        zeros = jnp.zeros((*batch_shape, self.rnn_hidden))
        return (zeros, zeros) if self.lstm else zeros

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> DiagonalGaussian:
        """q(z|x) for ids (N, T): a DiagonalGaussian with (N, D) parameters."""
        x = jnp.asarray(x, jnp.int32)
        mask, emb = _sentence_mask(x), self.embed(x)  # (N, T), (N, T, E)
        fwd, bwd = _bidirectional(self.enc_fwd, self.enc_bwd, self._zeros_carry(x.shape[:-1]), emb, mask)
        h = self.enc_head(jnp.concatenate([_hidden(fwd), _hidden(bwd)], axis=-1))
        d = self.latent_dim
        return DiagonalGaussian(h[..., :d], posterior_scale(h[..., d:], self.model_cfg.posterior_scale))

    def decode(self, z: jax.Array, y: jax.Array | None = None) -> SentenceLikelihood:
        """p(x|z) for codes (..., N, D) (see `SentenceLikelihood`)."""
        return SentenceLikelihood(self, z)

    def _initial_carry(self, z: jax.Array):
        if not self.latent_dim:
            return self._zeros_carry(z.shape[:-1])
        s = self.z_to_state(z)
        if self.lstm:
            c, h = jnp.split(s, 2, axis=-1)
            return c, jnp.tanh(h)
        return jnp.tanh(s)

    def decoder_inputs(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The decoder's input ids for targets x (..., T): <bos> then x shifted right, each word
        replaced by <unk> with probability 1 - word_keep when `key` is given (word dropout), and
        every word when word_keep is 0 (the inputless decoder)."""
        prev = jnp.concatenate([jnp.full(x.shape[:-1] + (1,), BOS, x.dtype), x[..., :-1]], axis=-1)
        is_word = jnp.arange(x.shape[-1]) > 0  # position 0 is <bos>: always fed
        if self.word_keep == 0.0:
            return jnp.where(is_word, UNK, prev)
        if key is not None and self.word_keep < 1.0:
            drop = jax.random.bernoulli(key, 1.0 - self.word_keep, prev.shape) & is_word
            return jnp.where(drop, UNK, prev)
        return prev

    def _dropout_key(self, rngs: nnx.Rngs | None):
        if rngs is None or self.deterministic or not 0.0 < self.word_keep < 1.0:
            return None
        return rngs.dropout()

    def _teacher_forced(self, z: jax.Array, x: jax.Array, key=None, reduce=None):
        """Run the decoder over targets x (N, T) for codes z (..., N, D); `reduce(logits (..., N, V),
        targets (..., N))` per step, stacked over time (...,  N, T, ...)."""
        x = jnp.asarray(x, jnp.int32)
        lead = z.shape[:-2]
        xb = jnp.broadcast_to(x, lead + x.shape)
        inputs = self.decoder_inputs(xb, key)
        emb = self.embed(inputs)  # (..., N, T, E)
        zt = jnp.broadcast_to(z[..., None, :], emb.shape[:-1] + (z.shape[-1],))
        feats = jnp.moveaxis(jnp.concatenate([emb, zt], axis=-1), -2, 0)  # (T, ..., N, E + D)
        targets = jnp.moveaxis(xb, -1, 0)  # (T, ..., N)

        def body(c, step):
            f, target = step
            c, h = self.dec_cell(c, f)
            return c, reduce(self.out(h), target)

        _, ys = jax.lax.scan(body, self._initial_carry(z), (feats, targets))
        return jnp.moveaxis(ys, 0, len(lead) + 1)

    def token_log_probs(self, z: jax.Array, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """log p(x_t | x_<t, z) on the real positions, 0 on padding: (..., N, T) for z (..., N, D).

        Only the target's log-probability leaves each step (never (N, T, V) logits), so k draws of
        a large vocabulary fit in memory."""

        def target_log_prob(logits, target):
            picked = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
            return picked - jax.nn.logsumexp(logits, axis=-1)

        lp = self._teacher_forced(z, x, key, target_log_prob)
        return lp * _sentence_mask(jnp.asarray(x))

    def logits(self, z: jax.Array, x: jax.Array) -> jax.Array:
        """The decoder's logits (N, T, V) along targets x (N, T), all inputs fed (for inspection and tests)."""
        return self._teacher_forced(z, x, None, lambda logits, target: logits)

    # ------------------------------------------------------------------ estimators

    def _draws(self, batch: dict, k: int, rngs: nnx.Rngs):
        """q, draws z (k, B, D), log q(z|x) (k, B) and per-token log p(x|z) (k, B, T)."""
        x = jnp.asarray(batch["x"], jnp.int32)
        q = self.encode(x)
        z, log_qz = q.sample_and_log_prob(rngs.sample(), (k,))
        return q, z, log_qz, self.token_log_probs(z, x, self._dropout_key(rngs))

    def log_weights(self, batch: dict, k: int, *, rngs: nnx.Rngs) -> jax.Array:
        """log p(x, z_i) - log q(z_i | x) for k draws: (B, k)."""
        _, z, log_qz, tok = self._draws(batch, k, rngs)
        return (jnp.sum(tok, axis=-1) + self.prior.log_prob(z) - log_qz).T

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """The ELBO (KL weight schedule, free bits) or IWAE objective as a batch mean, and metrics:
        per-sentence recon, KL and ELBO, the masked per-token NLL (`token_nll`), KL per dimension."""
        cfg = self.objective
        mask = _sentence_mask(jnp.asarray(batch["x"], jnp.int32))
        k = cfg.iwae_k if cfg.kind == "iwae" else 1
        q, z, log_qz, tok = self._draws(batch, k, rngs)
        loss, metrics = variational_objective(cfg, step, q, self.prior, z, log_qz, jnp.sum(tok, axis=-1),
                                              self.prior.log_prob(z), self.latent_dim)
        metrics["token_nll"] = mean_of(-tok[0], mask, axis=(0, 1))  # per real token (words and <eos>)
        return loss, metrics

    # ------------------------------------------------------------------ decoding

    def _step(self, carry, prev: jax.Array, z: jax.Array):
        """One decoder step from the previous ids (N,): (carry, log-probabilities (N, V))."""
        if self.word_keep == 0.0:  # the inputless decoder only ever sees <unk> after <bos>
            prev = jnp.where(prev == BOS, BOS, UNK)
        carry, h = self.dec_cell(carry, jnp.concatenate([self.embed(prev), z], axis=-1))
        return carry, self._allowed(jax.nn.log_softmax(self.out(h)))

    @staticmethod
    def _allowed(logp: jax.Array) -> jax.Array:
        return logp.at[..., PAD].set(-jnp.inf).at[..., BOS].set(-jnp.inf)

    def _only_eos(self, logp: jax.Array, t) -> jax.Array:
        """At the last position only <eos> may come (every encoded sentence ends there), at its own cost."""
        eos_only = jnp.where(jnp.arange(logp.shape[-1]) == EOS, logp, -jnp.inf)
        return jnp.where(t == self.seq_len - 1, eos_only, logp)

    def generate(self, z: jax.Array, *, method: str = "greedy", key: jax.Array | None = None,
                 temperature: float = 1.0, top_k: int = 0) -> jax.Array:
        """Sentences (N, T) for codes z (N, D): "greedy" (the most likely word each step), "sample"
        (softmax at `temperature`), "topk" (sampling among the `top_k` most likely words)."""
        if method not in ("greedy", "sample", "topk"):
            raise VaekitError(f"decoding method must be greedy, sample or topk (beam: beam_search); got '{method}'")
        if method != "greedy" and key is None:
            raise VaekitError(f"decoding method '{method}' needs a key")
        if method == "topk" and not 0 < top_k <= self.vocab_size:
            raise VaekitError(f"top-k needs 1 <= k <= {self.vocab_size} (the vocabulary), got {top_k}")
        n = z.shape[0]
        keys = jax.random.split(key, self.seq_len) if key is not None else jnp.zeros((self.seq_len, 2), jnp.uint32)

        def body(state, step):
            carry, prev, done = state
            t, k = step
            carry, logp = self._step(carry, prev, z)
            logp = self._only_eos(logp, t)
            if method == "greedy":
                tok = jnp.argmax(logp, axis=-1)
            else:
                scaled = logp / temperature
                if method == "topk":
                    kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
                    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
                tok = jax.random.categorical(k, scaled, axis=-1)
            tok = jnp.where(done, PAD, tok).astype(jnp.int32)
            return (carry, tok, done | (tok == EOS)), tok

        init = (self._initial_carry(z), jnp.full((n,), BOS, jnp.int32), jnp.zeros((n,), bool))
        _, toks = jax.lax.scan(body, init, (jnp.arange(self.seq_len), keys))
        return toks.T

    def beam_search(self, z: jax.Array, beam: int) -> tuple[jax.Array, jax.Array]:
        """The most likely sentence under a beam of `beam` hypotheses: (ids (N, T), log p (N,)).

        Scores are exact sums of log-probabilities (no length normalization); a finished
        hypothesis continues with <pad> at no cost. beam = 1 is greedy decoding, and a beam as
        wide as the number of sentences is exact search."""
        if beam < 1:
            raise VaekitError(f"--beam must be >= 1, got {beam}")
        n, v, t_len = z.shape[0], self.vocab_size, self.seq_len
        zk = jnp.repeat(z, beam, axis=0)  # (N * K, D)
        scores = jnp.full((n, beam), -jnp.inf).at[:, 0].set(0.0)  # one live hypothesis at first
        pad_only = jnp.full((v,), -jnp.inf).at[PAD].set(0.0)

        def body(state, t):
            carry, prev, done, scores, toks = state
            carry, logp = self._step(carry, prev.reshape(-1), zk)
            logp = self._only_eos(logp.reshape(n, beam, v), t)
            logp = jnp.where(done[..., None], pad_only, logp)
            cand = (scores[..., None] + logp).reshape(n, beam * v)
            scores, idx = jax.lax.top_k(cand, beam)  # (N, K)
            src, tok = idx // v, (idx % v).astype(jnp.int32)
            rows = (jnp.arange(n)[:, None] * beam + src).reshape(-1)  # the hypotheses they extend
            carry = jax.tree.map(lambda c: c[rows], carry)
            toks = jnp.take_along_axis(toks, src[..., None], axis=1).at[:, :, t].set(tok)
            done = jnp.take_along_axis(done, src, axis=1) | (tok == EOS)
            return (carry, tok, done, scores, toks), None

        init = (self._initial_carry(zk), jnp.full((n, beam), BOS, jnp.int32), jnp.zeros((n, beam), bool), scores,
                jnp.zeros((n, beam, t_len), jnp.int32))
        (_, _, _, scores, toks), _ = jax.lax.scan(body, init, jnp.arange(t_len))
        best = jnp.argmax(scores, axis=1)
        return toks[jnp.arange(n), best], scores[jnp.arange(n), best]

    def latent_codes(self, n: int, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """n codes from the prior (N, D) (an LM: (N, 0))."""
        return self.prior.sample(key, (n,), temperature)

    # ------------------------------------------------------------------ data out

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """The greedy sentence of the posterior mean: ids (N, T)."""
        return self.generate(self.encode(x).mean, method="greedy")

    def sample(self, n: int, *, rngs: nnx.Rngs, y: jax.Array | None = None, temperature: float = 1.0) -> jax.Array:
        """n sentences (n, T): z from the prior, words sampled from the softmax at `temperature`."""
        z = self.latent_codes(n, rngs.sample())
        return self.generate(z, method="sample", key=rngs.sample(), temperature=temperature)


class LanguageModel(TextVAE):
    """The decoder alone, a recurrent language model of the VAE's size (see the module docstring)."""

    kind = "lm"
    # log_weights are the exact log p(x), the same for every draw: `vaekit evaluate` scores once.
    capabilities = Capabilities(log_weights="exact", latent_vector=False, kl_per_dim=False, data_kinds=("tokens",))

    def __init__(self, model: TextConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs):
        super().__init__(model, objective, spec, rngs=rngs)
        default = dataclasses.asdict(ObjectiveConfig())
        changed = [k for k, v in dataclasses.asdict(objective).items() if k != "iwae_k" and v != default[k]]
        if changed:
            log.info("model.kind lm is trained by exact maximum likelihood: objective.%s do not apply",
                     ", objective.".join(changed))

    def _latent_size(self, model: TextConfig) -> int:
        return 0

    def encode(self, x: jax.Array, y: jax.Array | None = None):
        raise VaekitError("model.kind 'lm' has no latent variable to encode")

    def _codes(self, x: jax.Array) -> jax.Array:
        return jnp.zeros(jnp.shape(x)[:-1] + (0,))

    def latent_codes(self, n: int, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        return jnp.zeros((n, 0))

    def log_weights(self, batch: dict, k: int, *, rngs: nnx.Rngs) -> jax.Array:
        """The exact log p(x) for each of k "draws": (B, k)."""
        x = jnp.asarray(batch["x"], jnp.int32)
        log_px = jnp.sum(self.token_log_probs(self._codes(x), x), axis=-1)
        return jnp.broadcast_to(log_px[:, None], (x.shape[0], k))

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """Negative log-likelihood per sentence (batch mean); "elbo" is the exact log p(x)."""
        x = jnp.asarray(batch["x"], jnp.int32)
        tok = self.token_log_probs(self._codes(x), x, self._dropout_key(rngs))
        nll = -jnp.sum(tok, axis=-1)
        loss = jnp.mean(nll)
        metrics = {"loss": mean_of(jnp.broadcast_to(loss, nll.shape)), "recon": mean_of(nll), "elbo": mean_of(-nll),
                   "token_nll": mean_of(-tok, _sentence_mask(x), axis=(0, 1))}
        return loss, metrics

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """No code to reconstruct from: the most likely next word at each position given the true
        prefix (teacher forcing), (N, T), with padding kept as padding."""
        x = jnp.asarray(x, jnp.int32)
        best = jnp.argmax(self._allowed(self.logits(self._codes(x), x)), axis=-1).astype(jnp.int32)
        return jnp.where(x == PAD, PAD, best)


__all__ = ["LanguageModel", "SentenceLikelihood", "TextConfig", "TextVAE"]
