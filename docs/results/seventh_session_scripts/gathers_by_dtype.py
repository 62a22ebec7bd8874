"""All-gathers of the compiled train step by result dtype (issue 29 item 2, XLA:GPU check).

usage, from the repository root, in a venv with [gpu-compile]:
    PYTHONPATH=. python docs/results/seventh_session_scripts/gathers_by_dtype.py h100x8 1
(target, LLM layers; prints the f32 gathers, the totals by dtype and hlo.work / collectives).
"""
import collections, os, re, sys
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
from configs import bagel_grpo
from unigrpo_jax.bench import rl_programs, targets, hlo
target = targets.get(sys.argv[1])
config = bagel_grpo.get_config()
programs = {p[0]: p for p in rl_programs.rl_programs(config, targets.devices(target), layers=int(sys.argv[2]))}
_, fn, args, *_ = programs['train_step']
try:
    text = fn.lower(*args).compile().as_text()
except Exception as e:
    from unigrpo_jax.bench import compile_check
    text = fn.lower(*args).compile(compiler_options=compile_check.CUBLAS_GEMMS).as_text()
count, size = collections.Counter(), collections.Counter()
for line in text.splitlines():
    m = re.match(r'\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(all-gather(?:-start)?)\(', line)
    if m:
        shape = m.group(1)
        if m.group(2).endswith('-start'):
            shape = hlo._async_output(shape)
        for dtype, dims in hlo._ARRAY.findall(shape):
            count[dtype] += 1
            if dtype == "f32": print("f32 gather", shape[:120], line.split("metadata")[-1][:160] if "metadata" in line else "")
            size[dtype] += hlo._shape_bytes(f'{dtype}[{dims}]')
print(target.name, 'all-gathers by dtype (ops, bytes of one execution each):', dict(count), {k: f'{v/1e9:.3f} GB' for k, v in size.items()})
print('work', hlo.work(text), 'collectives', hlo.collectives(text))
