"""Every user mistake in the data is one UserError line that names the file (or key) and the problem."""
from __future__ import annotations

import pytest

from distrib.config import DataConfig, load_config
from distrib.data import load_dataset
from distrib.errors import UserError

from .conftest import cfg_for, write_csv_layout, write_ml100k


def _load_file(tmp_path, text: str | bytes, **kw):
    path = tmp_path / "ratings.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path, lambda: load_dataset(cfg_for(tmp_path, name="file", path=str(path), **kw))


def _raises(fn, *needles):
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("text,needles", [
    ("", ["is empty"]),
    ("\n\n  \n", ["empty"]),
    ("user,item,rating\n", ["header only"]),
    ("1;2;3\n4;5;6\n", []),  # not a mistake: ';' is auto-detected
    ("1 2\n3 4\n", ["too few columns"]),
    ("123\n456\n", ["only one column", "wrong delimiter"]),
    ("1,1,4\n2,1,abc\n", ["non-numeric rating 'abc' at line 2"]),
    ("1,1,4\n2,1,nan\n", ["NaN or missing rating at line 2"]),
    ("1,1,4\n2,1,inf\n", ["infinite rating at line 2"]),
    ("1,1,4\n2,1\n", ["missing rating at line 2"]),
    ("1,1,4\n2,1,3,4,5\n", []),  # not a mistake: extra trailing columns are ignored
    ("1,1,4,100\n2,1,3,yesterday\n", ["non-numeric timestamp 'yesterday' at line 2"]),
    ("1,1,4\n2,1,1e30\n", ["rating 1e+30 at line 2 cannot be on a rating scale", "[-1e+06, 1e+06]"]),
    ("1,1,4\n2,1,1e40\n", ["rating inf at line 2 cannot be on a rating scale"]),  # beyond float32
    ("1,1,-1000\n2,1,250000\n", []),  # not a mistake: an unusual scale, but one
    ("1,1,4\n".encode("utf-16-le") + "2,1,3\n".encode("utf-16-le"), ["NUL bytes", "UTF-16", "byte-order mark"]),
    ("1,1,4\n2,1,3\n".encode("utf-16") + b"A", ["line 3 is not valid UTF-16"]),
])
def test_bad_delimited_files(tmp_path, text, needles):
    path, load = _load_file(tmp_path, text)
    if not needles:
        load()
        return
    _raises(load, str(path), *needles)


def test_forced_wrong_delimiter(tmp_path):
    path, load = _load_file(tmp_path, "1\t2\t3\n", sep="comma")
    _raises(load, str(path), "only one column")


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.csv"
    _raises(lambda: load_dataset(cfg_for(tmp_path, name="file", path=str(missing))), str(missing), "not found")
    _raises(lambda: load_dataset(cfg_for(tmp_path, name="file", path=str(tmp_path))), str(tmp_path),
            "is a directory")


def test_missing_file_inside_movielens_folder(tmp_path):
    folder = write_ml100k(tmp_path / "root" / "ml-100k")
    _raises(lambda: load_dataset(cfg_for(tmp_path, name="ml-100k", split="u3")), str(folder / "u3.base"),
            "not found")


@pytest.mark.parametrize("line,needle", [
    ("5\t-10\t3\t881250949", "negative item id -10 at line 9"),
    ("5\t1.5\t3\t881250949", "item id '1.5' at line 9 is not an integer"),
    ("x\t10\t3\t881250949", "user id 'x' at line 9 is not an integer"),
])
def test_movielens_ids_must_be_non_negative_integers(tmp_path, line, needle):
    folder = write_ml100k(tmp_path / "root" / "ml-100k")
    with open(folder / "u.data", "a") as f:
        f.write(line + "\n")
    _raises(lambda: load_dataset(cfg_for(tmp_path, name="ml-100k")), str(folder / "u.data"), needle)


def test_movielens_rating_outside_its_scale(tmp_path):
    folder = write_ml100k(tmp_path / "root" / "ml-100k")
    with open(folder / "u.data", "a") as f:
        f.write("5\t10\t7\t881250949\n")
    _raises(lambda: load_dataset(cfg_for(tmp_path, name="ml-100k")), str(folder / "u.data"),
            "1 ratings outside the scale [1, 5]", "line 9")


def test_declared_scale_violation_names_file_and_count(tmp_path):
    path, load = _load_file(tmp_path, "1,1,4\n2,1,6\n3,1,9\n", rating_min=1, rating_max=5)
    _raises(load, str(path), "2 ratings outside the declared scale [1, 5]", "first at line 2")


@pytest.mark.parametrize("key", ["rating_min", "rating_max"])
def test_declared_scale_end_beyond_any_rating_scale(tmp_path, key):
    bounds = {"rating_min": 1, "rating_max": 5} | {key: 1e30 if key == "rating_max" else -1e30}
    _, load = _load_file(tmp_path, "1,1,4\n2,1,3\n", **bounds)
    _raises(load, f"data.{key}=", "cannot be a rating scale's end")


def test_duplicates_error_policy(tmp_path):
    path, load = _load_file(tmp_path, "1,1,4\n2,1,3\n1,1,5\n", duplicates="error")
    _raises(load, str(path), "1 duplicate (user, item) pairs", "line 3")


@pytest.mark.parametrize("policy,expected", [("last", 5.0), ("first", 4.0), ("mean", 4.0)])
def test_duplicate_policies_warn_with_count(tmp_path, policy, expected):
    text = "1,1,4\n2,1,3\n1,1,5\n1,1,3\n"
    _, load = _load_file(tmp_path, text, duplicates=policy, val_fraction=0.0, test_fraction=0.0)
    with pytest.warns(UserWarning, match="2 duplicate"):
        data = load()
    assert data.test is None and len(data.train) == 2
    pairs = {(int(u), int(i)): float(r) for u, i, r in zip(data.train.users, data.train.items, data.train.ratings)}
    assert pairs[(0, 0)] == pytest.approx(expected if policy != "last" else 3.0)


def test_malformed_movies_csv(tmp_path):
    folder = write_csv_layout(tmp_path / "root" / "ml-latest-small")
    (folder / "movies.csv").write_text('movieId,title,genres\nabc,"X",Drama\n')
    _raises(lambda: load_dataset(cfg_for(tmp_path, name="ml-latest-small")), str(folder / "movies.csv"))


@pytest.mark.parametrize("override,needle", [
    ("data.name=ml-5m", "unknown value 'ml-5m'"),
    ("data.split=u1", "exists only for data.name=ml-100k"),
    ("data.rating_min=5", None),
])
def test_config_mistakes(override, needle):
    if needle is None:
        with pytest.raises(UserError, match="rating_min must be < data.rating_max"):
            load_config(None, [override, "data.rating_max=1"])
        return
    with pytest.raises(UserError, match=needle):
        load_config(None, [override])


def test_temporal_split_without_timestamps(tmp_path):
    _, load = _load_file(tmp_path, "1,1,4\n2,1,3\n", split="temporal")
    _raises(load, "data.split=temporal", "no timestamps")


def test_unknown_name_rejected_even_without_config_validation(tmp_path):
    cfg = DataConfig(root=str(tmp_path))
    cfg.name = "ml-7m"  # bypasses __post_init__, as a hand-built config might
    _raises(lambda: load_dataset(cfg), "unknown dataset 'ml-7m'")
