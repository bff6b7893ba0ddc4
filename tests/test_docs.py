"""The README's Python examples run as written, and a run trained with your own nets loads back in a
new process (the classes found by the import path config.yaml records)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_readme_trains_with_your_own_nets_and_arrays_as_written(tmp_path):
    """The README's "Train from Python" block, run as a script in a fresh directory: it trains, writes
    runs/mine and loads it back (its classes live in the script's __main__)."""
    block = next(b for b in python_blocks(ROOT / "README.md") if "vaekit.train(cfg, data=" in b)
    script = tmp_path / "example.py"
    script.write_text("import vaekit.runtime\nvaekit.runtime.configure()\n" + block)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert np.isfinite(float(out.stdout.strip().splitlines()[-1]))
    config = (tmp_path / "runs" / "mine" / "config.yaml").read_text()
    assert "encoder: __main__:MyEncoder" in config and "decoder: __main__:MyDecoder" in config
    assert json.loads((tmp_path / "runs" / "mine" / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_a_run_with_your_own_nets_loads_back_in_a_new_process(tmp_path):
    """Trained here with importable classes (tests/test_user_nets.py's); a new process that never saw
    them loads the run from its directory alone and gives the same reconstructions."""
    from conftest import synthetic_splits, tiny_config
    from test_user_nets import _nets

    from vaekit.models import user_nets
    from vaekit.runs.run import load_run
    from vaekit.runs.train import train

    splits = synthetic_splits(n=60)
    cfg = tiny_config(model={"latent_dim": 4}, train={"epochs": 1, "batch_size": 20, "chunk_steps": 3})
    encoder, decoder = _nets(splits.spec.shape, latent=4)
    run_dir = train(cfg, data=splits, out=tmp_path / "run", progress=False, encoder=encoder, decoder=decoder)
    x = np.asarray(splits.val["x"][:5])
    np.save(tmp_path / "x.npy", x)
    here = np.asarray(load_run(run_dir).model.reconstruct(x))
    code = textwrap.dedent(f"""
        import sys, numpy as np, vaekit
        run = vaekit.load_run({str(run_dir)!r})
        print(type(run.model.encoder.net).__module__, type(run.model.encoder.net).__name__)
        np.save({str(tmp_path / 'there.npy')!r}, np.asarray(run.model.reconstruct(np.load({str(tmp_path / 'x.npy')!r}))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["test_user_nets", "MyEncoder"]
    np.testing.assert_array_equal(np.load(tmp_path / "there.npy"), here)
    assert user_nets.import_path(type(encoder)) == "test_user_nets:MyEncoder"
