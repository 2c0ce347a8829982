"""Baselines the bridge is measured against, in the same run: naive handler, no-op publisher."""
