"""W&B mode (issue 25, item 6): a run started by a W&B sweep agent logs online unless the user
set a mode (command line / sweep parameter, or WANDB_MODE); otherwise ``wandb.mode`` (offline).
The agent's variables are wandb's own names (wandb/wandb_agent.py sets them for each run)."""

from __future__ import annotations

import pytest
import wandb.env

from sfpo_lab.run.loggers import build_loggers, wandb_mode

AGENT = {
    wandb.env.SWEEP_ID: "abc12345",
    wandb.env.RUN_ID: "run98765",
    wandb.env.SWEEP_PARAM_PATH: "wandb/sweep-abc12345/config-run98765.yaml",
}


@pytest.mark.parametrize(
    ("overrides", "environ", "mode"),
    [
        ([], {}, "offline"),  # the default
        ([], AGENT, "online"),  # the agent's runs reach the sweep server
        (["seed=1", "wandb.mode=offline"], AGENT, "offline"),  # the user's (sweep parameter)
        (["logger.wandb.mode=disabled"], AGENT, "disabled"),
        ([], {**AGENT, "WANDB_MODE": "offline"}, "offline"),  # the user's environment
        ([], {"WANDB_MODE": "online"}, "online"),  # no longer beaten by the default
        ([], {wandb.env.RUN_ID: "myid"}, "offline"),  # a run id alone is not an agent
        (["wandb.mode=online"], {"WANDB_MODE": "disabled"}, "online"),
    ],
)
def test_mode_resolution(overrides: list[str], environ: dict[str, str], mode: str) -> None:
    assert wandb_mode("offline", overrides, environ)[0] == mode


def test_an_agents_run_is_built_online(tmp_path, monkeypatch, capsys) -> None:
    """The logger W&B is handed: wandb.mode's offline default no longer overrules the agent."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in AGENT.items():
        monkeypatch.setenv(key, value)
    cfg = {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": str(tmp_path),
           "project": "sfpo_lab_test", "mode": "offline", "name": "train"}  # fmt: skip
    (wb,) = build_loggers({"wandb": cfg}, str(tmp_path))
    assert wb._wandb_init["mode"] == "online"
    assert "W&B mode: online (started by a W&B sweep agent" in capsys.readouterr().out
