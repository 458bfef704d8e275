"""A damaged pool(t-1) is refused by name, never read as an empty bucket (issue 13).

The manifest (`_layout.json`) records each bucket file's rows, bytes and crc32; day t
checks it before any work and again as it reads each bucket whole. Pools written before
manifests are read with a warning as long as every bucket has a readable file; pools of
earlier versions (Parquet files) are read as they are.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from materialize_helpers import (
    daily_table,
    flip_a_vector_byte,
    tree_bytes,
    unit_rows,
    write_daily,
)

from derm_features.serving.ann import pool_unit_vectors
from materialize.job import MaterializeConfig, dropped_ids, materialize_offline
from materialize.storage import (
    LAYOUT_FILE,
    VECTOR_PARQUET,
    PoolFile,
    PoolIntegrityError,
    UnverifiedPoolWarning,
    pool_versions,
    read_layout,
    read_pool,
    read_pool_bucket,
    read_pool_file,
    write_layout,
)

DAY = dt.date(2024, 3, 1)
DAY1 = DAY + dt.timedelta(days=1)
DERM = str(Path(sys.executable).with_name("derm"))
MODEL, ENTITY, KEY = "ctr", "user", "user_id"
BUCKETS = 3


def config(workdir, d, **kw) -> MaterializeConfig:
    return MaterializeConfig(
        workdir=workdir, model=MODEL, entity=ENTITY, day=d, online=False, buckets=BUCKETS, **kw
    )


@pytest.fixture
def two_days(workdir):
    """Pool of day 0 (30 entities in 3 buckets) and the daily rows of day 1."""
    rng = np.random.default_rng(0)
    write_daily(workdir, MODEL, ENTITY, DAY, daily_table(np.arange(30), unit_rows(rng, 30), DAY))
    write_daily(workdir, MODEL, ENTITY, DAY1, daily_table([3, 40], unit_rows(rng, 2), DAY1))
    materialize_offline(config(workdir, DAY))
    return workdir


def pool0(workdir) -> Path:
    return workdir.pool(MODEL, ENTITY, DAY)


def bucket_file(workdir, k: int) -> Path:
    return pool0(workdir) / f"bucket={k}" / "part-00000.arrow"


def listed_as_is(pool_dir: Path, f: PoolFile, relative: str) -> PoolFile:
    """`f`'s manifest entry for the file now at `relative`, with its current size and
    crc32, as if it had been written so: the checksum then passes."""
    data = (pool_dir / relative).read_bytes()
    return PoolFile(f.bucket, relative, f.rows, len(data), f"{zlib.crc32(data):08x}")


def as_parquet_pool(pool_dir: Path) -> None:
    """Rewrites a pool as derm wrote it before Arrow IPC pool files: each bucket one
    Parquet file (`VECTOR_PARQUET`), listed in a format-2 manifest."""
    files = []
    for f in read_layout(pool_dir).files:
        table = read_pool_file(pool_dir / f.path)
        relative = f.path.replace(".arrow", ".parquet")
        pq.write_table(table, pool_dir / relative, **VECTOR_PARQUET)
        (pool_dir / f.path).unlink()
        files.append(listed_as_is(pool_dir, f, relative))
    write_layout(pool_dir, BUCKETS, files)


def refused(workdir, match: str) -> None:
    """Day 1 is refused with `match` in the message, and nothing of day 1 is written."""
    with pytest.raises(PoolIntegrityError, match=match):
        materialize_offline(config(workdir, DAY1))
    assert not workdir.pool(MODEL, ENTITY, DAY1).exists()
    assert not list(workdir.offline(MODEL, ENTITY).glob(f"day={DAY1}*"))
    assert not list(workdir.offline(MODEL, ENTITY).glob(".tmp-*"))  # nor a partial one


def test_manifest_records_every_bucket_file_with_rows_bytes_and_crc32(two_days):
    layout = read_layout(pool0(two_days))
    assert layout.buckets == BUCKETS
    assert sorted(f.bucket for f in layout.files) == [0, 1, 2]
    assert sum(f.rows for f in layout.files) == 30
    for f in layout.files:
        path = pool0(two_days) / f.path
        assert f.bytes == path.stat().st_size
        assert f.crc32 == f"{zlib.crc32(path.read_bytes()):08x}"


def test_truncated_bucket_file_is_refused_by_name(two_days):
    path = bucket_file(two_days, 1)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 100])
    refused(two_days, rf"bucket=1/part-00000.arrow is {size - 100} bytes, its manifest says")
    # The README's recovery: re-run the damaged (newest) day, then day 1 goes through.
    materialize_offline(config(two_days, DAY))
    assert materialize_offline(config(two_days, DAY1)).metrics["live"] == 31


def test_missing_bucket_file_is_refused_not_read_as_empty(two_days):
    bucket_file(two_days, 2).unlink()
    refused(two_days, r"bucket=2/part-00000.arrow \(bucket 2, \d+ rows\) is missing")
    with pytest.raises(PoolIntegrityError):
        read_pool(pool0(two_days))  # every reader, not only the merge


@pytest.mark.parametrize("k", [0, BUCKETS - 1])
def test_corrupted_bytes_of_the_same_size_fail_the_checksum(two_days, k):
    """Found as bucket k is read, mid-merge: for the last bucket, the offline file was
    already being written from the earlier buckets' runs, and is dropped too."""
    flip_a_vector_byte(bucket_file(two_days, k))
    refused(two_days, rf"bucket={k}/part-00000.arrow has crc32 [0-9a-f]{{8}}, its manifest says")


