"""Training a model: one run start to finish (``run``), the one training loop (``loop``), its routes (a head
on cached features, ``transfer``; the top stages on cached activations, ``partial``; fine-tuning; from
scratch), checkpoints, calibration and the bundle at the end (``finish``), the ``--log`` trackers, and
training on several processes (``distributed``).

Named ``training``, not ``train``: ``oculi.train(...)`` is the API function."""
