"""sfpo_lab.run.plot (curves of one run or a sweep) and sfpo_lab.run.curves (curves.png during a run)."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sfpo_lab.run.curves import CurvesCallback
from sfpo_lab.run.loggers import KeepingCSVLogger
from sfpo_lab.run.plot import default_out, draw, expand, label_runs, load_run, main

COLUMNS = ["sfpo/alpha", "sfpo/stop_step", "step", "train/entropy", "train/reward"]
COLUMNS += ["val/avg", "val/gsm8k/acc", "val/toy/acc"]
# the CSV logger's layout: validation rows and iteration rows apart, blanks, NaN before a trigger
ROWS = [
    ["", "", "0", "", "", "20.0", "10.0", "30.0"],
    ["0.8", "nan", "1", "0.50", "0.25", "", "", ""],
    ["0.8", "nan", "2", "0.40", "0.50", "", "", ""],
    ["0.8", "3.0", "3", "0.20", "0.75", "", "", ""],
    ["0.0", "3.0", "4", "0.30", "0.50", "", "", ""],
    ["", "", "4", "", "", "35.0", "20.0", "50.0"],
]


def _run_dir(path, overrides=(), rows=ROWS):
    path.mkdir(parents=True)
    with open(path / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return path


def _lines(fig):
    return {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines}


def test_curves_are_the_csv_columns_and_the_trigger_is_at_its_step(tmp_path):
    run = load_run(_run_dir(tmp_path / "run"))
    label_runs([run])
    lines = _lines(draw([run]))
    expected = {
        "val/gsm8k/acc": ([0, 4], [10.0, 20.0]),
        "val/toy/acc": ([0, 4], [30.0, 50.0]),
        "train/reward": ([1, 2, 3, 4], [0.25, 0.5, 0.75, 0.5]),
        "train/entropy": ([1, 2, 3, 4], [0.5, 0.4, 0.2, 0.3]),
        "sfpo/alpha": ([1, 2, 3, 4], [0.8, 0.8, 0.8, 0.0]),
    }
    assert set(lines) == {f"{k}|run" for k in expected} | {"trigger|run"}
    for key, (xs, ys) in expected.items():
        assert list(lines[f"{key}|run"].get_xdata()) == xs
        assert list(lines[f"{key}|run"].get_ydata()) == ys
    assert list(lines["trigger|run"].get_xdata()) == [3.0, 3.0]


def test_a_run_without_trigger_has_no_marker(tmp_path):
    rows = [[c if i != 1 else "nan" for i, c in enumerate(r)] for r in ROWS]
    run = load_run(_run_dir(tmp_path / "grpo", rows=rows))
    assert run.trigger is None
    assert not any(gid.startswith("trigger") for gid in _lines(draw([run])))


def test_sweep_dir_expands_to_jobs_in_numeric_order_labelled_by_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    for job in (0, 1, 10, 2):
        _run_dir(sweep / str(job), [f"sfpo.K={job}", "experiment=toy/main", "hydra.verbose=1"])
    (sweep / "multirun.yaml").write_text("{}\n")
    dirs = expand([sweep])
    assert [d.name for d in dirs] == ["0", "1", "2", "10"]
    runs = [load_run(d) for d in dirs]
    label_runs(runs)
    assert [r.label for r in runs] == ["sfpo.K=0", "sfpo.K=1", "sfpo.K=2", "sfpo.K=10"]
    lines = _lines(draw(runs))
    assert sum(gid.startswith("train/reward|") for gid in lines) == 4
    assert sum(gid.startswith("trigger|") for gid in lines) == 4


def test_cli_writes_one_picture_for_a_sweep_and_names_what_is_missing(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _run_dir(sweep / "0", ["seed=0"])
    _run_dir(sweep / "1", ["seed=1"])
    out = main([str(sweep)])
    assert out == sweep / "curves.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == f"wrote {out}\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty")])
    assert "empty: no metrics.csv in it or in its job subdirs" in capsys.readouterr().err


def test_default_output_goes_beside_the_runs_not_into_the_cwd(tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    sweep = tmp_path / "sweep"
    a, b = _run_dir(sweep / "0", ["seed=0"]), _run_dir(sweep / "1", ["seed=1"])
    assert main(["../sweep/1", str(a)]) == sweep / "curves.png"  # their common dir
    assert (sweep / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list(cwd.iterdir()) == []
    assert default_out([str(a)]) == a / "curves.png"
    assert default_out([a, b, sweep / "0" / "x"]) == sweep / "curves.png"
    capsys.readouterr()


def test_trigger_marker_is_named_stop_step_at_the_iteration_that_fired(tmp_path):
    run = load_run(_run_dir(tmp_path / "run"))
    label_runs([run])
    marker = _lines(draw([run]))["trigger|run"]
    assert marker.get_label() == "stop_step=3" and list(marker.get_xdata()) == [3.0, 3.0]


class _Logging(L.LightningModule):
    """Logs one iteration row per batch and a validation every second batch, like SFPOModule;
    records whether curves.png existed when each batch started."""

    def __init__(self, run_dir) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.run_dir, self.iteration, self.last_val = run_dir, 0, {}
        self.seen: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.run_dir / "curves.png").is_file())
        self.iteration += 1
        s = self.iteration
        metrics = {"train/reward": s / 10, "train/entropy": 1 / s, "sfpo/alpha": 0.5}
        metrics["sfpo/stop_step"] = 2.0 if s >= 2 else math.nan
        self.logger.log_metrics(metrics, step=s)
        if s % 2 == 0:
            self.last_val = {"val/toy/acc": 10.0 * s}
            self.logger.log_metrics(self.last_val, step=s)
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_callback_draws_after_each_validation_and_at_the_end(tmp_path):
    module = _Logging(tmp_path)
    trainer = L.Trainer(
        max_epochs=1,
        logger=KeepingCSVLogger(save_dir=tmp_path, name="", version=""),
        callbacks=[CurvesCallback(str(tmp_path))],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(torch.ones(3, 1), batch_size=1))
    assert module.seen == [False, False, True]  # validation at iteration 2, drawn before 3
    run = load_run(tmp_path)
    label_runs([run])
    lines = _lines(draw([run]))
    assert list(lines[f"train/reward|{tmp_path.name}"].get_ydata()) == [0.1, 0.2, 0.3]
    assert list(lines[f"trigger|{tmp_path.name}"].get_xdata()) == [2.0, 2.0]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