@pytest.mark.parametrize("earlier", [False, True], ids=["arrow", "parquet"])
def test_a_flipped_vector_byte_is_refused_by_column_readers_too(two_days, earlier):
    """Serving, its ANN index and --resync read a few columns of a pool: they check the
    whole file's checksum too, so a corrupted vector is refused, never served."""
    pool = pool0(two_days)
    if earlier:
        as_parquet_pool(pool)
    before = read_pool(pool, [KEY, "embedding"])
    assert before.num_rows == 30
    suffix = "parquet" if earlier else "arrow"
    flip_a_vector_byte(pool / read_layout(pool).bucket_files(BUCKETS - 1)[0].path)
    message = rf"bucket={BUCKETS - 1}/part-00000.{suffix} has crc32 [0-9a-f]{{8}}, its manifest"
    with pytest.raises(PoolIntegrityError, match=message):
        read_pool(pool, [KEY, "embedding"])
    with pytest.raises(PoolIntegrityError, match=message):
        pool_unit_vectors(two_days, MODEL, ENTITY, DAY)  # what `derm serve` loads


def test_a_pool_whose_vectors_are_damaged_still_gives_its_ids_to_the_push(two_days):
    """Ids and scalars alone are read without the whole-file checksum (it would read every
    byte of a pool for a few percent): `derm materialize --online-only` of a later day
    needs only pool(t-1)'s ids, and is not refused for a vector byte it never uses."""
    materialize_offline(config(two_days, DAY1))
    flip_a_vector_byte(bucket_file(two_days, 0))
    assert read_pool(pool0(two_days), [KEY]).num_rows == 30
    dropped = dropped_ids(config(two_days, DAY1))
    assert dropped.to_pylist() == []  # nothing expired between day 0 and day 1
    with pytest.raises(PoolIntegrityError, match="bucket=0/part-00000.arrow has crc32"):
        read_pool(pool0(two_days), [KEY, "embedding"])


@pytest.mark.parametrize("reset", [False, True], ids=["refused", "reset"])
def test_a_damaged_model_version_is_named_not_taken_for_a_new_model(two_days, reset):
    """A garbled `model_version` byte makes pool(t-1) read as another lineage: the run
    names the damaged file (its checksum) instead of asking for --reset-on-new-model,
    which would throw the pool away."""
    path = bucket_file(two_days, 1)
    data = bytearray(path.read_bytes())
    at = data.rfind(b"0a1b2c3d")
    data[at + 7] = ord("c")  # another lineage, ...0a1b2c3c, same size
    path.write_bytes(bytes(data))
    assert any("0a1b2c3c" in v for v in pool_versions(pool0(two_days)))
    refused_with = config(two_days, DAY1, reset_on_new_model=reset)
    with pytest.raises(PoolIntegrityError, match="bucket=1/part-00000.arrow has crc32"):
        materialize_offline(refused_with)
    assert not two_days.pool(MODEL, ENTITY, DAY1).exists()


