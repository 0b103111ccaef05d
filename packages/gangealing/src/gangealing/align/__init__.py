"""Inference-side alignment: Spatial Transformers, sampling, target modes and congealers (thesis
Sec. 4.3.1-4.3.2). Imports nothing from ``training``."""
