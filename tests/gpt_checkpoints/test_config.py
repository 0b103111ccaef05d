"""Hydra configs of G.pt compose, build the model one way, and the paper-sized model matches
Sec. 3.3."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from gpt_checkpoints.model.gpt import Gpt
from gpt_checkpoints.model.official import OfficialGpt
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.tasks import task_network, task_permutation_groups
from gpt_checkpoints.tasks.networks import CNN, MLP

MODELS = ["small", "paper", "tiny", "neuron", "mnist_loss", "cifar10_error", "cartpole"]


def _compose(name: str, overrides: list[str]):
    with initialize_config_module("gpt_checkpoints.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _shapes_and_groups(task: str):
    layout = ParamLayout.from_module(task_network(task))
    return layout, layout.entries, [list(g) for g in task_permutation_groups(task)]


def test_default_train_config_is_the_cpu_digits_recipe():
    cfg = _compose("train", [])
    assert (cfg.task.name, cfg.metric.name, cfg.metric.best) == ("mlp_digits", "test_loss", "min")
    assert cfg.model == {
        "_target_": "gpt_checkpoints.model.gpt.Gpt",
        "hidden_size": 128,
        "depth": 4,
        "num_heads": 4,
        "max_token_size": 128,  # M below (here equal to) the hidden size, Sec. 3.2.2
    }
    _, shapes, groups = _shapes_and_groups("mlp_digits")
    net = instantiate(cfg.model, shapes, groups)
    assert isinstance(net, Gpt) and net.hidden_size == 128 and len(net.blocks) == 4
    bigger = _compose("train", ["model.hidden_size=256"]).model
    assert instantiate(bigger, shapes, groups).hidden_size == 256
    assert cfg.task.recipe.lr == 0.1 and cfg.task.recipe.weight_decay == 5e-4


@pytest.mark.parametrize("model", MODELS)
def test_the_model_group_holds_the_constructors_arguments(model):
    """Every key of a ``model`` option is an argument of its ``_target_``, under its name."""
    cfg = OmegaConf.to_container(_compose("train", [f"model={model}"]).model)
    target = get_object(cfg.pop("_target_"))
    parameters = inspect.signature(target).parameters
    if target == OfficialGpt.from_preset:  # the preset, and overrides of OfficialGpt's arguments
        parameters = {**parameters, **inspect.signature(OfficialGpt).parameters}
    assert set(cfg) <= set(parameters), set(cfg) - set(parameters)


def test_neuron_is_small_with_neuron_tokens():
    small, neuron = _compose("train", ["model=small"]).model, _compose("train", ["model=neuron"])
    assert neuron.model == {**small, "tokenization": "neuron"}
    _, shapes, groups = _shapes_and_groups("mlp_digits")
    assert instantiate(neuron.model, shapes, groups).tokenization == "neuron"


def test_paper_model_on_the_mnist_mlp():
    cfg = _compose("train", ["model=paper", "task=mlp_mnist", "metric=test_error"])
    layout, shapes, groups = _shapes_and_groups("mlp_mnist")
    assert layout.num_params == 784 * 10 + 10 + 10 * 10 + 10
    with torch.device("meta"):
        net = instantiate(cfg.model, shapes, groups)
    assert (net.hidden_size, len(net.blocks)) == (1536, 12)
    # 7840 weights in tokens of M = 1024: seven full tokens and one of 672 (Sec. 3.2.2)
    assert net.tokenizer.token_sizes[:8] == [1024] * 7 + [672]
    params = sum(p.numel() for p in net.blocks.parameters())
    assert 330e6 < params < 345e6  # 12 GPT-2 blocks of width 1536


def test_a_released_model_option_builds_its_preset_with_overrides():
    cfg = _compose("train", ["model=mnist_loss", "+model.hidden_size=32", "+model.depth=1"])
    _, shapes, groups = _shapes_and_groups("mlp_digits")
    net = instantiate(cfg.model, shapes, groups)
    assert isinstance(net, OfficialGpt) and net.metric_encoding == "raw"
    assert (net.config["hidden_size"], net.config["depth"], net.config["num_heads"]) == (32, 1, 16)
    assert net.config["chunk_size"] == 1000  # the rest is the preset's


def test_a_null_model_size_is_one_error_line(cli_main, tmp_path):
    """``CHECKS`` let the sizes be absent (``|absent``: a released preset's model node has none);
    one set to null is refused before the dataset is read."""
    code, err = cli_main("gpt_checkpoints.train", "model.depth=null", "logger=none")
    assert code == 2, err
    assert err.strip().splitlines() == [
        "error: model.depth is not set; pass model.depth=<a whole number >= 1>"
    ]
    missing = tmp_path / "none"
    code, err = cli_main("gpt_checkpoints.train", "model=mnist_loss", f"dataset={missing}")
    assert code == 2 and "model." not in err and "gpt_checkpoints.collect" in err, err


def test_the_module_node_needs_only_what_the_dataset_knows():
    """``instantiate(cfg.module, ...)`` with the five run-time arguments of ``GptModule``."""
    from gpt_checkpoints.model.module import GptModule

    cfg = _compose("train", ["model=tiny", "ema_decay=0.5"])
    layout, _, groups = _shapes_and_groups("mlp_digits")
    module = instantiate(
        cfg.module,
        layout=layout.to_list(),
        permutation_groups=groups,
        task={"name": "mlp_digits", "data_root": None, "recipe": {}},
        metric_range=[0.1, 2.3],
        layer_scales=[1.0] * len(layout.entries),
    )
    assert isinstance(module, GptModule) and module.ema.decay == 0.5
    assert module.hparams["model"]["_target_"] == "gpt_checkpoints.model.gpt.Gpt"
    assert module.metric_normalizer.encoding == "range"
    assert module.optim_cfg["lr"] == cfg.optim.lr
    assert module.diffusion_cfg["diffusion_steps"] == 1000


def test_collect_configs_for_every_task():
    for task, recipe_key in [
        ("mlp_digits", "epochs"),
        ("cnn_cifar10", "epochs"),
        ("cartpole", "iterations"),
    ]:
        cfg = _compose("collect", [f"task={task}"])
        assert cfg.checkpoints_per_run == 200 and recipe_key in cfg.task.recipe
        assert cfg.data.root is None and cfg.device == "auto"
    assert CNN(3).conv1.in_channels == 3 and MLP(64).fc1.in_features == 64


def test_diffusion_group_uses_dits_keys():
    """G.pt's ``diffusion=ddpm`` has the keys of DiT's; only Gaussian diffusion is accepted."""
    from gpt_checkpoints.model.module import GptModule

    cfg = _compose("train", ["diffusion.diffusion_steps=40"])
    with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
        dit = compose(config_name="train", overrides=["diffusion=ddpm"])
    shared = {"objective", "noise_schedule", "diffusion_steps", "sigma_small", "sampler"}
    assert shared <= set(cfg.diffusion) & set(dit.diffusion)
    layout, _, groups = _shapes_and_groups("mlp_digits")
    args = {
        "model": OmegaConf.to_container(_compose("train", ["model=tiny"]).model),
        "layout": layout.to_list(),
        "permutation_groups": groups,
        "task": {"name": "mlp_digits"},
        "metric": "test_loss",
        "metric_range": [0.0, 1.0],
        "layer_scales": [1.0] * len(layout.entries),
        "optim": None,
        "ema_decay": cfg.ema_decay,
        "augment": cfg.augment,
        "seed": cfg.seed,
    }
    diffusion = OmegaConf.to_container(cfg.diffusion)
    assert GptModule(**args, diffusion=diffusion).process.num_timesteps == 40
    with pytest.raises(ValueError, match="diffusion.objective='flow' is not available for G.pt"):
        GptModule(**args, diffusion={**diffusion, "objective": "flow"})


@pytest.mark.parametrize(
    "task", ["mlp_digits", "cnn_digits", "mlp_mnist", "cnn_cifar10", "cartpole"]
)
def test_a_tasks_recipe_is_written_once_in_its_yaml(task):
    """``collect task=<name>`` and ``build_task(<name>)`` read the same recipe: the YAML's."""
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
    with pytest.raises(ValueError, match=r"pass its root folder \(data.root=/path/to/root"):
        build_task("mlp_mnist")
