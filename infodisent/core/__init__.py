"""The method itself, free of training and files: the head (rotation U, two-sided max, non-negative W),
the model that puts it on a frozen backbone, the backbone's map adapter and weight loading, view geometry,
and the dependency-free options every layer above reads (:mod:`.options`)."""
