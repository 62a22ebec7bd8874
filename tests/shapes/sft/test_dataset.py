"""The TFDS builder of ShapesEval SFT samples: deterministic, consistent, epoch-shuffled."""

import numpy as np

from unigrpo_jax.shapes import detector, plan, world
from unigrpo_jax.shapes import prompts as shapes_prompts
from unigrpo_jax.shapes.sft import dataset


def test_samples_are_deterministic_and_consistent(tmp_path):
    a = dataset.load(24, seed=3, data_dir=str(tmp_path / 'a'))
    b = dataset.load(24, seed=3, data_dir=str(tmp_path / 'b'))
    c = dataset.load(24, seed=4, data_dir=str(tmp_path / 'a'))
    assert a.metadata == b.metadata and a.layouts == b.layouts
    np.testing.assert_array_equal(a.images, b.images)
    assert a.metadata != c.metadata
    assert a.images.shape == (24, 32, 32, 3) and a.images.dtype == np.uint8
    for meta, layout, image in zip(a.metadata, a.layouts, a.images):
        np.testing.assert_array_equal(image, world.render(layout))
        found = sorted((d['class'], d['color'], *d['cell']) for d in detector.detect(image))
        assert found == sorted(layout)
        assert plan.parse_plan(plan.plan_text(layout)) == layout
        assert not shapes_prompts.is_held_out(meta)


def test_batches_cover_each_epoch_once(tmp_path):
    data = dataset.load(12, seed=0, data_dir=str(tmp_path))
    everything = sorted(tuple(lo) for lo in data.layouts)
    for epoch in range(2):
        seen = []
        for k in range(3):
            metadata, layouts, images = data.batch(7, epoch * 3 + k, 4)
            assert len(metadata) == len(layouts) == images.shape[0] == 4
            seen += [tuple(lo) for lo in layouts]
        assert sorted(seen) == everything
    first, second = data.batch(7, 0, 4)[1], data.batch(7, 3, 4)[1]
    assert first != second  # reshuffled per epoch
