"""Text data and the sentence VAE / language model: tokenization and vocabulary, the masked
likelihood against a numpy loop, word dropout, greedy and beam decoding (exact search checked by
enumeration), the vocabulary through a run directory, and the CLI's one-line errors."""

import gzip
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import shared_run
from vaekit import config as config_lib
from vaekit.cli import main
from vaekit.data import DataSpec, load_configured
from vaekit.data.text import (BOS, EOS, PAD, UNK, TextDataConfig, Vocabulary, load_text_splits, run_vocabulary,
                              sentence_lengths, tokenize)
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.runs.layout import read_config


def _model(kind="textvae", vocab=9, seq_len=6, **model):
    cfg = config_lib.merge(config_lib.Config(), {"model": {"kind": kind, "latent_dim": 3, "embed_dim": 5,
                                                           "rnn_hidden": 7, **model}})
    config_lib.validate(cfg)
    return build_model(cfg, DataSpec("tokens", (seq_len,), None, vocab), rngs=nnx.Rngs(params=0))


def _log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


# --------------------------------------------------------------------------- data


def test_tokenize_vocabulary_and_encoding():
    assert tokenize("Don't go, Bob!") == ["don't", "go", ",", "bob", "!"]
    assert tokenize("Don't go", lowercase=False) == ["Don't", "go"]
    sentences = [tokenize(s) for s in ["b a c", "a b", "c d"]]  # a, b, c twice; d once
    vocab = Vocabulary.build(sentences, 7, lowercase=True, max_len=3)
    assert vocab.words == ("<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c")  # ties alphabetical, d cut
    batch = vocab.encode(["A b z", "c a b a c"])
    np.testing.assert_array_equal(batch["x"], [[4, 5, UNK, EOS], [6, 4, 5, EOS]])  # unseen z -> <unk>; truncated
    np.testing.assert_array_equal(sentence_lengths(batch["x"]), [4, 4])
    short = vocab.encode(["a"])
    np.testing.assert_array_equal(short["x"], [[4, EOS, PAD, PAD]])
    np.testing.assert_array_equal(sentence_lengths(short["x"]), [2])
    assert vocab.decode(batch["x"]) == ["a b <unk>", "c a b"]
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    with pytest.raises(VaekitError, match="at least 5"):
        Vocabulary.build(sentences, 4, lowercase=True, max_len=3)


