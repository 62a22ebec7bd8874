"""ShapesEval SFT samples as a tensorflow-datasets builder: prompt, layout, plan and image.

``ShapesSft`` generates ``num_examples`` samples from a seed, offline, and prepares them once
under ``data_dir``: the prompt (``shapes.prompts.sample_prompt``, training combinations only),
a layout that satisfies it (``sample_layout``), the rendered 32 x 32 image
(``shapes.world.render``) and the plan text (``shapes.plan.plan_text``). The SFT loop reads it
when ``config.data.num_examples > 0`` (a fixed dataset, reshuffled every epoch); with 0 it draws
fresh samples every step (the default: the world is a generator, so a fixed dataset only
matters for a fixed data budget or for inspecting the data).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from unigrpo_jax.shapes import plan, prompts, world


@dataclasses.dataclass(eq=False)
class SftSamplesConfig(tfds.core.BuilderConfig):
    seed: int = 0
    num_examples: int = 0


class ShapesSft(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """ShapesEval SFT samples generated from a seed (nothing is downloaded)."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=f'{c.num_examples} ShapesEval SFT samples from seed {c.seed}',
            features=tfds.features.FeaturesDict({
                'index': np.int64,
                'prompt': tfds.features.Text(),
                'plan': tfds.features.Text(),
                'metadata': tfds.features.Text(),  # GenEval-format JSON
                'layout': tfds.features.Text(),    # JSON [[shape, colour, row, col], ...]
                'image': tfds.features.Image(shape=(world.CANVAS_PX, world.CANVAS_PX, 3)),
            }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples()}

    def _generate_examples(self):
        c = self.builder_config
        rng = np.random.default_rng(c.seed)
        for i in range(c.num_examples):
            metadata = prompts.sample_prompt(rng)
            layout = prompts.sample_layout(metadata, rng)
            yield i, {'index': i, 'prompt': metadata['prompt'], 'plan': plan.plan_text(layout),
                      'metadata': json.dumps(metadata), 'layout': json.dumps(layout),
                      'image': world.render(layout)}


@dataclasses.dataclass
class SftExamples:
    """A prepared dataset in memory (N examples)."""

    metadata: list       # [N] GenEval metadata
    layouts: list        # [N] world layouts
    images: np.ndarray   # [N, 32, 32, 3] uint8

    def batch(self, epoch_seed: int, step: int, batch_size: int) -> tuple[list, list, np.ndarray]:
        """Batch ``step`` (0-based): consecutive slices of a permutation drawn per epoch."""
        n = len(self.metadata)
        if batch_size > n:
            raise ValueError(f'batch size {batch_size} exceeds the {n} examples')
        per_epoch = n // batch_size
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([epoch_seed, epoch]).permutation(n)
        idx = order[k * batch_size:(k + 1) * batch_size]
        return ([self.metadata[i] for i in idx], [self.layouts[i] for i in idx],
                self.images[idx])


def load(num_examples: int, seed: int, data_dir: str) -> SftExamples:
    """Prepares (once) and reads the ``num_examples`` samples of ``seed``."""
    if num_examples <= 0:
        raise ValueError(f'num_examples must be positive, got {num_examples}')
    builder = ShapesSft(data_dir=os.path.abspath(data_dir), config=SftSamplesConfig(
        name=f'n{num_examples}_seed{seed}', seed=seed, num_examples=num_examples))
    builder.download_and_prepare()
    rows = sorted(tfds.as_numpy(builder.as_dataset(split='train', shuffle_files=False)),
                  key=lambda r: int(r['index']))
    layouts = [[(str(s), str(c), int(r), int(col)) for s, c, r, col in json.loads(x['layout'])]
               for x in rows]
    return SftExamples(metadata=[json.loads(x['metadata']) for x in rows], layouts=layouts,
                       images=np.stack([x['image'] for x in rows]))
