"""Data shared by the packages: ``digits`` (scikit-learn's 8x8 digits and their one split) and
``images`` (uint8 conversion, PNG, sample grids, ADM-style ``.npz``)."""
