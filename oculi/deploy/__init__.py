"""Using a trained model: its bundle on disk, the engines that run it, predict, explain and ONNX export.

Training saves bundles through this package; nothing here imports training or reporting, so a program that
only predicts loads neither.
"""
