"""G.pt: loss-conditional diffusion over neural-network checkpoints (thesis chapter 3)."""

__version__ = "0.1.0"

from common import register_moved

# Modules that moved into the subpackages (params/, tasks/, dataset/, model/, analysis/):
# their former names import for one release as the moved modules, with a DeprecationWarning
# (``common.register_moved``).
register_moved(
    {
        "gpt_checkpoints.evaluation": "gpt_checkpoints.analysis.evaluation",
        "gpt_checkpoints.memorization": "gpt_checkpoints.analysis.memorization",
        "gpt_checkpoints.baselines": "gpt_checkpoints.analysis.optimizers",
        "gpt_checkpoints.data": "gpt_checkpoints.dataset.datamodule",
        "gpt_checkpoints.official_data": "gpt_checkpoints.dataset.official",
        "gpt_checkpoints.store": "gpt_checkpoints.dataset.store",
        "gpt_checkpoints.models": "gpt_checkpoints.model.gpt",
        "gpt_checkpoints.module": "gpt_checkpoints.model.module",
        "gpt_checkpoints.official": "gpt_checkpoints.model.official",
        "gpt_checkpoints.layout": "gpt_checkpoints.params.layout",
        "gpt_checkpoints.permutation": "gpt_checkpoints.params.permutation",
        "gpt_checkpoints.cartpole": "gpt_checkpoints.tasks.cartpole",
        "gpt_checkpoints.sources": "gpt_checkpoints.tasks.sources",
        "gpt_checkpoints.vision_io": "gpt_checkpoints.tasks.vision_io",
    }
)
