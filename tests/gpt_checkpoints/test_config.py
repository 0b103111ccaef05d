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


def test_diffusion_group_uses_dits_keys_and_reads_the_former_steps_key():
    """G.pt's ``diffusion=ddpm`` has the keys of DiT's; a checkpoint saved with ``steps`` loads."""
    from gpt_checkpoints.model.module import diffusion_config

    cfg = _compose("train", ["diffusion.diffusion_steps=40"])
    with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
        dit = compose(config_name="train", overrides=["diffusion=ddpm"])
    shared = {"objective", "noise_schedule", "diffusion_steps", "sigma_small", "sampler"}
    assert shared <= set(cfg.diffusion) & set(dit.diffusion)
    assert diffusion_config(dict(cfg.diffusion))["diffusion_steps"] == 40
    assert diffusion_config({"steps": 7})["diffusion_steps"] == 7  # written before the rename
    with pytest.raises(ValueError, match="diffusion.objective='flow' is not available for G.pt"):
        diffusion_config({"objective": "flow"})


def test_the_former_diffusion_steps_key_still_works_with_a_warning(capsys, monkeypatch):
    from gpt_checkpoints import train

    monkeypatch.setattr("sys.argv", ["train", "diffusion.steps=30", "--cfg", "job"])
    train.main()
    out, err = capsys.readouterr()
    assert (
        "warning: diffusion.steps= is deprecated" in err and "diffusion.diffusion_steps=30" in err
    )
    assert "diffusion_steps: 30" in out


@pytest.mark.parametrize(
    "task", ["mlp_digits", "cnn_digits", "mlp_mnist", "cnn_cifar10", "cartpole"]
)
def test_a_tasks_recipe_is_written_once_in_its_yaml(task):
    """``collect task=<name>`` and ``build_task(<name>)`` read the same recipe: the YAML's."""
    from omegaconf import OmegaConf

    from gpt_checkpoints.tasks import task_recipe

    cfg = _compose("collect", [f"task={task}"])
    assert OmegaConf.to_container(cfg.task.recipe) == task_recipe(task)


def test_released_tasks_use_the_official_sgd_and_digits_the_thesis():
    """official data_gen/train_mnist.py: mb_size 128, Nesterov, cosine set per epoch, 25 epochs."""
    from gpt_checkpoints.tasks import build_task, task_recipe

    mnist = task_recipe("mlp_mnist")
    assert (mnist["batch_size"], mnist["nesterov"], mnist["schedule"]) == (
        128,
        True,
        "cosine_epoch",
    )
    assert (mnist["epochs"], mnist["lr"], mnist["weight_decay"]) == (25, 0.1, 5e-4)
    assert task_recipe("cnn_cifar10")["augment"] == "flip_crop"
    digits = build_task("mlp_digits", epochs=2).config()
    assert (digits["epochs"], digits["batch_size"], digits["nesterov"]) == (2, 64, False)
    assert digits["schedule"] == "cosine_step" and digits["lr"] == 0.1
    with pytest.raises(ValueError, match="unknown task 'mlp_huge'; choose one of mlp_digits"):
        task_recipe("mlp_huge")
    from gpt_checkpoints import tasks

    with pytest.warns(DeprecationWarning, match="OFFICIAL_RECIPE moved to conf/task/mlp_mnist"):
        former = tasks.OFFICIAL_RECIPE  # the last release's name, one release more
    assert former == {"batch_size": 128, "nesterov": True, "schedule": "cosine_epoch"}
