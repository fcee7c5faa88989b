"""Metrics that score a given model (floor 6, above train and explain): accuracy, explanation sizes and
faithfulness (:mod:`.metrics`), part purity, consistency, stability and the pointing game
(:mod:`.part_metrics`), one split's explanation metrics (:mod:`.evaluation`), each kept head on the test
split (:mod:`.frontier`), agreement with the black box (:mod:`.fidelity`) and the peers' metrics through
Quantus (:mod:`.field`). Nothing here trains; procedures that do are :mod:`infodisent.studies`."""
