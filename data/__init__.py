"""Data side: readers of the multi-spectral ReID data sets, transforms, samplers, loaders and the demo data."""
