"""Fast parsing of delimited ratings files (user, item, rating[, timestamp]) with pandas' C parser.

Separator and header are sniffed from the first lines unless forced. The common case is one typed C
parse (about 2-3 s per 25M lines); only when that fails do we re-read untyped to find the first bad line,
so a clean file never pays for the diagnosis.
"""
from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pandas as pd

from distrib.errors import UserError

SEP_NAMES = {"tab": "\t", "comma": ",", "space": " ", "whitespace": " ", "::": "::"}
COLUMNS = ("user", "item", "rating", "timestamp")
_SNIFF_BYTES = 1 << 16
# A byte-order mark names the file's encoding whatever the reader expected (spreadsheets save "Unicode text"
# as UTF-16 with one). UTF-32's marks begin with UTF-16's, so they are tried first.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def check_file(path: Path, what: str = "ratings file") -> None:
    """Missing, directory and empty files each get their own one-line message."""
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a {what}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: {what} is empty")


def read_table(path: Path, sep: str = "auto", header: bool | None = None, *, int_ids: bool,
               encoding: str = "utf-8") -> tuple[pd.DataFrame, int]:
    """Columns user, item, rating (float64) and maybe timestamp; and the file line of row 0.

    `header=None` sniffs it: a first line is a header when its rating field is not a number and its user or
    item field is not one either; `1,2,abc,0` is a rating with a bad value, reported as such.
    `int_ids` requires non-negative integer ids (MovieLens layouts); otherwise ids may be any string.
    """
    check_file(path)
    encoding = _encoding(path, encoding)
    first_fields, sep = _sniff(path, sep, encoding)
    if header is None:
        header = not _is_number(first_fields[2]) and not (_is_number(first_fields[0]) and _is_number(first_fields[1]))
    n_cols = min(len(first_fields), 4)
    df = _parse(path, sep, header, n_cols, int_ids, encoding)
    first_line = 2 if header else 1
    if len(df) == 0:
        raise UserError(f"{path}: header only, no ratings")
    _validate(df, path, first_line, int_ids)
    return df, first_line


