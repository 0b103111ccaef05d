"""Applications of a congealer to real images (thesis Sec. 4.4): congealing a folder, edit
propagation, dataset pre-processing and dense correspondence."""
