"""Every command and Python snippet of the READMEs runs as written.

Each ``python -m <package>.<command> ...`` line of a fenced bash block of ``README.md`` and
``packages/*/README.md`` (and each such inline code span of the package READMEs) runs through the
command's real ``main`` with its own arguments and ``--cfg job``: every key and group option it
names exists. Placeholders (``<run>``, ``/datasets/...``) are fine there, since nothing is read.
Every console script named exists, and every fenced Python block compiles and its imports resolve.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", *sorted((ROOT / "packages").glob("*/README.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(python -m [^`]+)`")
# README lines that cannot run under `--cfg job` even with dummy values, as "file:text" (kept
# explicit so the list cannot grow silently; test_skipped_lines_exist keeps it honest).
SKIPPED: dict[str, str] = {}


def _placeholder(match: re.Match) -> str:
    return re.sub(r"\W+", "_", match.group(1)).strip("_") or "x"


def _arguments(text: str) -> list[str]:
    """The argv of a README command line: placeholders get a dummy value, `...` elisions and
    `# comments` go, `[key=value]` optionals and `a|b` alternatives take their first form, and a
    `-m` sweep becomes its first job."""
    text = re.sub(r"<([^>]*)>", _placeholder, os.path.expandvars(text))
    words = shlex.split(text, comments=True)
    assert words[:2] == ["python", "-m"], text
    module, args = words[2], [w for w in words[3:] if w != "..."]
    sweep = "-m" in args
    out = []
    for arg in args:
        if arg == "-m":
            continue
        if arg.startswith("[") and arg.endswith("]") and "=" in arg:
            arg = arg[1:-1]  # an optional argument of a usage line
        key, eq, value = arg.partition("=")
        if eq and not value.startswith("["):
            if "|" in value:
                value = value.split("|")[0]
            if sweep and "," in value:
                value = value.split(",")[0]
            arg = f"{key}={value}"
        out.append(arg)
    return [module, *out]


def _readme_commands() -> list[tuple[str, str]]:
    """(id, line) of every `python -m` line of the READMEs, continuations joined."""
    found = []
    for readme in READMES:
        name = readme.relative_to(ROOT).as_posix()
        text = readme.read_text()
        for block in FENCE.finditer(text):
            if block.group(1) not in ("bash", "sh", "shell", "console"):
                continue
            first = text[: block.start(2)].count("\n") + 1
            joined, start = "", None
            for number, line in enumerate(block.group(2).splitlines(), first):
                start = number if not joined else start
                joined += line.rstrip()
                if joined.endswith("\\"):
                    joined = joined[:-1] + " "
                    continue
                if joined.lstrip().startswith("python -m "):
                    found.append((f"{name}:{start}", joined.strip()))
                joined = ""
        if readme != ROOT / "README.md":  # the package READMEs list their commands inline
            for span in INLINE.finditer(text):
                number = text[: span.start()].count("\n") + 1
                found.append((f"{name}:{number}", span.group(1)))
    return found


COMMANDS = _readme_commands()


def test_the_readmes_have_commands():
    modules = {_arguments(line)[0] for _, line in COMMANDS}
    assert len(COMMANDS) > 60 and len(modules) >= 15, modules


def test_skipped_lines_exist():
    lines = {f"{id_.split(':')[0]}:{line}" for id_, line in COMMANDS}
    assert set(SKIPPED) <= lines, set(SKIPPED) - lines


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[i for i, _ in COMMANDS])
def test_readme_command_composes(where, line, monkeypatch, capsys, tmp_path):
    if f"{where.split(':')[0]}:{line}" in SKIPPED:
        pytest.skip(SKIPPED[f"{where.split(':')[0]}:{line}"])
    from hydra.core.global_hydra import GlobalHydra

    module, *args = _arguments(line)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    main = importlib.import_module(module).main
    monkeypatch.setattr(sys, "argv", [module, *args, "--cfg", "job"])
    GlobalHydra.instance().clear()
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    finally:
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr()
    assert code == 0, f"{where}: {line}\n  ran {args}\n{err[-2000:]}"
    assert out.strip(), f"{where}: {line} printed no config"
    assert not list(tmp_path.iterdir()), f"{where}: --cfg job wrote {list(tmp_path.iterdir())}"


def test_console_scripts_exist():
    scripts = set()
    for pyproject in (ROOT / "packages").glob("*/pyproject.toml"):
        section = pyproject.read_text().partition("[project.scripts]")[2].split("\n[")[0]
        scripts |= set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    assert len(scripts) >= 19, scripts
    named = set()
    for readme in READMES:
        spans = re.findall(r"`((?:dit|gpt|gangealing|common)-[a-z0-9-]+)`", readme.read_text())
        named |= set(spans)
    assert named, "no console script named in the READMEs"
    assert named <= scripts, named - scripts


SNIPPETS = [
    (f"{readme.relative_to(ROOT).as_posix()}:{readme.read_text()[: b.start(2)].count(chr(10)) + 1}",
     b.group(2))
    for readme in READMES
    for b in FENCE.finditer(readme.read_text())
    if b.group(1) == "python"
]  # fmt: skip


def test_the_readmes_have_snippets():
    assert SNIPPETS


@pytest.mark.parametrize(("where", "code"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_readme_snippet_compiles_and_imports(where, code):
    tree = ast.parse(compile(code, where, "exec", ast.PyCF_ONLY_AST))
    compile(tree, where, "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def _readme_line(start: str) -> str:
    """The one command line of the root README's tour that starts with ``start``."""
    lines = [ln for w, ln in COMMANDS if w.startswith("README.md:") and ln.startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


def _run_readme(line: str, cwd: Path, *extra: str, **values: str):
    """Run a README line as written in a real process, its ``<placeholders>`` filled from
    ``values`` and its ``# comment`` dropped (``extra`` overrides only keep it short)."""
    from tests.integration.conftest import run_cli

    for name, value in values.items():
        line = line.replace(f"<{name}>", value)
    assert "<" not in line, line
    module, *args = shlex.split(line, comments=True)[2:]
    return run_cli(module, *args, *extra, cwd=cwd)


@pytest.mark.slow
def test_readme_dit_digits_tour_runs(tmp_path):
    """The digits path of the DiT tour, the README's own lines in order, after a tiny training
    run in the README's run folder: sample, evaluate offline, export to diffusers, sample the
    export, the Python snippet that loads it, and the gflops table."""
    from tests.integration.conftest import TINY, run_cli

    run_cli(
        "diffusion_transformer.train", *TINY, "trainer.max_steps=2", "logger=none",
        "diffusion.sampling_steps=2", "hydra.run.dir=outputs/diffusion_transformer/train/run",
        cwd=tmp_path,
    )  # fmt: skip
    fast = ("sampling_steps=2", "num_samples=4", "batch_size=4", "progress=false")
    sample = "python -m diffusion_transformer.sample ckpt=outputs/diffusion_transformer/train/"
    out = _run_readme(_readme_line(sample), tmp_path, *fast, "hydra.run.dir=s", run="run").stdout
    assert (tmp_path / "s" / "samples.npz").is_file(), out
    evaluate = _readme_line("python -m diffusion_transformer.evaluate samples=<samples.npz>")
    _run_readme(evaluate, tmp_path, **{"samples.npz": "s/samples.npz"})
    export = _readme_line("python -m diffusion_transformer.export_diffusers ckpt=outputs/")
    _run_readme(export, tmp_path, run="run")
    assert (tmp_path / "exports" / "my_dit" / "transformer").is_dir()
    _run_readme(_readme_line("python -m diffusion_transformer.sample ckpt=exports/my_dit"),
                tmp_path, *fast)  # fmt: skip
    snippet = next(code for where, code in SNIPPETS if "load_diffusers_transformer" in code)
    loaded = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    gflops = [ln for _, ln in COMMANDS if ln.startswith("python -m diffusion_transformer.gflops")]
    for line in gflops:
        if "[" not in line:  # the package README's usage line has optional brackets
            assert "DiT-XL/2" in _run_readme(line, tmp_path).stdout


@pytest.mark.slow
def test_readme_gpt_digits_tour_runs(tmp_path):
    """The digits path of the G.pt tour, the README's own lines in order (tiny overrides
    appended): collect, train, prompt a fresh network, prompt a saved one, evaluate."""
    from tests.integration.test_gpt_cli import TINY_TRAIN

    collect = _readme_line("python -m gpt_checkpoints.collect task=mlp_digits")
    _run_readme(collect, tmp_path, "runs=8", "checkpoints_per_run=10", "batch_runs=4",
                "task.recipe.epochs=1", "hydra.run.dir=h")  # fmt: skip
    train = _readme_line("python -m gpt_checkpoints.train task=mlp_digits metric=test_loss")
    _run_readme(train, tmp_path, *TINY_TRAIN, "test_fraction=0.25", "trainer.max_steps=3",
                "hydra.run.dir=outputs/gpt_checkpoints/train/run")  # fmt: skip
    run = "outputs/gpt_checkpoints/train/run"
    prompt = _readme_line("python -m gpt_checkpoints.prompt ckpt=outputs/")
    _run_readme(prompt, tmp_path, "device=cpu", "out=fresh", run="run")
    (tmp_path / "net.safetensors").write_bytes(
        (tmp_path / "fresh" / "prompted_params.safetensors").read_bytes()
    )
    _run_readme(_readme_line("python -m gpt_checkpoints.prompt ckpt=<run> params="), tmp_path,
                "device=cpu", run=run)  # fmt: skip
    assert (tmp_path / "prompted" / "prompted_params.safetensors").is_file()
    _run_readme(_readme_line("python -m gpt_checkpoints.evaluate ckpt=<run> sampler="), tmp_path,
                "device=cpu", "logger=none", "num_nets=2", "curve_steps=4", run=run)  # fmt: skip


@pytest.mark.slow
def test_readme_gangealing_tour_runs(tmp_path):
    """The CPU path of the GANgealing tour, the README's own lines in order (tiny overrides
    appended): train_gan, train with the small trunk and the offline loss (the other lines need
    the LPIPS VGG-16 weights on disk), congeal and preprocess its samples."""
    from tests.gangealing.test_gan_training import CLI_OVERRIDES

    gan_run = "outputs/gangealing/train_gan/run"
    _run_readme(_readme_line("python -m gangealing.train_gan  "), tmp_path, *CLI_OVERRIDES,
                "trainer.max_steps=2", f"hydra.run.dir={gan_run}")  # fmt: skip
    train = _readme_line("python -m gangealing.train generator=... model=stn/small model.trans")
    train = train.replace("generator=...", f"generator={gan_run}/stylegan2.pt")
    _run_readme(train, tmp_path, "resolution=16", "trainer.max_steps=1", "hydra.run.dir=stn")
    for line in (
        "python -m gangealing.congeal ckpt=<run> data.root=<folder>",
        "python -m gangealing.preprocess ckpt=<run> data.root=<folder>",
    ):
        _run_readme(_readme_line(line), tmp_path, run="stn", folder="stn/generated")
