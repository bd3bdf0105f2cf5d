"""``python -m batchops.cli``: the same command as the ``batchops`` script."""

from batchops.cli import app

app()
