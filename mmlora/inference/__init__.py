"""Inference: `mmlora infer`, one prompt about one image with an optional adapter merged in."""
