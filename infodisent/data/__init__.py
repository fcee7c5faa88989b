"""Images in, feature maps out (floor 4, above the core): the dataset layouts (:mod:`.datasets`), the on-disk
feature cache (:mod:`.features`, written by :mod:`.extract`), images through the backbone (:mod:`.loader`)
and what training reads (:mod:`.sources`). Imports the core, the records and the infrastructure
(:mod:`infodisent.io`, :mod:`infodisent.distributed`)."""
