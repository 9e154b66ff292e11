"""What every layer of tlkit uses; knows nothing of images, models or training.

* :mod:`~tlkit.core.errors` -- :class:`TlkitError`, the one-line user-fixable error (CLI exit 2).
* :mod:`~tlkit.core.constants` -- defaults shared by the library and the CLI (imports nothing heavy).
* :mod:`~tlkit.core.io` -- atomic writes, JSON/CSV/NPY/PNG, hashing (``sha256_file``, ``run_digest``).
* :mod:`~tlkit.core.fingerprint` -- per-file content fingerprints (size, mtime, head and tail hash).
* :mod:`~tlkit.core.locks` -- ``hold_lock``: one writer per folder, released by the kernel.
* :mod:`~tlkit.core.runtime` -- device, precision, autocast, seeds, workers.
* :mod:`~tlkit.core.cpuinfo` and :mod:`~tlkit.core.dist_env` -- CPU bf16 and torchrun ranks, without torch.
* :mod:`~tlkit.core.batch_size` -- ``--batch-size auto``: the largest batch that fits, probed.

Importing this package imports none of them.
"""
