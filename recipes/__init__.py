"""Shipped recipes (installed as mmlora.recipes): `mmlora recipes` lists them."""
