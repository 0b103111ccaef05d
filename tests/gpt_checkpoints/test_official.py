"""The released G.pt network: strict loading and identical outputs against the official code.

Fixtures (``tests/gpt_checkpoints/fixtures/official_gpt_*``) were made by running the official
``Gpt/models/transformer.py`` (wpeebles/G.pt, commit fd07225) outside this repository, its one
CUDA-only call (``FrequencyEmbedder.forward``'s ``.to('cuda', torch.float)``) replaced by
``.to(torch.float)``, on two narrow models with every parameter randomised (N(0, 0.2^2), the
zero-initialised decoders and positional embeddings included):

- ``chunk``: parameter tensors of sizes [72, 6, 18, 3] (a 12-6-3 MLP), ``chunk_within_layer``
  with chunk 16 (so the 17-wide scalar tokens are cut too, as the official code does), width 32,
  2 blocks, 4 heads, 8 frequencies up to 2^6, absolute loss conditioning;
- ``layers``: the official Cartpole actor's layout [1, 32, 8, 64, 8, 8, 1], ``layer_by_layer``,
  width 24, 1 block, 3 heads, encoder and decoder depth 2, no absolute conditioning.

Each ``*_io.safetensors`` holds inputs (x, x_prev, t, loss_target, loss_prev) and the official
``Gpt.forward`` output; each ``*.json`` the arguments and the official token splits.
``official_gpt_released.pt`` is the ``chunk`` model in the released file layout: ``{'G': the
model, 'G_ema': the model x 0.5, 'optim': AdamW state after one step}`` (torch.save).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt_checkpoints.model.official import (
    PRESETS,
    OfficialGpt,
    build_splits,
    infer_config,
    preset_architecture,
    split_for,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _official(name: str) -> tuple[OfficialGpt, dict, dict]:
    meta = json.loads((FIXTURES / f"official_gpt_{name}.json").read_text())
    k = meta["kwargs"]
    model = OfficialGpt(
        meta["sizes"],
        hidden_size=k["n_embd"],
        depth=k["n_layer"],
        num_heads=k["n_head"],
        chunk_size=k["chunk_size"],
        split_policy=k["split_policy"],
        num_frequencies=k["num_frequencies"],
        max_freq_log2=k["max_freq_log2"],
        absolute_loss_conditioning=k["absolute_loss_conditioning"],
        encoder_depth=k["encoder_depth"],
        decoder_depth=k["decoder_depth"],
    ).eval()
    return model, meta, load_file(FIXTURES / f"official_gpt_{name}_io.safetensors")


@pytest.mark.parametrize("name", ["chunk", "layers"])
def test_official_state_dict_loads_strictly_and_gives_the_official_outputs(name):
    model, meta, io = _official(name)
    model.load_state_dict(load_file(FIXTURES / f"official_gpt_{name}.safetensors"), strict=True)
    assert model.decoder.input_splits == meta["input_splits"]  # identical tokens
    assert model.decoder.output_splits == meta["output_splits"]
    with torch.no_grad():
        out = model(io["x"], io["t"], io["x_prev"], io["loss_prev"], io["loss_target"])
    assert (out - io["out"]).abs().max() <= 1e-5


def test_a_fresh_official_model_returns_its_input():
    model = OfficialGpt([72, 6, 18, 3], hidden_size=16, depth=1, num_heads=2, chunk_size=16)
    theta = torch.randn(2, 99)
    out = model(torch.randn(2, 99), torch.tensor([3, 900]), theta, torch.ones(2), torch.zeros(2))
    torch.testing.assert_close(out, theta, rtol=0, atol=0)


def test_mnist_preset_tokens_are_the_thesis_26():
    """Sec. 3.2.2 / the issue's table: theta*_j x11, theta x11, j, l* - l, l*, l."""
    arch = preset_architecture("mnist_loss")
    sizes = [7840, 10, 100, 10]  # fc1.weight, fc1.bias, fc2.weight, fc2.bias of 784-10-10
    splits = build_splits(sizes, arch["split_policy"], arch["chunk_size"])
    assert splits == [1000] * 7 + [840, 10, 100, 10]
    assert (arch["hidden_size"], arch["depth"], arch["num_heads"]) == (1536, 12, 16)
    assert (
        PRESETS["cifar10_loss"]["openai_coeff"] == 1.646
        and PRESETS["mnist_loss"]["openai_coeff"] == 4.185
    )
    with torch.device("meta"):
        model = OfficialGpt(sizes, **arch)
    assert model.num_tokens == 26


