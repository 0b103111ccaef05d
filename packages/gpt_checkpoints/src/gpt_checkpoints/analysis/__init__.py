"""Prompting and the evaluations of a trained G.pt (thesis Sec. 3.4-3.5): one-step training against
hand-designed optimizers (``optimizers``), prompting, prompt alignment, recursive prompting and
nearest neighbours (``evaluation``), memorisation baselines and novelty (``memorization``, Zeng et
al. 2025), the figures (``plots``) and the jobs of the evaluate and prompt commands (``jobs``)."""
