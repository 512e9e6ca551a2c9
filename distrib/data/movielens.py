"""Readers for every MovieLens layout and for people's own files, each returning `RawRatings`.

Layouts: ml-100k (u.data / canonical u1..u5, ua, ub files, u.item + u.genre), ml-1m and ml-10m
(`::`-separated .dat), ml-20m and later (ratings.csv / movies.csv), and data.name=file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from distrib.data.delimited import check_file, read_table
from distrib.data.raw import RawRatings
from distrib.errors import UserError

CSV_LAYOUTS = ("ml-20m", "ml-25m", "ml-32m", "ml-latest", "ml-latest-small")
DAT_LAYOUTS = ("ml-1m", "ml-10m")
ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
# ml-100k and ml-1m use whole stars; later releases added half stars.
SCALES = {"ml-100k": (1.0, 5.0), "ml-1m": (1.0, 5.0)}
HALF_STAR_SCALE = (0.5, 5.0)
# The file whose presence marks a complete extraction of each layout.
RATINGS_FILE = {"ml-100k": "u.data", **{n: "ratings.dat" for n in DAT_LAYOUTS},
                **{n: "ratings.csv" for n in CSV_LAYOUTS}}


def read_movielens(name: str, folder: Path, split: str) -> RawRatings:
    if name == "ml-100k":
        return _read_ml100k(folder, split)
    if name in DAT_LAYOUTS:
        return _read_dat(name, folder)
    if name in CSV_LAYOUTS:
        return _read_csv(name, folder)
    raise UserError(f"data.name: unknown MovieLens dataset {name!r}")


def read_file(path: Path, sep: str) -> RawRatings:
    """data.name=file: user, item, rating[, timestamp]; any separator, optional header, string ids."""
    df, first_line = read_table(path, sep, int_ids=False)
    return _to_raw(df, str(path), first_line, scale=None)


def _to_raw(df: pd.DataFrame, source: str, first_line: int, scale) -> RawRatings:
    ts = df["timestamp"].to_numpy(np.int64) if "timestamp" in df else None
    users, items = (_id_array(df[c]) for c in ("user", "item"))
    with np.errstate(over="ignore"):  # a rating beyond float32 becomes inf, refused with its line by resolve_scale
        ratings = df["rating"].to_numpy(np.float32)
    return RawRatings(users=users, items=items, ratings=ratings,
                      timestamps=ts, source=source, scale=scale, first_line=first_line)


def _id_array(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(np.int64)
    return col.to_numpy(dtype=object)


def _read_ml100k(folder: Path, split: str) -> RawRatings:
    if split in ML100K_SPLITS:
        base, test = folder / f"{split}.base", folder / f"{split}.test"
        df_base, _ = read_table(base, "\t", header=False, int_ids=True)
        df_test, _ = read_table(test, "\t", header=False, int_ids=True)
        raw = _to_raw(pd.concat([df_base, df_test], ignore_index=True), f"{base} + {test.name}", 1,
                      SCALES["ml-100k"])
        raw.is_test = np.r_[np.zeros(len(df_base), bool), np.ones(len(df_test), bool)]
    else:
        path = folder / "u.data"
        df, first = read_table(path, "\t", header=False, int_ids=True)
        raw = _to_raw(df, str(path), first, SCALES["ml-100k"])
    raw.meta_ids, raw.titles, raw.genres = _ml100k_items(folder)
    return raw


def _ml100k_items(folder: Path):
    """u.item: id|title|release|video release|IMDb URL|19 genre flags, in latin-1."""
    item_path, genre_path = folder / "u.item", folder / "u.genre"
    if not item_path.is_file():
        return None, None, None  # titles are a convenience; ratings alone are enough to train
    names = []
    if genre_path.is_file():
        for line in genre_path.read_text(encoding="latin-1").splitlines():
            if "|" in line:
                names.append(line.rsplit("|", 1)[0])
    ids, titles, genres = [], [], []
    for n, line in enumerate(item_path.read_text(encoding="latin-1").splitlines(), 1):
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            if line.strip():
                raise UserError(f"{item_path}: malformed line {n} (expected id|title|...)")
            continue
        flags = fields[5:]
        ids.append(int(fields[0]))
        titles.append(fields[1])
        genres.append("|".join(names[k] for k, f in enumerate(flags) if f.strip() == "1" and k < len(names)))
    return np.asarray(ids, np.int64), titles, genres


def _read_dat(name: str, folder: Path) -> RawRatings:
    path = folder / "ratings.dat"
    df, first = read_table(path, "::", header=False, int_ids=True, encoding="latin-1")
    raw = _to_raw(df, str(path), first, SCALES.get(name, HALF_STAR_SCALE))
    raw.meta_ids, raw.titles, raw.genres = _dat_movies(folder / "movies.dat")
    return raw


def _dat_movies(path: Path):
    """movies.dat: MovieID::Title::Genres. ml-1m is latin-1; ml-10m is utf-8 with a few latin-1 bytes."""
    if not path.is_file():
        return None, None, None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    ids, titles, genres = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            raise UserError(f"{path}: malformed line {n} (expected MovieID::Title::Genres)")
        ids.append(int(parts[0]))
        titles.append("::".join(parts[1:-1]))
        genres.append(parts[-1].strip())
    return np.asarray(ids, np.int64), titles, genres


def _read_csv(name: str, folder: Path) -> RawRatings:
    path = folder / "ratings.csv"
    df, first = read_table(path, ",", header=True, int_ids=True)
    raw = _to_raw(df, str(path), first, HALF_STAR_SCALE)
    raw.meta_ids, raw.titles, raw.genres = _csv_movies(folder / "movies.csv")
    return raw


def _csv_movies(path: Path):
    """movies.csv: movieId,title,genres with quoted titles that contain commas."""
    if not path.is_file():
        return None, None, None
    check_file(path, "movies file")
    try:
        df = pd.read_csv(path, dtype={"movieId": "int64", "title": str, "genres": str},
                         keep_default_na=False, encoding_errors="replace")
    except (ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{path}: malformed movies file ({str(err).splitlines()[-1]})") from None
    if not {"movieId", "title", "genres"} <= set(df.columns):
        raise UserError(f"{path}: expected header movieId,title,genres")
    return df["movieId"].to_numpy(np.int64), df["title"].tolist(), df["genres"].tolist()
