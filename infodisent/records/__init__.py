"""Records: the package's typed, versioned data and their one serializer (floor 2, above the errors and
the infrastructure).

Imports nothing of the package but :mod:`infodisent.errors`; every floor above reads these:

- :mod:`.serialize`: :func:`to_dict`, :func:`from_dict` and the :class:`Record` mixin;
- :mod:`.options`: how a head is trained and pruned (``FitConfig``, ``SparseOptions``, ``WEIGHT_THRESHOLD``);
- :mod:`.model`: what rebuilds a model (``HeadConfig``, ``BackboneSpec``, ``ModelConfig``), as timm's
  ``PretrainedCfg`` describes one;
- :mod:`.data`: which dataset split (``DatasetSpec``, ``PartsConfig``, the dataset names);
- :mod:`.run`: what ``train`` takes (``RunConfig``) and what ``config.json`` holds (``RunRecord``);
- :mod:`.results`: every number a command writes (``RunMetrics``, ``Evaluation``, ``FrontierPoint``, ...).

Sentences built from them are views: :mod:`infodisent.viz.sentences`. The public names are re-exported
by the package itself (``infodisent.RunConfig``, ``infodisent.FitConfig``, ...); these modules are where
they live.
"""
