"""Memorisation baselines and novelty (Zeng et al. 2025, arXiv 2506.07998, beyond the thesis).

Zeng et al. find that G.pt-style models mostly reproduce their training checkpoints and do not
beat simple baselines at producing networks that are both good and new. ``novelty_baselines``
puts G.pt next to those baselines on the same footing:

- ``gpt``: one G.pt step from the initial checkpoints of held-out runs, prompted with ``prompt``;
- ``nearest_prompted``: the training checkpoints whose recorded metric is nearest to the prompt
  (what a perfect memoriser of the prompted loss would return);
- ``noise_<s>``: those checkpoints plus Gaussian noise of std ``s`` in G.pt's normalised
  parameter space (Zeng et al.: std 0.05 and 0.1 on the released MNIST G.pt);
- ``interpolation``: the midpoint of two of those checkpoints from different runs, the second
  aligned to the first by weight matching (a weight ensemble, Zeng et al. Sec. 4);
- ``independent_runs``: the final checkpoints of held-out runs, trained by SGD from their own
  initialisation: the novelty of genuinely independent training, the reference.

Novelty is measured against the reference set R (the final checkpoint of every training run) in
two ways: ``similarity``, the largest intersection-over-union of a network's set of misclassified
test examples with that of a member of R (Zeng et al. Sec. 3, function space, blind to
permutations; supervised tasks only), and ``distance``, the Euclidean distance in G.pt's
normalised space to the nearest member of R after aligning hidden units by weight matching
(Ainsworth et al. 2023, Alg. 1) over the most similar candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from gpt_checkpoints.analysis.evaluation import gpt_step
from gpt_checkpoints.dataset.store import RunData
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.params.permutation import apply_permutations
from gpt_checkpoints.tasks.base import Task
from gpt_checkpoints.tasks.supervised import SupervisedTask

NOISE_LEVELS = (0.02, 0.05, 0.1)


# ----------------------------------------------------------------------------- alignment
def align(
    a: torch.Tensor, b: torch.Tensor, layout: ParamLayout, groups: Sequence, max_rounds: int = 10
) -> torch.Tensor:
    """``b [P]`` with its hidden units permuted to match ``a [P]``: weight matching, coordinate
    descent over the permutation groups, one linear assignment per group and round (Ainsworth et
    al. 2023, Alg. 1); exact in one round for a single group."""
    if not groups:
        return b
    perms = [torch.arange(size)[None] for size, _ in groups]
    pa = layout.unflatten(a[None])
    for _ in range(max_rounds):
        changed = False
        for g, (size, members) in enumerate(groups):
            others = [p if k != g else torch.arange(size)[None] for k, p in enumerate(perms)]
            pb = layout.unflatten(apply_permutations(b[None], layout, groups, others))
            cost = torch.zeros(size, size, dtype=torch.float64)
            for name, axis in members:
                ua = pa[name][0].movedim(axis, 0).reshape(size, -1).double()
                ub = pb[name][0].movedim(axis, 0).reshape(size, -1).double()
                cost += ua @ ub.T
            _, col = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(col)[None]
            changed |= not torch.equal(new, perms[g])
            perms[g] = new
        if not changed:
            break
    return apply_permutations(b[None], layout, groups, perms)[0]


# ----------------------------------------------------------------------------- novelty
def mispredictions(task: Task, theta: torch.Tensor, chunk: int = 1024) -> torch.Tensor | None:
    """``[N, T]`` bool: which test examples each network misclassifies (None: no predictions)."""
    if not isinstance(task, SupervisedTask):
        return None
    data = task.data
    with torch.no_grad():
        return torch.cat(
            [task.forward(c, data.x_test).argmax(-1) != data.y_test for c in theta.split(chunk)]
        )


def misprediction_iou(wrong: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[N, R]`` intersection over union of the misclassified sets ``wrong [N, T]`` and
    ``reference [R, T]`` (Zeng et al. Sec. 3); two empty sets count as identical."""
    w, r = wrong.float(), reference.float()
    inter = w @ r.T
    union = w.sum(1, keepdim=True) + r.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def aligned_distances(
    theta: torch.Tensor,
    reference: torch.Tensor,
    layout: ParamLayout,
    groups: Sequence,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """Distance of each ``theta [N, P]`` to its nearest ``reference`` row among ``candidates
    [N, K]`` after weight-matching alignment (both in the same, normalised, space)."""
    out = torch.empty(theta.shape[0])
    for i, row in enumerate(candidates.tolist()):
        out[i] = min(
            float((theta[i] - align(theta[i], reference[j], layout, groups)).norm()) for j in row
        )
    return out


def novelty(
    task: Task,
    theta: torch.Tensor,
    reference: torch.Tensor,
    normalize,
    ref_wrong: torch.Tensor | None,
    num_candidates: int = 8,
) -> dict[str, torch.Tensor]:
    """Per-network ``similarity`` (max misprediction IoU with R) and ``distance`` (aligned, in
    G.pt's normalised space, to the nearest of the ``num_candidates`` most similar members of R,
    by IoU and by plain distance)."""
    x, ref = normalize(theta), normalize(reference)
    k = min(num_candidates, ref.shape[0])
    candidates = torch.cdist(x, ref).topk(k, largest=False).indices
    out: dict[str, torch.Tensor] = {}
    if ref_wrong is not None:
        iou = misprediction_iou(mispredictions(task, theta), ref_wrong)
        out["similarity"] = iou.max(1).values
        candidates = torch.cat([candidates, iou.topk(k).indices], 1)
    out["distance"] = aligned_distances(x, ref, task.layout, task.permutation_groups, candidates)
    return out


# ----------------------------------------------------------------------------- baselines
def nearest_prompted(train_runs: RunData, metric: str, prompt: float, n: int) -> torch.Tensor:
    """Indices (run, checkpoint) ``[n, 2]`` of the ``n`` training checkpoints whose recorded
    ``metric`` is nearest to ``prompt``, at most one per run."""
    values = train_runs.metrics[metric]  # [R, C]
    gap = (values - prompt).abs()
    best_gap, best_ckpt = gap.min(1)
    runs = best_gap.argsort()[:n]
    return torch.stack([runs, best_ckpt[runs]], 1)


def novelty_baselines(
    module,
    task: Task,
    train_runs: RunData,
    test_runs: RunData,
    prompt: float,
    num_nets: int = 64,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Metric and novelty of G.pt's one-step networks, of the memorisation baselines and of
    independently trained networks (module docstring); per-network values for the figure."""
    if len(test_runs.seeds) == 0:
        raise ValueError("the novelty analysis needs held-out test runs (test_fraction > 0)")
    metric = module.hparams["metric"]
    n = min(num_nets, len(test_runs.seeds))
    held_out = test_runs.select(torch.arange(n))
    reference = train_runs.params[:, -1]  # R: each training run's final checkpoint
    ref_wrong = mispredictions(task, reference)
    normalize, denormalize = module.normalizer.normalize, module.normalizer.denormalize

    picked = nearest_prompted(train_runs, metric, prompt, max(n, 2))
    nearest = train_runs.params[picked[:, 0], picked[:, 1]]
    g = torch.Generator().manual_seed(seed)
    methods = {
        "gpt": gpt_step(
            module,
            task,
            held_out.params[:, 0],
            prompt,
            sampler,
            steps,
            seed=seed,
            current=held_out.metrics[metric][:, 0],
        ),
        "nearest_prompted": nearest[:n],
    }
    for s in noise_levels:
        z = torch.randn(nearest[:n].shape, generator=g)
        methods[f"noise_{s:g}"] = denormalize(normalize(nearest[:n]) + s * z)
    partner = nearest.roll(-1, 0)[:n]
    aligned = torch.stack(
        [
            denormalize(
                align(normalize(a), normalize(b), task.layout, task.permutation_groups)[None]
            )[0]
            for a, b in zip(nearest[:n], partner, strict=True)
        ]
    )
    methods["interpolation"] = 0.5 * (nearest[:n] + aligned)
    methods["independent_runs"] = held_out.params[:, -1]

    out: dict = {"metric": metric, "prompt": prompt, "num_nets": n, "methods": {}}
    for name, theta in methods.items():
        values = task.evaluate(theta)[metric]
        nov = novelty(task, theta, reference, normalize, ref_wrong)
        row = {metric: values.tolist(), **{k: v.tolist() for k, v in nov.items()}}
        row["mean"] = {k: float(torch.tensor(v).mean()) for k, v in row.items()}
        out["methods"][name] = row
    return out
