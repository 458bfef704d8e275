"""DERM's Feast objects for `feast apply` run from the repository root.

Declared from the DERM spec in ./derm.yaml (default: ctr and cvr, each with a user and a
Pin view) for the work directory $DERM_WORKDIR (default ./data), through the one function
that derm itself registers them with (`derm_features.feast.definitions.feast_objects`).
Each object is bound at module level under its own name, which is where Feast's
`feast apply` looks: entities `user`, `pin`; sources `<view>_source`; views such as
`ctr_user_embedding`; services `ctr_ranking`, `cvr_ranking`.
"""

from derm_features.core.spec import load_spec
from derm_features.core.workdir import Workdir
from derm_features.feast.definitions import feast_objects
from derm_features.feast.repo import offline_store_type

globals().update(feast_objects(load_spec(), Workdir.resolve(), offline_store_type()))
