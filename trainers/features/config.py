"""ModelConfig: the upstream network's shape, which also sizes the shared feature encoders.

Saved in each upstream checkpoint (`to_dict`) and rebuilt from it; downstream models read
its encoder fields (token_dim, num_buckets, seq_len) to encode the same log features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from derm_features.core.spec import DEFAULT_MODELS, DermSpec


@dataclass
class ModelConfig:
    """The upstream network. Saved in the checkpoint (`to_dict`) and rebuilt from it.

    token_dim is d, the width of every feature token; embedding_dim is D, the width of the
    user and Pin tower outputs (the same for both: the SSL loss takes their inner product).
    """

    token_dim: int = 32
    embedding_dim: int = 64
    # Hashed vocabulary of categorical and sequence features: one table shared by all
    # features of the model, each feature salted so equal raw ids of two features differ.
    num_buckets: int = 2**17
    seq_len: int = 20
    # One (m1, m2) pair per DHEN layer, each m in {"masknet", "transformer", "mlp"}.
    dhen_layers: tuple[tuple[str, str], ...] = (("masknet", "transformer"), ("mlp", "transformer"))
    interaction_layers: tuple[tuple[str, str], ...] = (
        ("masknet", "transformer"),
        ("mlp", "transformer"),
    )
    dhen_ensemble: str = "concat"  # "concat" (concat + linear) or "sum"
    id_features: bool = True  # user_id / pin_id become the first categorical of their tower
    tasks: tuple[str, ...] = ("click", "conversion")
    ssl_lambda: float = 0.1
    tau_init: float = 0.1
    tau_min: float = 0.01
    tau_max: float = 1.0
    freq_buckets: int = 2**16
    freq_alpha: float = 0.05
    dropout: float = 0.1
    num_heads: int = 2  # attention heads (DHEN transformer and sequence encoder)
    seq_layers: int = 1  # transformer layers of each sequence encoder
    mlp_hidden: int = 128  # hidden width of DHEN's MLP and MaskNet modules
    masknet_blocks: int = 1
    head_hidden: tuple[int, ...] = (64,)
    # Centre and scale each tower's output over the batch before the L2 normalisation
    # (`EntityTower`): without it the towers start with every output in nearly one
    # direction, u.p barely varies and the SSL loss stays at log(batch) for epochs.
    tower_batch_norm: bool = True

    def __post_init__(self) -> None:
        # from_dict / JSON give lists; keep tuples so configs compare and hash the same
        self.dhen_layers = tuple(tuple(p) for p in self.dhen_layers)
        self.interaction_layers = tuple(tuple(p) for p in self.interaction_layers)
        self.tasks = tuple(self.tasks)
        self.head_hidden = tuple(self.head_hidden)
        if not self.tasks:
            raise ValueError("ModelConfig.tasks must name at least one task")
        if not 0 < self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(
                f"need 0 < tau_min <= tau_init <= tau_max, got "
                f"{self.tau_min}, {self.tau_init}, {self.tau_max}"
            )
        if self.token_dim % self.num_heads:
            raise ValueError(
                f"token_dim {self.token_dim} must divide by num_heads {self.num_heads}"
            )

    def primary_task(self, model: str, models: dict[str, str] = DEFAULT_MODELS) -> str:
        """The label `model` trains on, from the spec's `models` (model -> label column;
        default "ctr" -> "click", "cvr" -> "conversion"). Raises ValueError when `model` is
        not there or its label is not one of `tasks`."""
        if model not in models:
            raise ValueError(f"unknown model {model!r}: expected one of {sorted(models)}")
        task = models[model]
        if task not in self.tasks:
            raise ValueError(f"model {model!r} trains on {task!r}, not in tasks {self.tasks}")
        return task

    def to_dict(self) -> dict:
        """JSON-safe (lists for tuples), for checkpoint hparams."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def for_spec(cls, spec: DermSpec, overrides: dict | None = None) -> ModelConfig:
        """A window fit's network: the spec's D and a head for every label of the spec (each
        model's own label is its primary task), then `overrides` (derm.yaml's model:
        fields, flags). Raises ValueError for an unknown field."""
        defaults = {"embedding_dim": spec.embedding_dim, "tasks": list(spec.labels)}
        return cls.from_dict({**cls().to_dict(), **defaults, **(overrides or {})})

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Rebuilds a config; a snapshot saved before `tower_batch_norm` existed has none."""
        d = {"tower_batch_norm": False, **d}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)
