"""The config groups work the same way in every package's training command, through the real
CLIs: ``experiment`` (``experiment=x``, ``~experiment``), ``strategy``, ``callbacks``,
``logger`` and ``trainer``."""

from __future__ import annotations

import importlib
import sys

import pytest
import yaml

from tests.integration.conftest import run_cli

TRAIN_COMMANDS = {
    "diffusion_transformer.train": [],
    "gpt_checkpoints.train": [],
    "gangealing.train": ["generator=g.pt"],
    "gangealing.train_gan": [],
}
# An experiment of each command and a value it sets.
EXPERIMENTS = {
    "diffusion_transformer.train": ("digits_sweep", lambda c: c["trainer"]["max_steps"] == 1200),
    "gpt_checkpoints.train": ("digits", lambda c: c["model"]["tokenization"] == "neuron"),
    "gangealing.train": ("synthetic", lambda c: c["trainer"]["max_steps"] == 4000),
    "gangealing.train_gan": ("gan_synthetic", lambda c: c["trainer"]["max_steps"] == 20000),
}


@pytest.fixture
def job_config(monkeypatch, capsys):
    """The composed job config printed by a command's real ``main`` (``--cfg job``), run
    in-process with ``sys.argv`` set as the shell would."""

    def _job(module: str, *args: str) -> dict:
        from hydra.core.global_hydra import GlobalHydra

        main = importlib.import_module(module).main
        monkeypatch.setattr(sys, "argv", [module, *TRAIN_COMMANDS[module], *args, "--cfg", "job"])
        GlobalHydra.instance().clear()
        capsys.readouterr()
        main()
        GlobalHydra.instance().clear()
        return yaml.safe_load(capsys.readouterr().out)

    return _job


@pytest.mark.parametrize("module", sorted(TRAIN_COMMANDS))
def test_every_training_command_has_the_same_groups(module, job_config):
    name, applied = EXPERIMENTS[module]
    groups = ["strategy=ddp", "callbacks=none", "logger=csv", "trainer=gpu", f"experiment={name}"]
    cfg = job_config(module, *groups)
    assert cfg["strategy"]["_target_"] == "lightning.pytorch.strategies.DDPStrategy"
    assert cfg["callbacks"] == {}
    assert list(cfg["logger"]) == ["csv"]
    assert cfg["trainer"]["accelerator"] == "gpu"
    assert cfg["fsdp_wrap_classes"]  # strategy=fsdp has its wrap units
    assert applied(cfg)


def test_tilde_experiment_drops_the_default_experiment(job_config):
    cfg = job_config("diffusion_transformer.train", "~experiment")
    assert cfg["optim"]["lr"] == 1e-4 and cfg["trainer"]["max_steps"] == 1000  # train.yaml's own
    assert job_config("diffusion_transformer.train")["optim"]["lr"] == 1e-3  # experiment=digits


def test_train_gan_runs_without_callbacks(tmp_path):
    from tests.gangealing.test_gan_training import CLI_OVERRIDES

    run_cli(
        "gangealing.train_gan",
        *CLI_OVERRIDES,
        "callbacks=none",
        "trainer.max_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert (tmp_path / "run" / "stylegan2.pt").is_file()
    assert not list((tmp_path / "run" / "checkpoints").glob("step*.ckpt"))


@pytest.mark.slow  # DDP itself: tests/integration/test_ddp.py; the GAN's config: above
def test_gan_training_runs_under_ddp(tmp_path):
    """strategy=ddp on two CPU processes (gloo): G and D steps alternate, so the GAN configs ask
    DDP to find unused parameters (ddp_find_unused_parameters: true)."""
    from tests.gangealing.test_gan_training import CLI_OVERRIDES

    out = run_cli(
        "gangealing.train_gan",
        *CLI_OVERRIDES,
        "strategy=ddp",
        "trainer.devices=2",
        "trainer.max_steps=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    ).stdout
    assert "(step 2)" in out and (tmp_path / "run" / "stylegan2.pt").is_file()
