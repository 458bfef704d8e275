"""DERM's Feast objects for `feast apply` run from the repository root.

Declared from the DERM spec in ./derm.yaml (default: ctr and cvr, each with a user and a
Pin view) for the work directory $DERM_WORKDIR (default ./data), through the one function
that derm itself registers them with (`derm_features.feast.definitions.feast_objects`).
Each object is bound at module level under its own name, which is where Feast's
`feast apply` looks: entities `user`, `pin`; sources `<view>_source`; views such as
`ctr_user_embedding`; services `ctr_ranking`, `cvr_ranking`. A team's own feature
repository declares them with the same two lines (README, "Use derm from your own Feast
repo").
"""

from derm_features.feast.definitions import repo_objects

globals().update(repo_objects())
