"""The two entities DERM embeds. Join keys are `user_id` and `pin_id` everywhere."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A Pinterest user; DERM's user tower embeds it.",
)

pin = Entity(
    name="pin",
    join_keys=["pin_id"],
    value_type=ValueType.INT64,
    description="An ad Pin; DERM's Pin tower embeds it.",
)
