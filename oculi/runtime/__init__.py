"""Running a trained model, what training and deploy both need: the bundle on disk (``bundle``: save, load,
verify), the one path that runs a model over prepared images (``engines``: device, autocast, test-time
views, probabilities), and ONNX graphs with their ONNX Runtime runner (``onnx``).

Training saves bundles and runs frozen backbones through this package; deploy loads bundles and serves them.
Nothing here imports training or deploy."""