def test_text_source_splits_truncation_and_demo_corpus(tmp_path, caplog):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(f"w{i % 7} w{i % 5} w{i % 3} end" + (" x" * (i % 4)) for i in range(50)) + "\n\n")
    cfg = TextDataConfig(max_len=5, vocab_size=12, val_size=5)
    with caplog.at_level("INFO", logger="vaekit"):
        out = load_text_splits(str(path), val_size=5, seed=1, data_config=cfg)
    assert [len(out[s]["x"]) for s in ("train", "val", "test")] == [40, 5, 5]
    lines = path.read_text().split("\n")[:50]
    assert len({tuple(r) for r in out["train"]["x"]} | {tuple(r) for r in out["val"]["x"]}) <= 50
    n_long = sum(len(tokenize(s)) > 5 for s in lines)
    logged = sum(int(r.getMessage().split()[1]) for r in caplog.records if "truncated" in r.getMessage())
    assert logged == n_long > 0  # every truncated sentence is counted, in whichever split it landed
    assert out["spec"] == DataSpec("tokens", (6,), None, 12)
    assert json.loads(out["run_files"]["vocab.json"])["words"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    splits = load_configured(TextDataConfig(max_len=12, vocab_size=50, val_size=100, limit=500))
    assert splits.spec.kind == "tokens" and splits.num_train == 500 and len(splits.val["x"]) == 100
    x, lengths = splits.train["x"], sentence_lengths(splits.train["x"])
    assert set(splits.train) == {"x"} and np.all(x[np.arange(len(x)), lengths - 1] == EOS)  # <eos>, then only <pad>


def test_bad_text_files(tmp_path):
    cfg = TextDataConfig(max_len=3)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(VaekitError, match="no sentences"):
        load_text_splits(str(tmp_path / "empty.txt"), data_config=cfg)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(VaekitError, match="not UTF-8"):
        load_text_splits(str(tmp_path / "latin1.txt"), data_config=cfg)
    (tmp_path / "long.txt").write_text("one two three four\n" * 30)
    with pytest.raises(VaekitError, match="no training sentence .* at most data.max_len=3"):
        load_text_splits(str(tmp_path / "long.txt"), data_config=cfg)
    gz = tmp_path / "ok.txt.gz"
    gz.write_bytes(gzip.compress(b"a b\nc d\n" * 20))
    assert len(load_text_splits(str(gz), val_size=2, data_config=cfg)["train"]["x"]) == 36


# --------------------------------------------------------------------------- the model


def _sentences(rng, n, seq_len, vocab, lengths=None):
    """Random padded sentences: words 4.., <eos>, <pad>; lengths (with <eos>) from `lengths` or 1..seq_len."""
    x = np.zeros((n, seq_len), np.int32)
    length = rng.choice(lengths, n) if lengths is not None else rng.integers(1, seq_len + 1, n)
    for i, n_tok in enumerate(length):
        x[i, : n_tok - 1] = rng.integers(4, vocab, n_tok - 1)
        x[i, n_tok - 1] = EOS
    return x, length


@pytest.mark.parametrize("kind", ["textvae", "lm"])
def test_masked_likelihood_matches_numpy_loop_over_unpadded_sentences(kind):
    model = _model(kind, vocab=9, seq_len=6, cell="lstm" if kind == "lm" else "gru")
    model.eval()
    rng = np.random.default_rng(0)
    x, length = _sentences(rng, 7, 6, 9, lengths=[1, 3, 6])  # three lengths: three compilations below
    logits_of = nnx.jit(lambda m, z, x: m.logits(z, x))
    d = model.latent_dim
    z = jnp.asarray(rng.normal(size=(7, d)), jnp.float32)
    padded = np.asarray(model.decode(z).log_prob(jnp.asarray(x)))  # (7,)
    expected = []
    for i in range(7):  # each sentence alone, without padding: its logits, then log-softmax in numpy
        xi = x[i : i + 1, : length[i]]
        logits = np.asarray(logits_of(model, z[i : i + 1], jnp.asarray(xi)), np.float64)[0]  # (L, V)
        expected.append(sum(_log_softmax(logits)[t, xi[0, t]] for t in range(length[i])))
    np.testing.assert_allclose(padded, expected, rtol=1e-5, atol=1e-5)
    if kind == "lm":  # its log weights are that exact log-likelihood, for any k
        lw = np.asarray(model.log_weights({"x": jnp.asarray(x)}, 3, rngs=nnx.Rngs(sample=0)))
        np.testing.assert_allclose(lw, np.repeat(np.asarray(expected)[:, None], 3, 1), rtol=1e-5, atol=1e-5)
    # The loss's exact masked token mean: total over real tokens, count = words and <eos>.
    _, metrics = model.loss({"x": jnp.asarray(x)}, rngs=nnx.Rngs(sample=1), step=jnp.asarray(0))
    assert float(metrics["token_nll"].count) == length.sum()
    np.testing.assert_allclose(float(metrics["token_nll"].total), float(metrics["recon"].total), rtol=1e-5)


def test_word_dropout_rate_within_three_standard_errors():
    model = _model(word_keep=0.7, vocab=20, seq_len=21)
    x = jnp.asarray(np.random.default_rng(0).integers(4, 20, (500, 21)), jnp.int32)
    inputs = np.asarray(model.decoder_inputs(x, jax.random.PRNGKey(3)))
    assert np.all(inputs[:, 0] == BOS)
    words = inputs[:, 1:]
    n = words.size
    rate = np.mean(words == UNK)
    se = math.sqrt(0.3 * 0.7 / n)
    assert abs(rate - 0.3) < 3 * se, (rate, se)
    kept = words != UNK
    np.testing.assert_array_equal(words[kept], np.asarray(x)[:, :-1][kept])  # kept words are the previous targets
    # Only training draws: eval mode gives no dropout key; keep rate 0 feeds <unk> always.
    model.eval()
    assert model._dropout_key(nnx.Rngs(dropout=0)) is None
    inputless = _model(word_keep=0.0, vocab=20, seq_len=21)
    assert np.all(np.asarray(inputless.decoder_inputs(x))[:, 1:] == UNK)


def test_beam_of_one_is_greedy_and_generation_layout():
    model = _model(vocab=10, seq_len=7)
    model.eval()
    z = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)) * 3, jnp.float32)
    greedy = np.asarray(model.generate(z, method="greedy"))
    beam, _ = model.beam_search(z, 1)
    np.testing.assert_array_equal(np.asarray(beam), greedy)
    sampled = np.asarray(model.generate(z, method="topk", key=jax.random.PRNGKey(0), top_k=2, temperature=0.8))
    for ids in (greedy, sampled):
        assert not np.any(ids == BOS)
        for row in ids:  # words, exactly one <eos>, then padding
            end = list(row).index(EOS)
            assert np.all(row[:end] != PAD) and np.all(row[end + 1 :] == PAD)


