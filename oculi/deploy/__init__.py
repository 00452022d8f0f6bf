"""Using a trained model: its bundle on disk, the engines that run it, predict, explain, ONNX export, and
``oculi serve`` (the service, its batching, upload decoding and metrics, the HTTP app and its web page).

Training saves bundles through this package; nothing here imports training or reporting, so a program that
only predicts loads neither.
"""
