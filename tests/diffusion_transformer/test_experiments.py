"""Experiment configs of the thesis studies (Sec. 2.4, 2.5, 2.5.1): their settings, their Gflops
against the thesis' numbers, and the runs that ``-m experiment=<study>`` expands to."""

from __future__ import annotations

import copy
import itertools

import pytest
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_transformer.models import DIT_CONFIGS
from tests.diffusion_transformer.test_commands import build_model

IMAGENET = ["data.root=/datasets/imagenet256_latents", "data.vae.path=/models/sd-vae-ft-ema"]
# Sec. 2.5, "DiT block design": the Gflops of the four DiT-XL/2 models of Fig. 2.5.
BLOCK_GFLOPS = {"in_context": 119.4, "cross_attention": 137.6, "adaln": 118.6, "adaln_zero": 118.6}
# Table 2.1 (I = 32, p = 4) and Sec. 2.5.1 (XL/2: 118.6 at 256x256, 524.6 at 512x512).
TABLE_2_1_GFLOPS = {"S": 1.4, "B": 5.6, "L": 19.7, "XL": 29.1}


@pytest.fixture
def compose_experiment(tmp_path):
    """Compose ``experiment=<name>`` like the CLI, with the Hydra node (sweeper, sweep dirs)."""

    def _compose(experiment: str, *overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
            return compose(
                "train",
                overrides=[f"run_dir={tmp_path / 'run'}", f"experiment={experiment}", *IMAGENET]
                + list(overrides),
                return_hydra_config=True,
            )

    yield _compose
    GlobalHydra.instance().clear()


def sweep_jobs(cfg: DictConfig, *command_line: str) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper makes of ``hydra.sweeper.params`` plus the
    command line's sweep values (``BasicSweeper.sweep``: the command line comes last and wins)."""
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *command_line])
    batches = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return [job for batch in batches for job in batch]


def job_config(cfg: DictConfig) -> dict:
    """The resolved config a run gets: everything but the ``hydra`` node."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def gflops(cfg: DictConfig) -> float:
    """Forward Gflops per image of the composed model, rounded like the thesis."""
    return round(build_model(cfg).gflops(), 1)


def assert_thesis_recipe(cfg: DictConfig, steps: int, latent_size: int = 32) -> None:
    """Sec. 2.4: AdamW 1e-4 without weight decay, batch 256, flips, EMA 0.9999, SD-VAE latents,
    ADM's diffusion (1000 linear steps, learned sigma), label dropout for guidance."""
    job_config(cfg)  # every interpolation resolves
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 0.0)
    assert cfg.batch_size == 256 and cfg.ema_decay == 0.9999
    assert cfg.data.flip and cfg.data.name.endswith("_latents") and cfg.data.num_classes == 1000
    assert cfg.data.vae.scale == 0.18215 and cfg.model.input_size == latent_size
    assert cfg.model.in_channels == 4 and cfg.model.class_dropout_prob == 0.1
    d = cfg.diffusion
    assert (d.objective, d.noise_schedule, d.diffusion_steps, d.learn_sigma) == (
        "ddpm",
        "linear",
        1000,
        True,
    )
    assert cfg.trainer.max_steps == steps and cfg.trainer.precision == "bf16-mixed"


def assert_model(cfg: DictConfig, size: str, patch: int, block: str = "adaln_zero") -> None:
    model = build_model(cfg)
    assert (model.depth, model.hidden_size, model.num_heads) == DIT_CONFIGS[size]
    assert cfg.model.size == size and model.patch_size == patch and model.block == block


def test_block_ablation_sweeps_the_four_blocks_of_fig_2_5(compose_experiment):
    cfg = compose_experiment("block_ablation")
    assert_model(cfg, "XL", 2)  # a single run (no -m) is the adaLN-Zero model
    assert_thesis_recipe(cfg, steps=400_000)
    jobs = sweep_jobs(cfg)
    assert jobs == [[f"block={block}"] for block in BLOCK_GFLOPS]
    assert cfg.checkpoint_every == 50_000  # FID over training is computed from these checkpoints
    run_names = set()
    for job in jobs:
        run = compose_experiment("block_ablation", *job)
        block = job[0].removeprefix("block=")
        assert_model(run, "XL", 2, block)
        assert_thesis_recipe(run, steps=400_000)
        assert gflops(run) == BLOCK_GFLOPS[block]
        run_names.add(run.run_name)
    assert len(run_names) == 4  # W&B names the runs apart
    assert "${block.name}" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]


def test_scaling_grid_sweeps_the_12_models_of_figs_2_2_to_2_8(compose_experiment):
    cfg = compose_experiment("scaling_grid")
    assert_model(cfg, "XL", 2)
    jobs = sweep_jobs(cfg)
    expected = [
        [f"model={m}", f"patch={p}"] for m, p in itertools.product(["s", "b", "l", "xl"], "842")
    ]
    assert jobs == expected and len(jobs) == 12
    flops = {}
    for job in jobs:
        run = compose_experiment("scaling_grid", *job)
        size, patch = run.model.size, run.model.patch_size
        assert_model(run, size, patch)
        assert_thesis_recipe(run, steps=400_000)
        flops[size, patch] = gflops(run)
    assert {s: flops[s, 4] for s in TABLE_2_1_GFLOPS} == TABLE_2_1_GFLOPS
    assert flops["XL", 2] == 118.6
    sizes = list(TABLE_2_1_GFLOPS)
    for size, patch in flops:  # more Gflops with a larger model or a smaller patch (Fig. 2.2)
        bigger = [flops[s, patch] for s in sizes[sizes.index(size) :]]
        assert bigger == sorted(bigger) and flops[size, 8] < flops[size, 4] < flops[size, 2]


def test_command_line_sweep_values_replace_the_studys(compose_experiment):
    cfg = compose_experiment("scaling_grid")
    jobs = sweep_jobs(cfg, "model=s,b")
    assert len(jobs) == 6 and {job[0] for job in jobs} == {"model=s", "model=b"}


def test_final_models_of_sec_2_5_1(compose_experiment):
    cfg = compose_experiment("xl2_256")
    assert_model(cfg, "XL", 2)
    assert_thesis_recipe(cfg, steps=7_000_000)
    assert gflops(cfg) == 118.6 and sweep_jobs(cfg) == [[]]

    cfg = compose_experiment("xl2_512")
    assert_model(cfg, "XL", 2)
    assert_thesis_recipe(cfg, steps=3_000_000, latent_size=64)
    assert gflops(cfg) == 524.6 and (64 // 2) ** 2 == 1024
    assert cfg.data.image_size == 512 and cfg.data.name == "imagenet512_latents"


def test_final_models_share_the_recipe_without_copying_it(compose_experiment):
    """xl2_512 is imagenet512 under the Sec. 2.5.1 name; xl2_256 only trains imagenet256 longer."""
    assert job_config(compose_experiment("xl2_512")) == job_config(
        compose_experiment("imagenet512")
    )
    longer = job_config(compose_experiment("xl2_256"))
    base = job_config(compose_experiment("imagenet256"))
    assert longer["trainer"].pop("max_steps") == 7_000_000
    assert base["trainer"].pop("max_steps") == 400_000
    assert longer == base
