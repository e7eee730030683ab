"""Several Atrium nodes on one PostgreSQL: who leads the mirror
(:mod:`~atrium.cluster.leadership`) and how caches hear of changes made on another
node (:mod:`~atrium.cluster.bus`). See docs/SCALING.md."""
