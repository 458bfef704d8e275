"""Online read latency for ranking requests: 1 user + K candidate Pins, all four views.

Peers, each returning the same float32 values (checked on every request's first rounds):

- derm    `EmbeddingReader.read` (keys built per request, one packed round trip)
- feast   `FeatureStore.get_online_features(...).to_dict()` (one call, user_id and pin_id
          on every entity row; Feast reads each distinct entity once)
- raw     the floor the issue names: redis-py pipelined HMGET (one per entity, both views'
          fields), keys built per request, values decoded with `np.frombuffer`
- packed  the floor of derm's own transport: the same HMGETs pre-packed into one RESP
          buffer outside the timer, sent on one connection, replies decoded likewise

Requests are interleaved across peers, in a rotating order, so load on the machine hits
all alike; the report is p50/p99 per peer and the ratios.

    .venv/bin/python -m benchmarks.online_read --requests 300

Uses Redis DB 14 (flushed at start and end) and a fresh work directory under /tmp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import struct
import time
from functools import partial

import numpy as np
import pyarrow as pa
import redis

from benchmarks.online_store import add_redis_url_flag, scratch_store

USER_VIEWS = ["ctr_user_embedding", "cvr_user_embedding"]
PIN_VIEWS = ["ctr_pin_embedding", "cvr_pin_embedding"]
ALL_VIEWS = USER_VIEWS + PIN_VIEWS
DAY = dt.datetime(2024, 3, 5, tzinfo=dt.UTC)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2_000, help="users in the store")
    parser.add_argument("--pins", type=int, default=20_000, help="Pins in the store")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension D")
    parser.add_argument("--k", type=int, nargs="+", default=[100, 500], help="Pins per request")
    parser.add_argument("--requests", type=int, default=300, help="requests per K and peer")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per K first")
    parser.add_argument("--missing", type=float, default=0.05, help="share of unknown Pin ids")
    add_redis_url_flag(parser)
    return parser.parse_args()


def rows(entity: str, ids: np.ndarray, dim: int, seed: int) -> pa.Table:
    values = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    stamp = pa.timestamp("us", "UTC")
    return pa.table(
        {
            f"{entity}_id": pa.array(ids.astype(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dim),
            "last_seen": pa.array([DAY] * len(ids), stamp),
            "model_version": pa.array(["v1"] * len(ids)),
            "event_timestamp": pa.array([DAY] * len(ids), stamp),
        }
    )


class RawHmget:
    """The floors: HMGET per entity of both views' fields, decoded with np.frombuffer."""

    def __init__(self, client: redis.Redis, layouts: dict, dim: int):
        from derm_features.feast.redis_layout import float_list_header

        self.client = client
        self.dim = dim
        self.header = len(float_list_header(dim))
        user, pin = layouts[USER_VIEWS[0]], layouts[PIN_VIEWS[0]]
        self.user_key = (user.key_prefix, user.key_suffix)
        self.pin_key = (pin.key_prefix, pin.key_suffix)
        self.user_fields = [
            layouts[v].feature_fields[layouts[v].feature_of("embedding")] for v in USER_VIEWS
        ]
        self.pin_fields = [
            layouts[v].feature_fields[layouts[v].feature_of("embedding")] for v in PIN_VIEWS
        ]

    def commands(self, user: int, pins: np.ndarray) -> list[tuple]:
        def key(parts, i):
            return parts[0] + struct.pack("<q", int(i)) + parts[1]

        return [("HMGET", key(self.user_key, user), *self.user_fields)] + [
            ("HMGET", key(self.pin_key, p), *self.pin_fields) for p in pins
        ]

    def decode(self, replies: list, n_pins: int) -> dict:
        out = {}
        for views, entity_replies, n in (
            (USER_VIEWS, replies[:1], 1),
            (PIN_VIEWS, replies[1:], n_pins),
        ):
            for j, view in enumerate(views):
                values = np.zeros((n, self.dim), dtype=np.float32)
                found = np.zeros(n, dtype=bool)
                for i, reply in enumerate(entity_replies):
                    if reply[j]:
                        values[i] = np.frombuffer(reply[j], "<f4", self.dim, self.header)
                        found[i] = True
                out[view] = (values, found)
        return out

    def read_pipeline(self, user: int, pins: np.ndarray) -> dict:
        with self.client.pipeline(transaction=False) as pipe:
            for command in self.commands(user, pins):
                pipe.execute_command(*command)
            replies = pipe.execute()
        return self.decode(replies, len(pins))

    def read_packed(self, packed: bytes, count: int, n_pins: int) -> dict:
        connection = self.client.connection_pool.get_connection()
        try:
            connection.send_packed_command([packed])
            replies = [connection.read_response() for _ in range(count)]
        finally:
            self.client.connection_pool.release(connection)
        return self.decode(replies, n_pins)