def test_the_advice_for_a_damaged_older_pool_rebuilds_it(two_days):
    """_REBUILD for a pool that is not the newest: remove the later pools, re-run its day,
    then the later days, oldest first: the same pools as before the damage."""
    materialize_offline(config(two_days, DAY1))
    good = {d: tree_bytes(two_days.pool(MODEL, ENTITY, d)) for d in (DAY, DAY1)}
    flip_a_vector_byte(bucket_file(two_days, 0))
    with pytest.raises(PoolIntegrityError) as info:
        read_pool(pool0(two_days))
    assert "if a later day has a pool, remove those later pool directories first" in str(info.value)
    shutil.rmtree(two_days.pool(MODEL, ENTITY, DAY1))
    for d in (DAY, DAY1):
        materialize_offline(config(two_days, d))
    assert {d: tree_bytes(two_days.pool(MODEL, ENTITY, d)) for d in (DAY, DAY1)} == good


def test_reading_a_column_no_pool_has_is_a_key_error_not_damage(two_days):
    with pytest.raises(KeyError, match=r"no column \['nope'\] in a pool"):
        read_pool(pool0(two_days), [KEY, "nope"])
    with pytest.raises(ValueError, match="name at least one column"):
        read_pool(pool0(two_days), [])  # a table of no columns has no rows either


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "_layout.json is unreadable"),
        ('{"buckets": "3"}', "_layout.json is not a pool manifest"),
        ('{"format": 2, "buckets": 3, "files": []}', r"no file listed for bucket\(s\) \[0, 1, 2\]"),
        ("", "_layout.json is unreadable"),
    ],
)
def test_garbled_layout_is_refused_by_name(two_days, text, match):
    (pool0(two_days) / LAYOUT_FILE).write_text(text)
    refused(two_days, match)


def test_missing_layout_is_refused(two_days):
    (pool0(two_days) / LAYOUT_FILE).unlink()
    refused(two_days, "_layout.json is missing")


@pytest.mark.parametrize("name", ["part-00001.arrow", "part-00001.parquet"])
def test_a_file_not_in_the_manifest_is_refused(two_days, name):
    extra = pool0(two_days) / "bucket=0" / name
    extra.write_bytes(bucket_file(two_days, 0).read_bytes())
    refused(two_days, rf"not in its manifest: \['bucket=0/{name}'\]")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """derm in a child process: a crash (SIGSEGV) shows as a negative return code."""
    return subprocess.run([DERM, *args], capture_output=True, text=True)


def test_cli_exits_2_and_names_the_damaged_file(two_days):
    bucket_file(two_days, 1).unlink()
    result = _cli("materialize", "--workdir", str(two_days.root), "--model", MODEL,
                  "--entity", ENTITY, "--date", str(DAY1), "--no-online")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "bucket=1/part-00000.arrow" in result.stderr and "is missing" in result.stderr
    assert "Traceback" not in result.stderr


def _as_format_1(pool_dir: Path) -> None:
    """What derm wrote before manifests: the bucket count only."""
    (pool_dir / LAYOUT_FILE).write_text(json.dumps({"buckets": BUCKETS}) + "\n")


def test_a_pool_without_manifest_is_read_with_a_warning(two_days, tmp_path):
    import shutil

    from derm_features.core.workdir import Workdir

    legacy = Workdir(tmp_path / "legacy")
    shutil.copytree(two_days.root, legacy.root)
    as_parquet_pool(pool0(legacy))
    _as_format_1(pool0(legacy))
    with pytest.warns(UnverifiedPoolWarning, match="written before pool manifests"):
        materialize_offline(config(legacy, DAY1))
    materialize_offline(config(two_days, DAY1))
    got, want = (read_pool(w.pool(MODEL, ENTITY, DAY1)) for w in (legacy, two_days))
    assert got.sort_by(KEY).equals(want.sort_by(KEY))
    assert read_layout(legacy.pool(MODEL, ENTITY, DAY1)).files is not None  # day 1 has one


def test_a_pool_without_manifest_and_a_missing_bucket_is_refused(two_days):
    as_parquet_pool(pool0(two_days))
    _as_format_1(pool0(two_days))
    (pool0(two_days) / "bucket=2" / "part-00000.parquet").unlink()
    with pytest.warns(UnverifiedPoolWarning):
        refused(two_days, r"bucket 2 of 3 has no Parquet file")


def test_read_pool_bucket_verifies_a_whole_bucket(two_days):
    table = read_pool_bucket(pool0(two_days), 1)
    assert table.num_rows == read_layout(pool0(two_days)).bucket_files(1)[0].rows
    assert isinstance(table, pa.Table)


