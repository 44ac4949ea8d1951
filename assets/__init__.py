"""Shipped assets (installed as mmlora.assets): tiny model files and demo data."""