def test_configuration_is_read_off_a_state_dict():
    state = load_file(FIXTURES / "official_gpt_chunk.safetensors")
    found = infer_config(state)
    assert (found["hidden_size"], found["depth"], found["num_frequencies"]) == (32, 2, 8)
    assert found["max_freq_log2"] == 6 and found["absolute_loss_conditioning"] is True
    assert split_for([72, 6, 18, 3], found["output_splits"]) == {
        "split_policy": "chunk_within_layer",
        "chunk_size": 16,
    }
    layers = infer_config(load_file(FIXTURES / "official_gpt_layers.safetensors"))
    assert layers["absolute_loss_conditioning"] is False
    assert (layers["encoder_depth"], layers["decoder_depth"]) == (2, 2)
    with pytest.raises(ValueError, match="do not fit a network with parameter tensors of sizes"):
        split_for([7840, 10, 100, 10], found["output_splits"])
    with pytest.raises(ValueError, match="not an official G.pt state dict"):
        infer_config({"x_embedder.proj.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown G.pt preset 'mnist'"):
        preset_architecture("mnist")


@pytest.fixture
def tiny_preset(monkeypatch):
    """A preset and task for the ``chunk`` fixture's 12-6-3 MLP, so that the released-file path
    runs end to end on it."""
    from gpt_checkpoints.model import module, official
    from gpt_checkpoints.tasks.networks import MLP, mlp_groups

    spec = {
        **PRESETS["mnist_loss"],
        "task": "mlp_tiny",
        "hidden_size": 32, "depth": 2, "num_heads": 4, "chunk_size": 16,
    }  # fmt: skip
    monkeypatch.setitem(official.PRESETS, "tiny_loss", spec)
    monkeypatch.setitem(official.SHARED, "num_frequencies", 8)
    monkeypatch.setitem(official.SHARED, "max_freq_log2", 6)
    network, groups = module.task_network, module.task_permutation_groups
    monkeypatch.setattr(
        module, "task_network", lambda n: MLP(12, 6, 3) if n == "mlp_tiny" else network(n)
    )
    monkeypatch.setattr(
        module,
        "task_permutation_groups",
        lambda n: mlp_groups(6) if n == "mlp_tiny" else groups(n),
    )
    return "tiny_loss"


def test_a_released_file_loads_with_weights_only_and_samples(tiny_preset, tmp_path):
    from gpt_checkpoints.model.module import load_gpt

    released = tmp_path / f"{tiny_preset}.pt"
    released.write_bytes((FIXTURES / "official_gpt_released.pt").read_bytes())
    module = load_gpt(released)  # the preset from the file's name
    blob = torch.load(released, weights_only=True)
    for key, value in blob["G"].items():
        torch.testing.assert_close(module.model.state_dict()[key], value, rtol=0, atol=0)
        torch.testing.assert_close(module.ema.module.state_dict()[key], blob["G_ema"][key])
    io = load_file(FIXTURES / "official_gpt_chunk_io.safetensors")
    with torch.no_grad():
        out = module.model(io["x"], io["t"], io["x_prev"], io["loss_prev"], io["loss_target"])
    assert (out - io["out"]).abs().max() <= 1e-5
    # parameters in the official normalisation (x openai_coeff), metrics raw
    assert module.normalizer.layer_scales == [4.185] * 4
    assert torch.equal(module.metric_normalizer.normalize(torch.tensor([2.3])), torch.tensor([2.3]))
    theta = torch.randn(2, 99) * 0.1
    sample = module.generate(theta, 2.3, 0.1, sampler="ddim", steps=3)
    assert sample.shape == (2, 99) and torch.isfinite(sample).all()
    assert module.protocol["best_prompt"] == 0.0 and module.protocol["prompt_start_coeff"] == 0.9


def test_released_files_name_their_preset_and_must_fit_it(tiny_preset, tmp_path):
    from gpt_checkpoints.model.module import load_gpt

    anonymous = tmp_path / "my_model.pt"
    anonymous.write_bytes((FIXTURES / "official_gpt_released.pt").read_bytes())
    with pytest.raises(ValueError, match=r"holds no configuration; pass the preset"):
        load_gpt(anonymous)
    assert load_gpt(anonymous, preset=tiny_preset).model.num_tokens == 26
    with pytest.raises(ValueError, match="do not fit a network with parameter tensors of sizes"):
        load_gpt(anonymous, preset="mnist_loss")  # the file is not the MNIST model


def test_alignment_prompts_official_range_and_data_range(tiny_preset, tmp_path):
    """Official Gpt/vis.py one_step_prompting: linspace(best_prompt, prompt_start_coeff x start)
    per network (reversed for returns); this project's: one grid over the training range."""
    from gpt_checkpoints.analysis.evaluation import alignment_prompts
    from gpt_checkpoints.model.module import load_gpt

    released = tmp_path / f"{tiny_preset}.pt"
    released.write_bytes((FIXTURES / "official_gpt_released.pt").read_bytes())
    module = load_gpt(released)
    start = torch.tensor([2.0, 1.0])
    prompts = alignment_prompts(module, start, 5)  # auto: official for a released model
    torch.testing.assert_close(prompts[0], torch.linspace(0.0, 1.8, 5))
    torch.testing.assert_close(prompts[1], torch.linspace(0.0, 0.9, 5))
    module.protocol["minimize"] = False
    torch.testing.assert_close(alignment_prompts(module, start, 5)[0], torch.linspace(1.8, 0.0, 5))
    module.metric_normalizer.low, module.metric_normalizer.high = 0.5, 1.5
    data = alignment_prompts(module, start, 3, "data")
    torch.testing.assert_close(data, torch.tensor([[0.5, 1.0, 1.5]] * 2))
    with pytest.raises(ValueError, match="prompt_range='both'"):
        alignment_prompts(module, start, 3, "both")
