"""report.html of a run, the augmentation preview and the explanation figures."""
