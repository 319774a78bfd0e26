"""Sub-commands of the ``tinysaver`` CLI (see :mod:`tinysaver.cli`)."""
