"""Where images come from: one file per dataset (MVTec-layout folder, MVTec AD, BTAD, DAGM, KolektorSDD2, the
embedded synthetic set), the sample record they all return, downloads, and the registry that picks one by name.

To add a dataset: write `<name>.py` here returning `CategorySplits`, and register it in `registry.py`.
"""
