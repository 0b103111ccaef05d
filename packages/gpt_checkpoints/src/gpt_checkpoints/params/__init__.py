"""Parameter space: how a network's tensors flatten into one vector (``layout``) and the
hidden-unit permutations that leave its function unchanged (``permutation``, thesis Sec. 3.2.1).
Every other part of the package builds on these two."""