def test_a_parquet_pool_of_an_earlier_version_gives_the_same_next_day(two_days, tmp_path):
    import shutil

    from derm_features.core.workdir import Workdir

    earlier = Workdir(tmp_path / "earlier")
    shutil.copytree(two_days.root, earlier.root)
    as_parquet_pool(pool0(earlier))
    assert read_pool(pool0(earlier)).equals(read_pool(pool0(two_days)))
    assert pool_versions(pool0(earlier)) == pool_versions(pool0(two_days))
    materialize_offline(config(earlier, DAY1))
    materialize_offline(config(two_days, DAY1))
    for w in (earlier, two_days):  # day 1's pool is Arrow IPC whatever day 0's was
        assert {f.path[-6:] for f in read_layout(w.pool(MODEL, ENTITY, DAY1)).files} == {".arrow"}
    day1 = [(w.pool(MODEL, ENTITY, DAY1) / f"bucket={k}/part-00000.arrow").read_bytes()
            for w in (earlier, two_days) for k in range(BUCKETS)]  # fmt: skip
    assert day1[:BUCKETS] == day1[BUCKETS:]  # the same bytes


@pytest.mark.parametrize(
    ("earlier", "match"),
    [(False, "part-00000.arrow is not a readable Arrow IPC file"),
     (True, "part-00000.parquet is not readable Parquet")],
)  # fmt: skip
def test_a_garbled_footer_is_refused_by_name(two_days, earlier, match):
    if earlier:
        as_parquet_pool(pool0(two_days))
    path = next((pool0(two_days) / "bucket=1").iterdir())
    data = path.read_bytes()
    path.write_bytes(data[:-8] + b"XXXXXXXX")  # same size, the footer's magic garbled
    refused(two_days, rf"bucket=1/{match}")


def _relist(pool_dir: Path, relative: str) -> None:
    """Records a file's current size and crc32 in the manifest, as if it had been written
    so: the checksum then passes and only parsing the file can tell."""
    layout = read_layout(pool_dir)
    files = [listed_as_is(pool_dir, f, f.path) if f.path == relative else f for f in layout.files]
    write_layout(pool_dir, layout.buckets, files)


def test_a_garbled_string_offset_exits_2_not_a_crash(two_days):
    """A same-size .arrow file whose model_version offsets point past the file: the
    versions are read (without a checksum) before the buckets, and an unvalidated IPC
    column made that read crash the process (SIGSEGV, found by flipping single bytes)."""
    path = bucket_file(two_days, 1)
    table = read_pool_file(path)
    lengths = pc.binary_length(table["model_version"]).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    data = bytearray(path.read_bytes())
    at = data.find(offsets.tobytes())
    assert at > 0, "the model_version offsets not found in the file"
    last = at + 4 * (len(offsets) - 1)
    data[last : last + 4] = np.int32(1 << 30).tobytes()
    path.write_bytes(bytes(data))
    result = _cli("materialize", "--workdir", str(two_days.root), "--model", MODEL,
                  "--entity", ENTITY, "--date", str(DAY1), "--no-online")  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "bucket=1/part-00000.arrow is not a readable pool file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not two_days.pool(MODEL, ENTITY, DAY1).exists()
    with pytest.raises(PoolIntegrityError, match="bucket=1/part-00000.arrow"):
        read_pool(pool0(two_days), [KEY, "embedding", "model_version"])  # derm serve's index
    with pytest.raises(PoolIntegrityError, match="bucket=1/part-00000.arrow"):
        pool_versions(pool0(two_days))


@pytest.mark.parametrize("earlier", [False, True])
def test_a_file_with_a_renamed_column_is_refused_by_name(two_days, earlier):
    """Listed with its own size and crc32, but not a pool file's schema: a KeyError (and
    exit 1 with a traceback) before, now the file by name, from every reader."""
    if earlier:
        as_parquet_pool(pool0(two_days))
    path = next((pool0(two_days) / "bucket=1").iterdir())
    table = read_pool_file(path)
    table = table.rename_columns(
        [{"model_version": "version"}.get(n, n) for n in table.column_names]
    )
    if earlier:
        pq.write_table(table, path, **VECTOR_PARQUET)
    else:
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
    _relist(pool0(two_days), f"bucket=1/{path.name}")
    refused(two_days, rf"bucket=1/{path.name} is not a readable pool file")
    with pytest.raises(PoolIntegrityError, match=rf"bucket=1/{path.name}"):
        pool_versions(pool0(two_days))


