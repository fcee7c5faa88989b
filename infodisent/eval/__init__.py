"""How good a run is, as typed results (:mod:`.results`): accuracy and explanation sizes and faithfulness
(:mod:`.metrics`), part purity, consistency, stability and the pointing game (:mod:`.part_metrics`),
one run's evaluation (:mod:`.evaluation`) and the ablation grid (:mod:`.ablations`)."""
