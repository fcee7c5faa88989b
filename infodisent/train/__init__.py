"""Training heads on cached maps (floor 5, beside :mod:`infodisent.explain`, which it does not import): the
loop and its checkpoints (:mod:`.training`), pruning to a compact head (:mod:`.sparse`, choosing K in
:mod:`.selection`), the linear-probe reference (:mod:`.probe`), the backbone's own classifier as a teacher
(:mod:`.teacher`), glm-saga's sparse layer (:mod:`.glm`) and the progress a run reports (:mod:`.monitor`).
Imports data, core, records and the infrastructure."""
