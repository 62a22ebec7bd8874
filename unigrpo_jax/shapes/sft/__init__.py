"""Supervised fine-tuning of the tiny Bagel on ShapesEval (data layout, step, checkpoints)."""
