"""Images in, feature maps out: the dataset layouts (:mod:`.datasets`), the on-disk feature cache
(:mod:`.features`) and the sharding that several processes share (:mod:`.distributed`)."""
