"""Labelled images in: sources (folders, built-in sets), decoding in crash-contained worker processes, the
on-disk cache, splits and their manifest, preprocessing, augmentation and filters."""
