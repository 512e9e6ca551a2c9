"""Each MovieLens layout and people's own files, read from small hand-made files."""
from __future__ import annotations

import numpy as np
import pytest

from distrib.data import load_dataset
from distrib.data.movielens import read_file, read_movielens

from .conftest import ROWS, TITLES, cfg_for, write_csv_layout, write_dat, write_ml100k


def _check_rows(raw):
    assert raw.users.tolist() == [r[0] for r in ROWS]
    assert raw.items.tolist() == [r[1] for r in ROWS]
    assert raw.ratings.tolist() == [float(r[2]) for r in ROWS]
    assert raw.timestamps.tolist() == [r[3] for r in ROWS]


def test_ml100k_reads_ratings_titles_and_genres(tmp_path):
    raw = read_movielens("ml-100k", write_ml100k(tmp_path / "ml-100k"), "random")
    _check_rows(raw)
    assert raw.scale == (1.0, 5.0)
    meta = dict(zip(raw.meta_ids.tolist(), zip(raw.titles, raw.genres)))
    assert meta[20] == ("Heat, The (1995)", "Action|Crime")
    assert meta[40] == ("Babe (1995)", "Children's|Drama")


def test_ml100k_canonical_split_marks_test_file_rows(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k", splits=[("u2", {1, 5})])
    raw = read_movielens("ml-100k", folder, "u2")
    assert raw.is_test.sum() == 2 and len(raw) == len(ROWS)
    assert sorted(raw.items[raw.is_test].tolist()) == [20, 20]


@pytest.mark.parametrize("name,encoding", [("ml-1m", "latin-1"), ("ml-10m", "utf-8")])
def test_dat_layouts(tmp_path, name, encoding):
    raw = read_movielens(name, write_dat(tmp_path / name, encoding=encoding), "random")
    _check_rows(raw)
    meta = dict(zip(raw.meta_ids.tolist(), raw.titles))
    assert meta[50] == "Amélie (2001)" and meta[20] == "Heat, The (1995)"
    assert raw.scale == ((1.0, 5.0) if name == "ml-1m" else (0.5, 5.0))


@pytest.mark.parametrize("name", ["ml-20m", "ml-25m", "ml-32m", "ml-latest", "ml-latest-small"])
def test_csv_layouts_with_quoted_titles(tmp_path, name):
    raw = read_movielens(name, write_csv_layout(tmp_path / name), "random")
    _check_rows(raw)
    assert dict(zip(raw.meta_ids.tolist(), raw.titles))[20] == "Heat, The (1995)"


def test_ml10m_folder_name_inside_zip_is_found(tmp_path):
    write_dat(tmp_path / "root" / "ml-10M100K")
    data = load_dataset(cfg_for(tmp_path, name="ml-10m", val_fraction=0.0, test_fraction=0.25))
    assert data.n_users == 4 and data.rating_min == 0.5


@pytest.mark.parametrize("sep,text", [
    ("tab", "u1\ti1\t4\nu2\ti1\t3.5\nu1\ti2\t2\n"),
    ("comma", "user,item,rating\nu1,i1,4\nu2,i1,3.5\nu1,i2,2\n"),
    ("space", "u1 i1  4\nu2   i1 3.5\nu1 i2 2\n"),
    ("::", "u1::i1::4\nu2::i1::3.5\nu1::i2::2\n"),
    ("crlf", "user,item,rating,ts\r\nu1,i1,4,10\r\nu2,i1,3.5,11\r\nu1,i2,2,12\r\n"),
    ("crlf-tab", "u1\ti1\t4\t10\r\nu2\ti1\t3.5\t11\r\nu1\ti2\t2\t12\r\n"),
    ("semicolon", "u1;i1;4\nu2;i1;3.5\nu1;i2;2\n"),
])
def test_file_separator_and_header_detection(tmp_path, sep, text):
    path = tmp_path / "r.txt"
    path.write_bytes(text.encode())
    raw = read_file(path, "auto")
    assert raw.users.tolist() == ["u1", "u2", "u1"]
    assert raw.items.tolist() == ["i1", "i1", "i2"]
    assert raw.ratings.tolist() == [4.0, 3.5, 2.0]
    if sep.startswith("crlf"):
        assert raw.timestamps.tolist() == [10, 11, 12]


def test_file_forced_separator_and_literal(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("1|7|9.5\n2|7|0\n")
    raw = read_file(path, "|")
    assert raw.users.tolist() == [1, 2] and raw.ratings.tolist() == [9.5, 0.0]
    path.write_text("1,7,9.5\n2,7,0\n")
    assert read_file(path, "comma").items.tolist() == [7, 7]


def test_file_any_scale_taken_from_data_and_string_ids_encoded(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("alice,Matrix,10\nbob,Matrix,-3\nalice,Heat,7.5\ncarol,Heat,0\n")
    data = load_dataset(cfg_for(tmp_path, name="file", path=str(path), val_fraction=0.0, test_fraction=0.25))
    assert (data.rating_min, data.rating_max) == (-3.0, 10.0)
    assert data.user_ids.tolist() == ["alice", "bob", "carol"]
    assert data.item_ids.tolist() == ["Matrix", "Heat"]
    assert data.test is not None and len(data.train) + len(data.test) == 4


@pytest.mark.parametrize("encoding, bom", [("utf-8-sig", b""), ("utf-16", b""), ("utf-16-be", b"\xfe\xff"),
                                           ("utf-32", b"")])
def test_file_with_a_byte_order_mark_is_read_in_its_encoding(tmp_path, encoding, bom):
    path = tmp_path / "ratings.csv"
    path.write_bytes(bom + "user,item,rating\n1,Amélie,4.5\n2,Amélie,3\n2,Heat,1\n".encode(encoding))
    raw = read_file(path, "auto")
    assert raw.ratings.tolist() == [4.5, 3.0, 1.0] and raw.items.tolist() == ["Amélie", "Amélie", "Heat"]


def test_file_declared_scale_is_used(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,1,2\n2,1,3\n3,2,4\n")
    data = load_dataset(cfg_for(tmp_path, name="file", path=str(path), rating_min=1, rating_max=5,
                                val_fraction=0.0))
    assert (data.rating_min, data.rating_max) == (1.0, 5.0)


def test_titles_map_back_through_the_index(tmp_path):
    write_ml100k(tmp_path / "root" / "ml-100k")
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", val_fraction=0.0))
    for index, raw_id in enumerate(np.asarray(data.item_ids).tolist()):
        assert data.titles[index] == TITLES[raw_id][0]
        assert data.genres[index] == TITLES[raw_id][1]