def _encoding(path: Path, expected: str) -> str:
    """The encoding a byte-order mark names, else `expected`; NUL bytes without a mark are UTF-16 or UTF-32
    text that no reader can tell apart from binary, so the user is asked to save it with a mark or as UTF-8."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    if b"\x00" in head:
        raise UserError(f"{path}: NUL bytes in the text: UTF-16 or UTF-32 without a byte-order mark? "
                        "save it as UTF-8 (or as UTF-16 with its mark)")
    return expected


def _sniff(path: Path, sep: str, encoding: str) -> tuple[list[str], str]:
    with open(path, "rb") as f:
        sample = f.read(_SNIFF_BYTES).decode(encoding, errors="replace")
    lines = [ln for ln in sample.splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"{path}: ratings file is empty (only blank lines)")
    sep = _resolve_sep(sep, lines[0])
    fields = _split(lines[0], sep)
    if len(fields) == 1:
        raise UserError(f"{path}: only one column found on line 1 - wrong delimiter? "
                        f"(expected user, item, rating; set data.sep to tab, comma, space or '::')")
    if len(fields) < 3:
        raise UserError(f"{path}: too few columns ({len(fields)}) on line 1, need user, item, rating")
    return fields, sep


def _resolve_sep(sep: str, line: str) -> str:
    if sep != "auto":
        return SEP_NAMES.get(sep, sep)
    for candidate in ("::", "\t", ",", ";", "|"):
        if candidate in line:
            return candidate
    return " "


def _split(line: str, sep: str) -> list[str]:
    return line.split() if sep == " " else [f.strip() for f in line.split(sep)]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse(path: Path, sep: str, header: bool, n_cols: int, int_ids: bool, encoding: str) -> pd.DataFrame:
    # '::' needs pandas' slow python engine; reading on ':' with the C engine and keeping every other
    # column is ~20x faster (ml-10m's 10M lines), and ratings files never contain ':' inside a field.
    usecols = [2 * i for i in range(n_cols)] if sep == "::" else list(range(n_cols))
    kwargs = dict(sep=r"\s+" if sep == " " else (":" if sep == "::" else sep), header=None,
                  skiprows=1 if header else 0, usecols=usecols, encoding=encoding, engine="c",
                  skip_blank_lines=True, encoding_errors="strict")
    typed = {usecols[2]: "float64"}
    if int_ids:
        typed.update({usecols[0]: "int64", usecols[1]: "int64"})
    if n_cols == 4:
        typed[usecols[3]] = "int64"
    try:
        df = _read_csv(path, dtype=typed, **kwargs)
    except UnicodeDecodeError:
        raise UserError(_undecodable(path, encoding)) from None
    except (ValueError, TypeError, OverflowError):
        # a bad value somewhere: re-read untyped so _validate can name the line
        df = _read_csv(path, dtype=str, keep_default_na=False, low_memory=False, **kwargs)
    df.columns = list(COLUMNS[:n_cols])
    return df


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: header only, no ratings") from None
    except pd.errors.ParserError as err:
        raise UserError(f"{path}: malformed file: {_short(err)}") from None


def _undecodable(path: Path, encoding: str) -> str:
    """Which line is not valid text: ids that differ only in accents (café, cafè in latin-1) must never be
    decoded to one replacement character and merged into one user."""
    if encoding in ("utf-16", "utf-32"):  # a newline is several bytes here: decode the whole text to find the line
        data = path.read_bytes()
        try:
            data.decode(encoding)
        except UnicodeDecodeError as err:
            line = data[:err.start].decode(encoding, errors="replace").count("\n") + 1
            return f"{path}: line {line} is not valid {encoding.upper()} (at byte {err.start}); save the file again"
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as err:
                return (f"{path}: line {number} is not valid {encoding.upper()} (byte 0x{line[err.start]:02x} at "
                        f"column {err.start + 1}); save the file as {encoding.upper()}")
    return f"{path}: not valid {encoding.upper()} text"


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[-1].replace("Error tokenizing data. C error: ", "")


def _validate(df: pd.DataFrame, path: Path, first_line: int, int_ids: bool) -> None:
    """Convert columns in place to their final dtypes, or raise naming the first offending line."""
    df["rating"] = _numeric(df["rating"], path, first_line, "rating")
    ratings = df["rating"].to_numpy()
    bad = ~np.isfinite(ratings)
    if bad.any():
        i = int(np.argmax(bad))
        kind = "infinite" if np.isinf(ratings[i]) else "NaN or missing"
        raise UserError(f"{path}: {kind} rating at line {i + first_line} "
                        f"({int(bad.sum())} such lines; too few columns?)")
    for col in ("user", "item"):
        df[col] = _ids(df[col], path, first_line, col, int_ids)
    if "timestamp" in df:
        ts = _numeric(df["timestamp"], path, first_line, "timestamp")
        if ts.isna().any():
            raise UserError(f"{path}: missing timestamp at line {int(np.argmax(ts.isna().to_numpy())) + first_line}")
        df["timestamp"] = ts.astype("int64")


def _numeric(col: pd.Series, path: Path, first_line: int, what: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col.dtype):
        return col.astype("float64") if what == "rating" else col
    text = col.astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna().to_numpy() & ~text.str.lower().isin(["nan", "", "inf", "-inf"]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"{path}: non-numeric {what} {text.iloc[i]!r} at line {i + first_line}")
    return values.astype("float64")


def _ids(col: pd.Series, path: Path, first_line: int, what: str, int_ids: bool) -> pd.Series:
    if pd.api.types.is_integer_dtype(col.dtype):
        values = col
    elif not int_ids:  # arbitrary string ids are fine for data.name=file; only a missing one is not
        text = col.astype(str).str.strip()
        empty = (text == "").to_numpy() | col.isna().to_numpy()
        if empty.any():
            raise UserError(f"{path}: missing {what} id at line {int(np.argmax(empty)) + first_line}")
        numeric = pd.to_numeric(text, errors="coerce")
        if not numeric.isna().any() and (numeric == numeric.round()).all():
            return numeric.astype("int64")  # '007' and '7' are one id, as in MovieLens
        return text
    else:
        text = col.astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna().to_numpy() | (values != values.round()).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"{path}: {what} id {text.iloc[i]!r} at line {i + first_line} is not an integer")
        values = values.astype("int64")
    if int_ids:
        negative = (values < 0).to_numpy()
        if negative.any():
            i = int(np.argmax(negative))
            raise UserError(f"{path}: negative {what} id {int(values.iloc[i])} at line {i + first_line}")
    return values
