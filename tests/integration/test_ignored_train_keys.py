"""Keys a training command would ignore are refused (issue 28): one ``error:`` line naming the
key, exit code 2, before any data is read or any training starts.

Covers ``diffusion_transformer.train``, ``gpt_checkpoints.train`` and ``collect``,
``gangealing.train`` and ``train_gan``; a value is refused only where it differs from the default
of the same group choices (``common.cli.default_config``), so defaults, values equal to them and
experiment presets pass. Paths in the cases need not exist: the refusal comes first.
"""

from __future__ import annotations

import pytest

DIT, GPT, COLLECT = (
    "diffusion_transformer.train",
    "gpt_checkpoints.train",
    "gpt_checkpoints.collect",
)
CONGEAL, GAN = "gangealing.train", "gangealing.train_gan"
NO_EVAL = ["data=folder", "data.root=missing"]  # eval.reference is null for data=folder

REFUSED = [
    (DIT, [*NO_EVAL, "eval.num_samples=10"], "eval.num_samples=10"),
    (DIT, ["callbacks=none", "eval.batch_size=8"], "eval.batch_size=8"),
    (DIT, ["callbacks=none", "sample_every=10"], "sample_every=10"),
    (DIT, ["metrics.inception_weights=w.pth"], "metrics.inception_weights=w.pth"),
    (DIT, ["data.vae={path:v,scale:0.18215}"], "data.vae="),
    (DIT, ["tf32=false"], "tf32=false"),
    (DIT, ["diffusion.sigma_small=true"], "diffusion.sigma_small=true"),
    (DIT, ["diffusion.learn_sigma=false", "diffusion.rescale_learned_sigmas=true"], "rescale"),
    (DIT, ["diffusion.use_kl=true", "diffusion.rescale_learned_sigmas=true"], "rescale"),
    (DIT, ["fsdp_wrap_classes=[x.Block]"], "fsdp_wrap_classes="),
    (DIT, ["diffusion=sit", "diffusion.sampler=euler", "diffusion.last_step=euler"], "last_step"),
    (DIT, ["repa.weights=dinov2.pth"], "repa.weights=dinov2.pth"),
    (DIT, ["repa.coeff=0.5"], "repa.coeff=0.5"),
    (DIT, ["resume=run", "optim.lr=0.01"], "optim.lr=0.01"),
    (DIT, ["resume=run", "run_dir=elsewhere"], "run_dir=elsewhere"),
    (GPT, ["task.recipe.lr=0.05"], "task.recipe.lr=0.05"),
    (GPT, ["model=mnist_loss", "normalization=global"], "normalization=global"),
    (GPT, ["resume=run", "optim.weight_decay=0"], "optim.weight_decay=0"),
    (COLLECT, ["data.root=d"], "data.root=d"),
    (COLLECT, ["task=cartpole", "data.root=d"], "data.root=d"),
    (CONGEAL, ["generator=g.pt", "loss.name=pyramid_l1", "loss.backbone_path=v"], "backbone_path"),
    (CONGEAL, ["generator=g.pt", "loss.checkpoint_path=s.pt"], "loss.checkpoint_path=s.pt"),
    (CONGEAL, ["generator=g.pt", "resume=run", "optim.mode_lr=0.1"], "optim.mode_lr=0.1"),
    (GAN, ["regularization.d_reg_every=0", "regularization.r1_gamma=5"], "r1_gamma=5"),
    (GAN, ["regularization.g_reg_every=0", "regularization.path_weight=1"], "path_weight=1"),
    (GAN, ["ddp_find_unused_parameters=false"], "ddp_find_unused_parameters=false"),
]


@pytest.mark.parametrize(("module", "args", "key"), REFUSED)
def test_an_ignored_key_is_refused(cli_main, module, args, key):
    code, err = cli_main(module, *args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert key in errors[0] and " is ignored because " in errors[0], errors[0]
    assert "Traceback" not in err


ACCEPTED = [  # nearby combinations that read the key: they get past the refusal to the next error
    (DIT, [*NO_EVAL, "eval.reference=ref.npz", "eval.num_samples=10"], "missing"),
    (GPT, ["model=mnist_loss", "normalization=per_layer", "dataset=missing"], "missing"),  # default
    (COLLECT, ["task=mlp_mnist", "data.root=missing", "runs=1", "out=o"], "MNIST not found"),
    (CONGEAL, ["generator=g.pt", "loss.backbone_path=v.pth"], "g.pt"),
    (CONGEAL, ["experiment=synthetic", "generator=g.pt"], "g.pt"),  # a preset is never refused
    (GAN, ["regularization.d_reg_every=0", "data=folder", "data.root=missing"], "missing"),
]


@pytest.mark.parametrize(("module", "args", "said"), ACCEPTED)
def test_a_key_that_is_read_is_accepted(cli_main, module, args, said):
    code, err = cli_main(module, *args)
    assert code == 2 and " is ignored because " not in err and said in err, err