def feast_read(store, user: int, pins: np.ndarray) -> dict:
    features = [f"{view}:{view}" for view in ALL_VIEWS]  # the vector feature is named like its view
    entity_rows = [{"user_id": user, "pin_id": int(p)} for p in pins]
    return store.get_online_features(
        features=features, entity_rows=entity_rows, full_feature_names=True
    ).to_dict()


def same_values(ours: dict, other: dict, feast: dict) -> bool:
    for view in ALL_VIEWS:
        values, found = ours[view]
        if not (np.array_equal(values, other[view][0]) and np.array_equal(found, other[view][1])):
            return False
        feast_values = feast[f"{view}__{view}"]
        if view in USER_VIEWS:
            feast_values = feast_values[:1]
        if [v is not None for v in feast_values] != found.tolist():
            return False
        present = [v for v in feast_values if v is not None]
        if present and not np.array_equal(np.asarray(present, np.float32), values[found]):
            return False
    return True


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ms = np.asarray(samples_ns) / 1e6
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    args = parse_args()
    from derm_features.feast.online_store import EmbeddingReader, push_rows
    from derm_features.feast.redis_layout import pack_commands, view_layout

    rng = np.random.default_rng(0)
    with scratch_store(args.redis_url, "online-read") as (store, client):
        user_ids = np.arange(args.users) * 31 + 7
        pin_ids = np.arange(args.pins) * 17 + 3
        for seed, view in enumerate(ALL_VIEWS):
            entity, ids = ("user", user_ids) if view in USER_VIEWS else ("pin", pin_ids)
            push_rows(store, view, rows(entity, ids, args.dim, seed))

        reader = EmbeddingReader(store)
        raw = RawHmget(client, {v: view_layout(store, v) for v in ALL_VIEWS}, args.dim)
        print(
            f"online read: 1 user + K Pins, views {', '.join(ALL_VIEWS)}, D={args.dim}, "
            f"{args.requests} requests per peer, {args.missing:.0%} unknown Pins"
        )
        for k in args.k:
            latencies: dict[str, list[int]] = {"derm": [], "feast": [], "raw": [], "packed": []}
            equal = True
            for request in range(-args.warmup, args.requests):  # negative: warm-up, untimed
                user = int(rng.choice(user_ids))
                pins = rng.choice(pin_ids, k, replace=False)
                unknown = rng.random(k) < args.missing
                pins[unknown] = -pins[unknown]  # ids that were never written
                commands = raw.commands(user, pins)
                packed = pack_commands(
                    [
                        b"HMGET",
                        [c[1] for c in commands],
                        *[[c[j] for c in commands] for j in (2, 3)],
                    ]
                )
                peers = {
                    "derm": partial(reader.read, [user], pins, ALL_VIEWS),
                    "feast": partial(feast_read, store, user, pins),
                    "raw": partial(raw.read_pipeline, user, pins),
                    "packed": partial(raw.read_packed, packed, len(commands), len(pins)),
                }
                results = {}
                order = list(peers)
                order = order[request % len(order) :] + order[: request % len(order)]
                for name in order:  # rotated, so no peer always runs right after Feast
                    peer = peers[name]
                    start = time.perf_counter_ns()
                    results[name] = peer()
                    if request >= 0:
                        latencies[name].append(time.perf_counter_ns() - start)
                if request < 20:  # equality on the first requests of each K
                    equal &= same_values(results["derm"], results["raw"], results["feast"])
                    equal &= same_values(results["derm"], results["packed"], results["feast"])
            stats = {name: percentiles(samples) for name, samples in latencies.items()}
            print(f"  K={k}: values equal across peers: {equal}")
            for name, label in (
                ("derm", "derm EmbeddingReader.read"),
                ("feast", "Feast get_online_features().to_dict()"),
                ("raw", "raw pipelined HMGET + frombuffer"),
                ("packed", "pre-packed HMGET + frombuffer"),
            ):
                p50, p99 = stats[name]
                print(f"    {label:40s} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
            d50, d99 = stats["derm"]
            print(
                f"    Feast / derm   p50 {stats['feast'][0] / d50:5.1f}x  "
                f"p99 {stats['feast'][1] / d99:5.1f}x   (target >= 2x)"
            )
            print(
                f"    derm / raw     p50 {d50 / stats['raw'][0]:5.2f}x  "
                f"p99 {d99 / stats['raw'][1]:5.2f}x   (target <= 1.3x)"
            )
            print(
                f"    derm / packed  p50 {d50 / stats['packed'][0]:5.2f}x  "
                f"p99 {d99 / stats['packed'][1]:5.2f}x"
            )


if __name__ == "__main__":
    main()
