"""Hydra configs of G.pt compose, and the paper-sized model matches Sec. 3.3."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from gpt_checkpoints.model.gpt import GPT_CONFIGS, Gpt
from gpt_checkpoints.model.module import sized_config
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.tasks.networks import CNN, MLP


def _compose(name: str, overrides: list[str]):
    with initialize_config_module("gpt_checkpoints.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_default_train_config_is_the_cpu_digits_recipe():
    cfg = _compose("train", [])
    assert (cfg.task.name, cfg.metric.name, cfg.metric.best) == ("mlp_digits", "test_loss", "min")
    model = sized_config(dict(cfg.model))
    assert cfg.model.size == "small" and cfg.model.hidden_size is None  # numbers: the table's
    assert model["hidden_size"] == GPT_CONFIGS["small"]["hidden_size"] == 128
    assert model["max_token_size"] <= model["hidden_size"]  # M below the hidden size
    bigger = sized_config(dict(_compose("train", ["model.hidden_size=256"]).model))
    assert (bigger["hidden_size"], bigger["depth"]) == (256, 4)  # a number overrides the size
    assert cfg.task.recipe.lr == 0.1 and cfg.task.recipe.weight_decay == 5e-4


@pytest.mark.parametrize("model", ["paper"])
def test_paper_model_on_the_mnist_mlp(model):
    cfg = _compose("train", [f"model={model}", "task=mlp_mnist", "metric=test_error"])
    kw = sized_config(dict(cfg.model))
    assert (kw["hidden_size"], kw["depth"], kw["num_heads"]) == (1536, 12, 12)
    layout = ParamLayout.from_module(MLP(784))
    assert layout.num_params == 784 * 10 + 10 + 10 * 10 + 10
    import torch

    with torch.device("meta"):
        net = Gpt(layout.sizes, **kw)
    # 7840 weights in tokens of M = 1024: seven full tokens and one of 672 (Sec. 3.2.2)
    assert net.tokenizer.token_sizes[:8] == [1024] * 7 + [672]
    params = sum(p.numel() for p in net.blocks.parameters())
    assert 330e6 < params < 345e6  # 12 GPT-2 blocks of width 1536


def test_collect_configs_for_every_task():
    for task, recipe_key in [
        ("mlp_digits", "epochs"),
        ("cnn_cifar10", "epochs"),
        ("cartpole", "iterations"),
    ]:
        cfg = _compose("collect", [f"task={task}"])
        assert cfg.checkpoints_per_run == 200 and recipe_key in cfg.task.recipe
    assert CNN(3).conv1.in_channels == 3


def test_an_unknown_size_names_the_sizes():
    with pytest.raises(
        ValueError, match="model.size='huge' is not a G.pt size; choose one of small"
    ):
        sized_config({"size": "huge"})
