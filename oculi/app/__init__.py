"""``oculi app``: a web page for the whole loop (data, its check and fixes, training, results, trying the model,
exports), served by this process on 127.0.0.1 over the folders of one root.

``projects``: the data of a project, uploads, thumbnails and the fixes' change log; ``jobs``: the ``oculi``
processes the page starts (train, check, export, card), one at a time, their state on disk; ``server``: the
FastAPI app, its JSON errors and the page in ``static/``. Nothing below the CLI imports this package.
"""
