"""Studies: procedures that train heads and compare runs, above the pipeline (floor 10, beside
:mod:`infodisent.tutorials`). They may use every floor below (records to pipeline); nothing in the package
but the faces (widgets, cli) imports them.

- :mod:`.sanity`: the sanity checks (model randomisation; a head trained on shuffled labels);
- :mod:`.shortcuts`: suspicious channels, :func:`~.shortcuts.edit` (a new run with channels switched off),
  before/after;
- :mod:`.ablations`: the ablation grid (one run per variant).
"""
