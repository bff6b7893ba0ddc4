"""The HTML report: sections, no external reference, a comparison of runs, bad input, and a real
headless chromium rendering it (DevTools protocol over a pipe: no console message, no exception,
no request other than the page itself, a screenshot that is not blank)."""

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time

import numpy as np
import pytest

from conftest import trained_run_dir
from vaekit.cli import main as run_cli
from vaekit.report import external_references

SECTIONS = ("config", "curves", "kl", "pictures", "latent", "results")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = trained_run_dir(tmp_path_factory)
    (run_dir / "evaluation.json").write_text(json.dumps({"test-k10-n100": {"nll": 200.5, "elbo": -210.0}}))
    assert run_cli(["report", str(run_dir)]) == 0
    return run_dir / "report.html"


def test_report_sections_and_no_external_reference(report):
    text = report.read_text()
    assert external_references(text) == []
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for s in SECTIONS:
        assert f'id="r1-{s}"' in text
    for figure in ("samples", "reconstructions", "interp-lerp", "interp-slerp", "traversal"):
        assert f'id="r1-{figure}"' in text
    assert "Linear probe" in text and "200.5" in text  # the probe and evaluation.json
    assert text.count("data:image/png;base64,") >= 8  # curves, KL, 2 run pictures, 2 interpolations, traversal, PCA


def test_external_references_finds_them():
    page = '<img src="data:image/png;base64,AA"><a href="#x">x</a><link href="https://cdn/x.css"><img src=\'y.png\'>'
    assert external_references(page) == ["https://cdn/x.css", "y.png"]


def test_comparison_has_a_config_diff_and_overlaid_curves(report, tmp_path):
    run_dir = report.parent
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report.html"))
    cfg = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(cfg.replace("learning_rate: 0.001", "learning_rate: 0.002"))
    out = tmp_path / "compare.html"
    assert run_cli(["report", str(run_dir), str(other), "--out", str(out), "--no-model"]) == 0
    text = out.read_text()
    assert external_references(text) == []
    for s in ("compare-config", "compare-curves", "compare-scores", "compare-samples", "r1-config", "r2-config"):
        assert f'id="{s}"' in text
    assert "train.learning_rate" in text and "0.002" in text


@pytest.mark.parametrize("case", ["not_a_run", "missing_dir"])
def test_report_bad_input(report, tmp_path, capsys, case):
    target = tmp_path / "plain"
    target.mkdir()
    out = tmp_path / "r.html" if case == "not_a_run" else tmp_path / "nowhere" / "r.html"
    run = str(target) if case == "not_a_run" else str(report.parent)
    rc = run_cli(["report", run, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert ("not a vaekit run directory" if case == "not_a_run" else "does not exist") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"] and not list(target.iterdir())


# ---------------------------------------------------------------- the browser


class Chromium:
    """Headless chromium driven by the DevTools protocol over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, binary):
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        # bash maps the pipe ends to fds 3 and 4 (no preexec_fn: a fork of a process running JAX is unsafe)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_child} 4>&{from_child}', binary, "--headless", "--no-sandbox",
             "--disable-gpu", "--remote-debugging-pipe", "--no-first-run", "--disable-extensions",
             "--window-size=1280,900", "about:blank"],
            pass_fds=(to_child, from_child), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method, params=None, session=None, timeout=60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._next(timeout)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, timeout=60):
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next(deadline - time.time()))

    def _next(self, timeout):
        deadline = time.time() + timeout
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.mark.slow
def test_report_in_headless_chromium(report):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    browser = Chromium(binary)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        url = report.absolute().as_uri()
        browser.events.clear()
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        ids = browser.send("Runtime.evaluate", {"expression": "JSON.stringify([...document.querySelectorAll("
                                                              "'section')].map(s => s.id))", "returnByValue": True},
                           session=session)["result"]["value"]
        broken = browser.send("Runtime.evaluate", {"expression": "[...document.images].filter(i => !i.complete || "
                                                                 "i.naturalWidth === 0).length", "returnByValue": True},
                              session=session)["result"]["value"]
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    finally:
        browser.close()
    problems = [e for e in browser.events if e.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown",
                                                                 "Log.entryAdded", "Network.loadingFailed")]
    assert problems == [], problems
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(r == url or r.startswith("data:") for r in requests), requests
    assert json.loads(ids) == [f"r1-{s}" for s in SECTIONS]
    assert broken == 0
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("L"), np.float64)
    assert pixels.shape[1] == 1280 and pixels.shape[0] > 500
    assert pixels.std() > 10 and len(np.unique(pixels)) > 16  # not blank: text, tables and pictures
