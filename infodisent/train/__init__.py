"""Training heads on cached maps: the loop and its checkpoints (:mod:`.training`), pruning to a compact head
(:mod:`.sparse`, choosing K in :mod:`.selection`), the linear-probe reference (:mod:`.probe`) and the
progress a run reports (:mod:`.monitor`)."""
