"""ShapesEval experiments end to end: the demo (``demo``, ``launch/demo.py``) and the Table-2
comparison with the regulariser ablation (``table``, ``launch/shapes_results.py``)."""
