"""Using a trained model: predict, explain, ONNX and TorchScript export (with its parity gate), and
``oculi serve`` (the service, its batching, upload decoding and metrics, the HTTP app and its web page).

The bundle, the engines and the ONNX runner it builds on are in ``oculi.runtime``, which training shares;
nothing here imports training or reporting, so a program that only predicts loads neither.
"""
