"""Evaluation: PCK-Transfer (thesis Sec. 4.4.2), its benchmarks, the pixel-congealing baseline."""