def test_an_unknown_type_in_a_garbled_schema_is_refused_by_name(two_days):
    """A flipped bit that makes the schema's id an int128: ArrowNotImplementedError
    escaped the footer check (exit 1, a traceback)."""
    path = bucket_file(two_days, 0)
    schema = pa.ipc.open_file(pa.memory_map(str(path))).schema
    assert schema.field(KEY).type == pa.int64()
    original = path.read_bytes()
    # The footer's copy of the schema holds the Int type's bitWidth (64): make it 128.
    for at in range(len(original) - 4, len(original) // 2, -1):
        if original[at : at + 4] != b"\x40\x00\x00\x00":
            continue
        data = bytearray(original)
        data[at] = 0x80
        path.write_bytes(bytes(data))
        try:
            pa.ipc.open_file(pa.memory_map(str(path))).count_rows()
        except pa.ArrowNotImplementedError:
            break
        except pa.ArrowException:
            pass
    else:
        pytest.fail("no bitWidth of 64 found in the footer")
    refused(two_days, r"bucket=0/part-00000.arrow is not a readable Arrow IPC file")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda files: files + [files[0]], "files listed more than once"),
        (
            lambda files: [
                dict(f, bucket={0: 1, 1: 0}.get(f["bucket"], f["bucket"])) for f in files
            ],
            "not a pool file of their bucket's directory",
        ),
        (
            lambda files: [
                dict(f, path="../" + f["path"]) if f["bucket"] == 0 else f for f in files
            ],
            "not a pool file of their bucket's directory",
        ),
    ],
    ids=["listed-twice", "buckets-swapped", "outside-the-pool"],
)
def test_a_manifest_that_moves_rows_between_buckets_is_refused(two_days, edit, match):
    """Each edit passed every size, row and crc32 check and made day 1's pool hold
    entities twice (40 rows for 31 entities with a file listed twice)."""
    manifest = pool0(two_days) / LAYOUT_FILE
    raw = json.loads(manifest.read_text())
    raw["files"] = edit(raw["files"])
    manifest.write_text(json.dumps(raw))
    refused(two_days, match)


def test_status_names_a_damaged_newest_pool(two_days, redis_url):
    """README: `derm status` names a damaged newest pool as day t would; it summed the
    manifest's row counts and printed them for a truncated or missing file."""
    path = bucket_file(two_days, 1)
    path.write_bytes(path.read_bytes()[:-100])
    result = _cli("status", "--workdir", str(two_days.root))
    assert result.returncode == 2, result.stdout
    assert "bucket=1/part-00000.arrow is" in result.stderr and "truncated" in result.stderr


def test_status_verify_says_what_it_checked(two_days, redis_url):
    """On intact pools `derm status --verify` says how many files it checksummed (the
    table alone looked the same with and without it), and `--json` carries the count."""
    files = len(read_layout(pool0(two_days)).files)
    assert files == 3
    plain = _cli("status", "--workdir", str(two_days.root), "--no-online")
    assert plain.returncode == 0 and "verified:" not in plain.stdout, plain.stderr
    verified = _cli("status", "--workdir", str(two_days.root), "--no-online", "--verify")
    assert verified.returncode == 0, verified.stderr
    assert f"verified: {files} file(s) of 1 newest pool(s) match their manifests' crc32" in (
        verified.stdout
    )
    as_json = _cli("status", "--workdir", str(two_days.root), "--no-online", "--verify", "--json")
    views = json.loads(as_json.stdout)["views"]
    assert [v["verified_files"] for v in views if v["pool_days"]] == [files]
    assert all(v["verified_files"] is None for v in views if not v["pool_days"])
    as_parquet_pool(pool0(two_days))  # written before manifests: nothing to check against
    _as_format_1(pool0(two_days))
    legacy = _cli("status", "--workdir", str(two_days.root), "--no-online", "--verify")
    assert legacy.returncode == 0, legacy.stderr
    assert "verified: 0 file(s) of 0 newest pool(s)" in legacy.stdout
    assert "1 without a manifest (written before manifests) not checked" in legacy.stdout


def test_status_verify_names_a_corrupted_byte_that_sizes_do_not_show(two_days, redis_url):
    """A same-size corruption passes `derm status` (sizes, footers, unlisted files) and is
    named by `derm status --verify` (every file's crc32), exit 2."""
    flip_a_vector_byte(bucket_file(two_days, 2))
    quick = _cli("status", "--workdir", str(two_days.root), "--no-online")
    assert quick.returncode == 0, quick.stderr
    verified = _cli("status", "--workdir", str(two_days.root), "--no-online", "--verify")
    assert verified.returncode == 2, verified.stdout
    assert "bucket=2/part-00000.arrow has crc32" in verified.stderr
