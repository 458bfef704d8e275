"""Stable, vectorised hashing of raw feature values into embedding-table buckets.

The hashed vocabulary needs no pass over the data, but it must map a value to the same
bucket in every process and run (training today, inference tomorrow, another machine), so
nothing here uses Python's salted `hash()`:

    integers  a splitmix64 finaliser in NumPy over (value XOR salt seed)
    strings   blake2b over the few unique values of a batch, then the integer path

Each feature has its own salt (its column name), so equal raw values of two features land
in different buckets of the one shared table.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MASK63 = np.uint64(0x7FFF_FFFF_FFFF_FFFF)
# Nulls hash as this value, so a missing categorical gets its own (salted) bucket.
_NULL_SENTINEL = np.uint64(0x9E37_79B9_7F4A_7C15)


def _blake2b_u64(data: bytes) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixed uint64 -> uint64 map."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58_476D_1CE4_E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D0_49BB_1331_11EB)
        x ^= x >> np.uint64(31)
    return x


def _strings_to_u64(values: pa.Array) -> np.ndarray:
    """blake2b of each string, computed once per unique value of the array."""
    encoded = pc.dictionary_encode(values)
    uniques = encoded.dictionary.to_pylist()
    table = np.array([_blake2b_u64(s.encode()) for s in uniques], dtype=np.uint64)
    indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = table[indices] if len(table) else np.zeros(len(values), np.uint64)
    if values.null_count:
        out[~np.asarray(pc.is_valid(values), dtype=bool)] = _NULL_SENTINEL
    return out


def _to_u64(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Raw values as uint64 keys (nulls -> a sentinel); ints keep their bits, strings hash."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _strings_to_u64(values)
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        ints = pc.cast(values, pa.int64())
        out = ints.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
        if values.null_count:
            out = out.copy()
            out[~np.asarray(pc.is_valid(values), dtype=bool)] = _NULL_SENTINEL
        return out
    raise TypeError(f"cannot hash values of type {t}: expected integer, boolean or string")


def hash_to_buckets(
    values: pa.Array | pa.ChunkedArray, salt: str, num_buckets: int, reserve_zero: bool
) -> np.ndarray:
    """Bucket ids (int64) of `values`, stable across processes and runs.

    reserve_zero=True keeps bucket 0 free (ids in [1, num_buckets)) for sequence padding.
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    seed = _blake2b_u64(salt.encode())
    mixed = splitmix64(_to_u64(values) ^ seed)
    if reserve_zero:
        return (mixed % np.uint64(num_buckets - 1) + np.uint64(1)).astype(np.int64)
    return (mixed % np.uint64(num_buckets)).astype(np.int64)


def hash_ids_to_int64(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Entity ids as int64: integer ids unchanged, string ids as a stable non-negative hash."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    return (_to_u64(values) & _MASK63).astype(np.int64)
