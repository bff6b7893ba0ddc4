"""Make a plugin importable and its entry points visible without pip: the package's directory and
a `.dist-info` written from its pyproject.toml go on sys.path, where importlib.metadata finds
installed distributions."""

from __future__ import annotations

import tomllib
from pathlib import Path

HERE = Path(__file__).parent


def write_dist_info(where: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """A minimal installed distribution's metadata: METADATA and entry_points.txt."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(groups))
    return info


def install(tmp_path: Path, monkeypatch, project: Path = HERE) -> None:
    """`pip install -e project` as far as importing and entry points go, undone with `monkeypatch`."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    write_dist_info(tmp_path, meta["name"], meta["version"], meta["entry-points"])
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.syspath_prepend(str(tmp_path))
