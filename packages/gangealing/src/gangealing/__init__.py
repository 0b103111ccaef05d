"""GANgealing: GAN-supervised dense visual alignment (thesis chapter 4)."""

__version__ = "0.1.0"

from common import register_moved

# Modules that moved into the subpackages (stylegan2/, align/, data/, apps/, eval/, training/):
# their former names import for one release as the moved modules, with a DeprecationWarning
# (``common.register_moved``).
register_moved(
    {
        "gangealing.congealer": "gangealing.align.congealer",
        "gangealing.official_stn": "gangealing.align.official_stn",
        "gangealing.released": "gangealing.align.released",
        "gangealing.sampling": "gangealing.align.sampling",
        "gangealing.stn": "gangealing.align.stn",
        "gangealing.target": "gangealing.align.target",
        "gangealing.applications": "gangealing.apps.correspondence",
        "gangealing.datasets": "gangealing.data.datasets",
        "gangealing.image_data": "gangealing.data.image_data",
        "gangealing.synthetic": "gangealing.data.synthetic",
        "gangealing.congealing_baseline": "gangealing.eval.congealing_baseline",
        "gangealing.diffaug": "gangealing.stylegan2.diffaug",
        "gangealing.stylegan2_ops": "gangealing.stylegan2.ops",
        "gangealing.gan_module": "gangealing.training.gan_module",
        "gangealing.losses": "gangealing.training.losses",
        "gangealing.module": "gangealing.training.module",
    }
)
