"""Training a model: one run start to finish (``run``; its folder, ``folder``; its plan lines, ``plan_line``;
the steps' shared ``context``), the route's phases (``fitting``) through the one training loop (``loop``): a head
on cached features (``transfer``), the top stages on cached activations (``partial``), fine-tuning, from
scratch; checkpoints, calibration and the bundle at the end (``finish``), the ``--log`` trackers, and
training on several processes (``distributed``).

Named ``training``, not ``train``: ``oculi.train(...)`` is the API function."""
