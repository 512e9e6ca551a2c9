"""Property-based fuzz of the config: for every key declared in distrib.config, random values of a wrong type
and out-of-range values, passed as key=value overrides through the real parser, end in one UserError line
that names the key. A handful go through the real command line as well."""
from __future__ import annotations

import math
import subprocess
import sys
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from distrib.config import Config, load_config
from distrib.errors import UserError
from distrib.options import iter_keys
from tests.helpers import REPO, clean_env

KEYS = {key: (hint, f.metadata) for key, hint, f in iter_keys(Config)}
SCALARS = (bool, int, float, str)


def _base(hint):
    """(the scalar or Literal type, is a list, accepts null)."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def _kind(item) -> type:
    return str if typing.get_origin(item) is typing.Literal else item


def _not_a_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def wrong_type(kind: type, is_list: bool, optional: bool):
    """Values that are not of the key's type (nor of its list's item type)."""
    text = st.text(max_size=12).filter(lambda s: _not_a_float(s) and s != "auto")  # auto: a number key's word
    options = {
        bool: [st.integers(), st.floats(allow_nan=False), text],
        int: [st.booleans(), st.floats(allow_nan=False).filter(lambda x: not x.is_integer()), text],
        float: [st.booleans(), text],
        str: [st.booleans()],
    }[kind]
    containers = [st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), min_size=1, max_size=2)]
    if not is_list:
        containers.append(st.lists(st.integers(), min_size=1, max_size=3))
    if not optional:
        containers.append(st.none())
    items = st.one_of(*options)
    if is_list:
        return st.one_of(st.lists(items, min_size=1, max_size=3), *containers)
    return st.one_of(items, *containers)


def out_of_range(item, meta, is_list: bool):
    """Values of the right type that the declaration excludes; None when every value of the type is allowed."""
    kind = _kind(item)
    bad = []
    if typing.get_origin(item) is typing.Literal:
        bad.append(st.text(min_size=1, max_size=12).filter(lambda s: s not in typing.get_args(item)))
    if kind is str and meta["nonempty"]:
        bad.append(st.sampled_from(["", " "]))
    if kind in (int, float):
        ge, gt, le, lt = (meta[k] for k in ("ge", "gt", "le", "lt"))
        low = ge if ge is not None else gt
        high = le if le is not None else lt
        if kind is int:
            high = 2**31 - 1 if high is None else high
            bad.append(st.integers(max_value=low - 1) if low is not None else st.nothing())
            bad.append(st.integers(min_value=high + 1))
        else:
            bad.append(st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400)]))
            if low is not None:
                bad.append(st.floats(max_value=low, exclude_max=ge is not None, allow_nan=False, allow_infinity=False))
            if high is not None:
                bad.append(st.floats(min_value=high, exclude_min=le is not None, allow_nan=False, allow_infinity=False))
    if not bad:
        return None
    value = st.one_of(*bad)
    return st.lists(value, min_size=1, max_size=2) if is_list else value


def _override(key: str, value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    loaded = yaml.safe_load(text) if text else ""
    assume(loaded == value or (isinstance(value, float) and math.isnan(value) and math.isnan(loaded)))
    return f"{key}={text}"


def _assert_refused(override: str, key: str) -> None:
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message and key in message, (override, message)


@st.composite
def bad_override(draw):
    key = draw(st.sampled_from(sorted(KEYS)))
    hint, meta = KEYS[key]
    item, is_list, optional = _base(hint)
    strategies = [wrong_type(_kind(item), is_list, optional)]
    ranged = out_of_range(item, meta, is_list)
    if ranged is not None:
        strategies.append(ranged)
    return key, draw(st.one_of(*strategies))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(bad_override())
def test_any_wrong_value_of_any_key_is_one_line_naming_the_key(case):
    key, value = case
    _assert_refused(_override(key, value), key)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_refuses_a_value_of_another_type(key):
    """Deterministic floor under the random search: each key at least once."""
    hint, _ = KEYS[key]
    item, is_list, optional = _base(hint)
    value = {"bool": "maybe", "int": "many", "float": "lots", "str": True}[_kind(item).__name__]
    _assert_refused(f"{key}={yaml.safe_dump(value).strip().removesuffix('...').strip()}", key)
    if not optional:
        _assert_refused(f"{key}=null", key)


def test_keys_declare_help_and_a_scalar_type():
    assert len(KEYS) > 60
    for key, (hint, meta) in KEYS.items():
        item, _, _ = _base(hint)
        assert _kind(item) in SCALARS, key
        assert meta["help"].strip(), key


CLI_CASES = [
    "train.ref_batch_size=0", "dist.timeout_s=inf", "dist.timeout_s=0.001", "train.weight_decay=-1",
    "data.split_seed=-1", "train.seed=100000000000000000000000", "train.eta_min_ratio=-5", "run.dir=",
    "train.lr=.nan", "train.compile=1", "model.hidden=[16, 2.5]",
]


@pytest.mark.slow
@pytest.mark.parametrize("override", CLI_CASES)
def test_the_command_line_refuses_in_one_line(override, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distrib.train", f"run.dir={tmp_path / 'run'}", override],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    key = override.split("=", 1)[0]
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distrib: error: ") and key in lines[0], proc.stderr[-2000:]
    assert proc.stdout == "" and not (tmp_path / "run").exists()
