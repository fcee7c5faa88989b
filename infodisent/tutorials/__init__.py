"""What the notebooks need and the core does not (floor 10, beside :mod:`infodisent.studies`): portable
checks of trained numbers (:mod:`.notebook`), miniature datasets in the official layouts (:mod:`.fabricate`)
and the paper's tables (:mod:`.reproduction`)."""
