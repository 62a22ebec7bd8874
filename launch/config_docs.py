r"""Writes docs/configuration.md, the reference of every config field, from its sources.

    python launch/config_docs.py            # (re)write docs/configuration.md
    python launch/config_docs.py --check    # exit 1 when it is stale (what the tests run)

The meaning of a field is the comment at its definition in the config file (or at the
dataclass field it becomes); ``unigrpo_jax/config_reference.py`` says where each comes from.
A field without one stops this with a message naming it and the file to comment.
"""

import os
import sys

from absl import app, flags

from unigrpo_jax import config_files, config_reference

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'docs/configuration.md',
                    'the file to write (or check); a relative path is under the repository root')
flags.DEFINE_bool('check', False,
                  'write nothing: exit 1, naming the file, when it differs from what would be '
                  'written')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    path = os.path.join(config_files.ROOT, FLAGS.out)
    try:
        text = config_reference.render()
    except config_reference.SourceError as e:
        sys.exit(f'launch/config_docs.py: {e}')
    if FLAGS.check:
        if config_reference.stale(path, text):
            sys.exit(f'{FLAGS.out} is stale: run python launch/config_docs.py'
                     + ('' if FLAGS.out == flags.FLAGS['out'].default else f' --out={FLAGS.out}'))
        return 0
    with open(path, 'w') as f:
        f.write(text)
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(app.run(main))
