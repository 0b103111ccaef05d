"""Checkpoint datasets (thesis Sec. 3.2.2): collecting runs (``collection``), this package's store
of collected runs (``store``), the released G.pt datasets in their LMDB layout (``official``) and
the pairs G.pt trains on, with their normalisation (``datamodule``)."""
