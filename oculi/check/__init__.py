"""``oculi check``: can the data be trusted? Duplicates and near-duplicates (within a class, across classes,
across splits: leakage), a profile of the data with plain-language warnings, and the images most likely
mislabelled (out-of-fold predictions and confident learning).

The cheap part (hashes, perceptual hashes, the profile) also runs at the start of every ``oculi train``
(``run.check_at_train_start``); the label check needs backbone features and runs only when asked."""
