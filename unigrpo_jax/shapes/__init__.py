"""ShapesEval: a GenEval-style world of coloured shapes on a 32 x 32 canvas (shapes_eval.md)."""