def test_beam_search_finds_the_exact_argmax_by_enumeration():
    vocab, seq_len = 6, 4  # words 4, 5 and <unk>; at most 3 of them, then <eos>
    model = _model(vocab=vocab, seq_len=seq_len)
    model.eval()
    choices = [UNK, 4, 5]
    seqs = []
    for n_words in range(seq_len):
        for words in itertools.product(choices, repeat=n_words):
            seqs.append(list(words) + [EOS] + [PAD] * (seq_len - n_words - 1))
    seqs = jnp.asarray(seqs, jnp.int32)  # (40, 4): every sentence the decoder can produce
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)) * 2, jnp.float32)
    for i in range(5):
        log_p = np.asarray(model.decode(jnp.broadcast_to(z[i], (len(seqs), 3))).log_prob(seqs))
        best = int(np.argmax(log_p))
        ids, score = model.beam_search(z[i : i + 1], len(seqs))
        np.testing.assert_array_equal(np.asarray(ids)[0], np.asarray(seqs[best]))
        np.testing.assert_allclose(float(score[0]), log_p[best], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- through a run directory and the CLI


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """(run directory, corpus): a tiny text-demo run on a 120-sentence corpus, trained once per
    session for every worker (`conftest.shared_run`)."""
    def make(runs, name):
        corpus = runs / f"{name}-corpus.txt"
        rng = np.random.default_rng(0)
        words = "the a cat dog saw ran home fast slowly big".split()
        corpus.write_text("\n".join(" ".join(rng.choice(words, rng.integers(2, 7))) for _ in range(120)) + "\n")
        rc = main(["train", "--preset", "text-demo", "--runs-dir", str(runs), "--name", name, "--no-progress",
                   "--set", f"data.path={corpus}", "--set", "data.max_len=6", "--set", "data.vocab_size=9",
                   "--set", "data.val_size=10", "--set", "model.latent_dim=2", "--set", "model.embed_dim=4",
                   "--set", "model.rnn_hidden=6", "--set", "train.steps=4", "--set", "train.eval_every=4",
                   "--set", "train.batch_size=10", "--set", "train.chunk_steps=2"])
        assert rc == 0

    run_dir = shared_run(tmp_path_factory, "text", make)
    return run_dir, Path(read_config(run_dir).data.path)


def test_vocabulary_round_trips_through_the_run_directory(text_run, tmp_path):
    from vaekit.runs.run import load_run

    run_dir, corpus = text_run
    run = load_run(run_dir)
    vocab = run_vocabulary(run)
    splits = load_text_splits(str(corpus), val_size=10, seed=0, data_config=run.config.data)
    assert vocab == Vocabulary.from_json(splits["run_files"]["vocab.json"])
    assert len(vocab) == 9 and vocab.max_len == 6 and run.spec.vocab_size == 9
    np.testing.assert_array_equal(vocab.encode(["The zebra"])["x"][0, :3], [vocab.ids["the"], UNK, EOS])
    np.testing.assert_array_equal(run.data().val["x"], splits["val"]["x"])  # the run's data encodes the same way
    other = tmp_path / "changed.txt"
    other.write_text(corpus.read_text().replace(vocab.words[4], "lion"))  # the most frequent word renamed
    run.config = config_lib.merge(run.config, {"data": {"path": str(other)}})
    with pytest.raises(VaekitError, match="another vocab.json"):
        run.data()


def test_evaluate_reports_per_word_perplexity(text_run):
    from vaekit.runs.run import load_run
    from vaekit.evaluate import evaluate

    run = load_run(text_run[0])
    s = evaluate(run, split="val", samples=4, progress=False, write=False)
    lengths = sentence_lengths(run.data().val["x"])
    assert s["tokens"] == int(lengths.sum())  # words and one <eos> per sentence
    assert math.isclose(s["perplexity"], math.exp(s["nll"] * s["examples"] / s["tokens"]), rel_tol=1e-6)
    assert s["kl"] > 0 and "reconstruction_mse" not in s and "active_units" in s


def test_cli_text_commands(text_run, tmp_path, capsys):
    run_dir, _ = text_run
    out = tmp_path / "s.txt"
    assert main(["sample", str(run_dir), "-n", "4", "--temperature", "0.8", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert main(["sample", str(run_dir), "-n", "2", "--decode", "beam", "--beam", "3", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert main(["reconstruct", str(run_dir), "--text", "the cat ran", "--out", str(out)]) == 0
    assert out.read_text().startswith("the cat ran  =>  ")
    assert main(["interpolate", str(run_dir), "--between", "the cat", "a dog ran", "--steps", "4",
                 "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4


def _fake_image_run(tmp_path):
    run = tmp_path / "img"
    run.mkdir()
    (run / "config.yaml").write_text("preset: mnist-mlp\n")
    (run / "run.json").write_text(json.dumps({"data_spec": {"kind": "images", "shape": [8, 8, 1]}}))
    return run


@pytest.mark.parametrize("argv, message", [
    (["sample", "RUN", "--label", "1"], "--label needs a run with class labels"),
    (["reconstruct", "IMG", "--text", "hello"], "--text applies to text runs"),
    (["sample", "IMG", "--decode", "beam"], "--decode applies to text runs"),
    (["interpolate", "IMG", "--between", "a", "b"], "--between applies to text runs"),
    (["sample", "RUN", "--decode", "greedy", "--beam", "3"], "--beam applies to --decode beam"),
    (["sample", "RUN", "--decode", "beam", "--beam", "0"], "--beam must be >= 1, got 0"),
    (["train", "--preset", "text-demo", "--set", "data.path=EMPTY"], "no sentences"),
    (["train", "--preset", "text-demo", "--set", "data.path=LATIN1"], "not UTF-8"),
    (["train", "--preset", "text-demo", "--set", "data.path=LONG", "--set", "data.max_len=2"], "no training sentence"),
    (["train", "--preset", "text-demo", "--set", "data.vocab_size=4"], "data.vocab_size must be at least 5"),
])
def test_cli_bad_input_is_one_line_with_exit_2(argv, message, text_run, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n" * 30)
    (tmp_path / "long.txt").write_text("one two three\n" * 30)
    subs = {"RUN": str(text_run[0]), "IMG": str(_fake_image_run(tmp_path))}
    subs |= {"data.path=EMPTY": f"data.path={tmp_path / 'empty.txt'}", "data.path=LATIN1": f"data.path={tmp_path / 'latin1.txt'}",
             "data.path=LONG": f"data.path={tmp_path / 'long.txt'}"}
    argv = [subs.get(a, a) for a in argv] + (["--runs-dir", str(tmp_path / "runs")] if argv[0] == "train" else [])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_empty_sampled_sentence_shows_as_empty(tmp_path, capsys):
    from vaekit.cli.text import _save

    out = tmp_path / "samples.txt"
    _save(out, ["a cat sat", "", "a dog"])  # a sentence whose first token is <eos> decodes to ""
    assert capsys.readouterr().out.splitlines() == ["a cat sat", "(empty)", "a dog", str(out)]
    assert out.read_text().splitlines() == ["a cat sat", "", "a dog"]  # the file keeps one sentence per line
