from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra


@pytest.fixture
def compose_train(tmp_path):
    """Compose the train config like the CLI does, with a concrete run directory."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
            return compose("train", overrides=[f"run_dir={tmp_path / 'run'}", *overrides])

    yield _compose
    GlobalHydra.instance().clear()
