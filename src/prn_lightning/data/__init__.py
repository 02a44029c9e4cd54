"""Datasets -> seen anomalies -> datamodule. See records.py for the sample record every adapter returns."""
