"""unigrpo-jax: UniGRPO for Bagel in JAX/Flax."""

import setuptools

# jax's own extras pin jaxlib (and libtpu, the CUDA plugin) to the jax release; constraints.txt
# pins that release.
JAX_VERSIONS = '>=0.10,<0.13'

setuptools.setup(
    name='unigrpo_jax',
    version='0.1.0',
    description='UniGRPO (think-then-draw RL) for ByteDance Bagel in JAX/Flax',
    packages=setuptools.find_packages(include=['unigrpo_jax', 'unigrpo_jax.*']),
    python_requires='>=3.11',
    install_requires=[
        f'jax{JAX_VERSIONS}',
        'flax>=0.12,<0.14',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'transformers>=4.49',
        'tokenizers>=0.20',
        'ml-collections>=1.0',
        'tensorflow-datasets>=4.9',
        'einops>=0.8',
        'clu>=0.0.12',
        # clu's metric writers import TensorFlow and write TensorBoard summaries.
        'tensorflow-cpu>=2.18',
        'tensorboard>=2.18',
        'safetensors>=0.4',
        'numpy>=1.26',
        'scipy>=1.11',  # Student-t intervals of seed spreads (a dependency of jax too)
        'ml-dtypes>=0.5',
        'pillow>=10',
        'matplotlib>=3.8',
        'absl-py>=2.1',
        'importlib_resources>=6',  # tensorflow-datasets builders need it at run time
        # launch/reward_server.py: an ASGI app on a kept server (limits, timeouts, concurrency).
        'starlette>=0.40',
        'uvicorn>=0.30',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.5',
                 # tests/notebooks: every notebook executed top to bottom in a kernel.
                 'nbclient>=0.10,<0.12', 'nbformat>=5.10,<6', 'ipykernel>=6.29,<8'],
        # Compilers for ahead-of-time compile checks of targets that are not attached
        # (launch/compile_check.py; unigrpo_jax/bench/targets.py): libtpu, XLA:GPU.
        'tpu-compile': [f'jax[tpu]{JAX_VERSIONS}'],
        'gpu-compile': [f'jax[cuda12]{JAX_VERSIONS}'],
    },
)
