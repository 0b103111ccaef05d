"""Hydra composition: what `python -m diffusion_transformer.train <overrides>` will run."""

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

import diffusion_transformer
from common.training import SafeCheckpointIO
from tests.diffusion_transformer.test_commands import build_model

CONF = Path(diffusion_transformer.__file__).parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# The batch (per device) each recipe trains with: the thesis' 256 on ImageNet.
BATCH = {"digits": 64, "digits_modern": 64, "digits_sweep": 32, "lightningdit_xl1_256": 1024}


def test_default_is_the_digits_demo(compose_train):
    cfg = compose_train()
    assert cfg.data.name == "digits" and cfg.model.size == "tiny" and cfg.patch == 2
    assert cfg.trainer.accelerator == "cpu" and cfg.diffusion.objective == "ddpm"
    assert cfg.model.input_size == 8 and cfg.model.in_channels == 1
    assert "wandb" in cfg.logger and cfg.logger.wandb.offline is True


def test_model_xl_patch_2_composes_as_expected(compose_train):
    cfg = compose_train("model=xl", "patch=2")
    m = build_model(cfg)
    assert (m.depth, m.hidden_size, m.num_heads, m.patch_size) == (28, 1152, 16, 2)
    assert m.block == "adaln_zero" and m.learn_sigma and m.y_embedder.dropout_prob == 0.1
    assert cfg.run_name == "DiT-XL-2-digits" and cfg.module.model == cfg.model
    for size, (depth, width, heads) in {
        "s": (12, 384, 6),
        "b": (12, 768, 12),
        "l": (24, 1024, 16),
    }.items():
        m = build_model(compose_train(f"model={size}", "patch=4"))
        assert (m.depth, m.hidden_size, m.num_heads, m.patch_size) == (depth, width, heads, 4)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_train, experiment):
    overrides = [f"experiment={experiment}"]
    data = compose_train(*overrides).data
    # ImageNet experiments name the data and VAE folders ('???': "in data" says False)
    if "root" in data.keys():  # noqa: SIM118
        overrides += ["data.root=/data/latents", "data.vae.path=/models/vae"]
    cfg = compose_train(*overrides)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.data.datamodule.batch_size == cfg.batch_size == BATCH.get(experiment, 256)
    if experiment == "imagenet256":
        m = build_model(cfg)
        assert (m.depth, m.hidden_size, m.patch_size, m.input_size, m.num_classes) == (
            28,
            1152,
            2,
            32,
            1000,
        )
        assert cfg.optim.lr == 1e-4 and cfg.ema_decay == 0.9999 and cfg.data.flip
        assert cfg.batch_size == 256 and cfg.trainer.precision == "bf16-mixed"
    if experiment in ("sit_xl2_256", "repa_xl2_256", "lightningdit_xl1_256"):  # official recipes
        m = build_model(cfg)
        family = {"sit": ([], 8, 2), "repa": ([768], 4, 2), "lightningdit": ([], 32, 1)}
        dims, out, patch = family[experiment.split("_")[0]]
        assert (m.projector_dims, m.out_channels, m.patch_size, m.depth) == (dims, out, patch, 28)
        assert cfg.module.diffusion.preset == experiment.split("_")[0]
    if experiment == "digits_modern":  # the thesis demo's model, data, lr and evaluation
        digits = compose_train("experiment=digits")
        model, same = (OmegaConf.to_container(c.model, resolve=True) for c in (cfg, digits))
        assert model == same | {
            "learn_sigma": False, "use_rmsnorm": True, "use_swiglu": True, "use_rope": True,
            "projector_dims": [64], "encoder_depth": 1, "projector_hidden": 256,
        }  # fmt: skip
        assert (cfg.data, cfg.optim, cfg.eval.num_samples, cfg.eval.cfg_scale) == (
            digits.data, digits.optim, digits.eval.num_samples, digits.eval.cfg_scale
        )  # fmt: skip
        assert (cfg.diffusion.preset, cfg.diffusion.sampler, cfg.diffusion.sampling_steps) == (
            "rectified_flow", "euler", 25
        )  # fmt: skip
        assert cfg.repa.encoder == "digits_convnet" and list(cfg.eval.cfg_interval) == [0, 0.5]
    if experiment == "imagenet512":
        assert cfg.model.input_size == 64 and build_model(cfg).depth == 28


@pytest.mark.parametrize("option", DATA)
def test_every_datamodule_reads_the_one_batch_size(compose_train, option):
    written = OmegaConf.to_container(OmegaConf.load(CONF / "data" / f"{option}.yaml"))
    assert written["datamodule"]["batch_size"] == "${batch_size}"
    cfg = compose_train(f"data={option}", "batch_size=3")
    assert OmegaConf.select(cfg, "data.datamodule.batch_size") == 3


def test_command_line_overrides_win_over_the_experiment(compose_train):
    cfg = compose_train(
        "experiment=imagenet256", "model=b", "patch=4", "data.root=/x", "data.vae.path=/v"
    )
    assert build_model(cfg).hidden_size == 768 and cfg.model.patch_size == 4


@pytest.mark.parametrize(
    "group,option",
    [
        ("diffusion", "flow"),
        ("block", "in_context"),
        ("logger", "csv"),
        ("logger", "none"),
        ("trainer", "gpu"),
        ("data", "folder"),
    ],
)
def test_groups_compose_and_instantiate(compose_train, group, option):
    cfg = compose_train(f"{group}={option}", *(["data.root=/x"] if option == "folder" else []))
    if group == "diffusion":
        assert cfg.module.diffusion.objective == "transport"
        assert cfg.module.model.learn_sigma is False
    if group == "logger":
        loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values()]
        assert [type(x).__name__ for x in loggers] == ([] if option == "none" else ["CSVLogger"])
    if group == "trainer":
        assert (
            cfg.trainer.precision == "bf16-mixed" and cfg.trainer.use_distributed_sampler is False
        )


def test_trainer_and_wandb_logger_instantiate(compose_train):
    cfg = compose_train("trainer.max_steps=1", "run_id=abc123")
    logger = hydra.utils.instantiate(cfg.logger.wandb)
    assert logger._wandb_init["id"] == "abc123" and logger._offline
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, plugins=[SafeCheckpointIO()])
    assert trainer.max_steps == 1


def test_unknown_options_are_rejected_with_the_choices(compose_train):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Available options"):
        compose_train("model=huge")


def test_digits_sweep_expands_to_the_six_runs_of_the_cpu_scaling_study(compose_train):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=digits_sweep"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.model == "s,b" and str(params.patch) == "2,4,8"
    # what each sweep job composes: S and B at a quarter of the width, half the depth, 16x16
    shapes = {"s": (6, 96, 6), "b": (6, 192, 12)}
    for size, patch in (("s", 8), ("b", 2)):
        job = compose_train("experiment=digits_sweep", f"model={size}", f"patch={patch}")
        assert job.model.size == size.upper() and job.model.patch_size == patch
        net = build_model(job)
        assert (net.depth, net.hidden_size, net.num_heads) == shapes[size]
        assert net.input_size == 16 and job.batch_size == 32
        assert job.eval.reference == "digits" and list(job.metrics.names) == [
            "fd_digits",
            "acc_digits",
        ]
        assert dict(job.eval.final_samplers) == {"ddim": [10]}
        assert job.eval.sampler == "ddim" and job.eval.cfg_scale == 3.0
