"""Sub-commands of the ``tinysaver`` CLI (see :mod:`tinysaver.cli`): one module per command, each
with ``add_arguments(parser)`` and ``run(args)``; the words of the CLI (flags, exit codes) live here.

May import: any tinysaver package; plugins only through the core's registries.
"""
