"""The MLflow logger against a local file store (skipped only when mlflow is not installed)."""

import pytest

from vaekit.training.tracking import flatten_config, metrics_of


def test_flatten_config_and_metrics_of():
    assert flatten_config({"model": {"hidden": [64, 32], "latent_dim": 8}, "preset": None}) == {
        "model.hidden": "[64, 32]", "model.latent_dim": "8", "preset": "null"}
    rec = {"epoch": 3, "step": 30, "val/elbo": -100.5, "val/kl_per_dim": [0.5, 1.0], "val/active_units": 2,
           "bad": float("nan"), "flag": True}
    assert metrics_of(rec) == {"val/elbo": -100.5, "val/kl_per_dim/000": 0.5, "val/kl_per_dim/001": 1.0,
                               "val/active_units": 2.0}


def test_mlflow_logger_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from vaekit.training.tracking import MlflowLogger, log_run_artifacts

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    (run_dir / "samples.png").write_bytes(b"\x89PNG fake")
    (run_dir / "config.yaml").write_text("model: {}\n")
    with MlflowLogger(run_dir) as logger:  # default store: runs/mlruns beside the run
        logger.log_params({"model": {"latent_dim": 8, "hidden": [64]}, "train": {"epochs": 2}})
        logger.log_metrics({"epoch": 1, "val/elbo": -120.0, "val/kl_per_dim": [0.1, 0.2]}, step=1)
        logger.log_metrics({"epoch": 2, "val/elbo": -110.0, "val/kl_per_dim": [0.3, 0.4]}, step=2)
        log_run_artifacts(logger, run_dir)
    assert logger.tracking_uri == (tmp_path / "runs" / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    assert run.data.params == {"model.latent_dim": "8", "model.hidden": "[64]", "train.epochs": "2"}
    history = client.get_metric_history(logger.run_id, "val/elbo")
    assert [(m.step, m.value) for m in history] == [(1, -120.0), (2, -110.0)]
    assert client.get_metric_history(logger.run_id, "val/kl_per_dim/001")[-1].value == pytest.approx(0.4)
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == ["config.yaml", "samples.png"]
    logger.close()  # a second close does nothing


def test_mlflow_logger_marks_a_failed_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from vaekit.training.tracking import MlflowLogger

    uri = (tmp_path / "store").as_uri()
    with pytest.raises(RuntimeError):
        with MlflowLogger(tmp_path / "r", tracking_uri=uri, experiment="e") as logger:
            raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=uri).get_run(logger.run_id).info.status == "FAILED"


def _mlflow_training(tmp_path, monkeypatch, epochs: int):
    """A tiny run logged to MLflow's file store beside it: (cfg, run_dir, client, its data, runs of the experiment)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from conftest import synthetic_splits, tiny_config
    from vaekit.runs.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    splits = synthetic_splits(n=80)
    cfg = tiny_config(train={"loggers": ("mlflow",), "epochs": epochs, "pictures": True})  # pictures: artifacts
    run_dir = train(cfg, data=splits, runs_dir=tmp_path, name="tracked", progress=False)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    return cfg, run_dir, client, splits, lambda: client.search_runs([client.get_experiment_by_name("vaekit").experiment_id])


def test_training_logs_to_mlflow_when_asked(tmp_path, monkeypatch):
    _, run_dir, client, _, runs = _mlflow_training(tmp_path, monkeypatch, epochs=2)
    assert not (run_dir / "tensorboard").exists()  # only the loggers asked for
    (run,) = runs()
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/elbo")] == [1, 2]
    assert "samples.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_resumed_training_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    import dataclasses
    import json

    from vaekit.runs.train import train

    cfg, run_dir, client, splits, runs = _mlflow_training(tmp_path, monkeypatch, epochs=1)
    first_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    train(longer, data=splits, resume=run_dir, progress=False)
    (run,) = runs()
    assert run.info.run_id == first_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first_id, "val/elbo")] == [1, 2]  # both parts, one run
    assert run.data.params["train.epochs"] == "1" and run.data.tags["resume.train.epochs"] == "2"
