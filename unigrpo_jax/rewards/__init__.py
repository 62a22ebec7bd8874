"""Rewards: functions scoring generated images, built by name from options (``registry``).

``geneval``: GenEval's scoring rules on detections; ``remote``: the ``remote`` and
``geneval_remote`` rewards of an HTTP reward server. A package's own reward lives in that package
(``unigrpo_jax.shapes.reward`` registers ``shapes``); the registry finds every
``unigrpo_jax.rewards.<name>`` and ``unigrpo_jax.<package>.reward`` by itself.
"""
