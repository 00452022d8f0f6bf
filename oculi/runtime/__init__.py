"""Running a trained model, what training and deploy both need: the bundle on disk (``bundle``: save, load,
verify), the one path that runs a model over prepared images (``engines``: device, autocast, test-time
views, probabilities), ONNX graphs with their ONNX Runtime runner (``onnx``), and the processes a job runs
on (``world``: which rank this is, its device, the process group, gathering, the ``--nproc`` launcher).

Training saves bundles and runs frozen backbones through this package; deploy loads bundles and serves them.
Nothing here imports training or deploy."""
