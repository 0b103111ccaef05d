"""The shared OmegaConf resolvers (common.config)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from common.config import register_resolvers, scale_int


def test_scale_int_rounds_and_is_usable_from_a_config():
    register_resolvers()
    register_resolvers()  # idempotent
    net = {"hidden": "${scale_int:${hidden},0.25}", "depth": "${scale_int:${depth},0.5}"}
    cfg = OmegaConf.create({"hidden": 384, "depth": 12, "net": net})
    assert (cfg.net.hidden, cfg.net.depth) == (96, 6)
    assert scale_int(1152, 1 / 3) == 384


def test_scale_int_refuses_an_empty_layer():
    with pytest.raises(ValueError, match="must be >= 1"):
        scale_int(4, 0.1)
