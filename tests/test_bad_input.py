"""The bad-input table: every case through the real command line. Each must exit non-zero with one line
naming the file or key and the problem, print no Python traceback, and leave an existing run intact."""
import hashlib
import http.server
import io
import shutil
import threading
import zipfile

import pytest

from tests.helpers import check_ok, tiny, train_cli

pytestmark = pytest.mark.slow  # every test here launches processes or trains

GOOD = "1\t10\t4\n1\t20\t3\n2\t10\t5\n2\t30\t2\n3\t20\t4\n3\t30\t1\n" * 3


def _file(tmp_path, text, name="ratings.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _utf16_no_bom(tmp_path):
    path = tmp_path / "ratings16.tsv"
    path.write_bytes(GOOD.encode("utf-16-le"))
    return path


def _ml100k_root(tmp_path, rows):
    folder = tmp_path / "mlroot" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_text(rows)
    return tmp_path / "mlroot"


def _zip_bytes(folder_name, files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(f"{folder_name}/{name}", text)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served():
    """A local HTTP server on 127.0.0.1 serving zips the cases build."""
    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.rsplit("/", 1)[-1])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield files, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _download_case(tmp_path, served, body, pin):
    files, url = served
    files["ml-10m.zip"] = body
    return ["data.name=ml-10m", f"data.root={tmp_path / 'dl'}", f"data.base_url={url}", f"data.sha256={pin}"]


GOOD_DAT = "1::10::4::1\n2::10::5::2\n1::20::3::3\n" * 2
GOOD_ZIP = _zip_bytes("ml-10M100K", {"ratings.dat": GOOD_DAT})


def own_file(text, name="ratings.tsv", *extra):
    return lambda t, s: ["data.name=file", *extra, f"data.path={_file(t, text, name)}"]


def ml100k(rows):
    return lambda t, s: ["data.name=ml-100k", f"data.root={_ml100k_root(t, rows)}"]


def overrides(*items):
    return lambda t, s: list(items)


CASES = {
    "missing file": (lambda t, s: ["data.name=file", f"data.path={t / 'nope.csv'}"], "nope.csv"),
    "directory for a file": (lambda t, s: ["data.name=file", f"data.path={t}"], "directory"),
    "empty file": (own_file(""), "empty"),
    "header only": (own_file("user,item,rating\n", "h.csv"), "h.csv"),
    "wrong delimiter": (own_file(GOOD, "ratings.tsv", "data.sep=comma"), "ratings.tsv"),
    "too few columns": (own_file("1,2\n3,4\n", "two.csv"), "two.csv"),
    "non-numeric rating": (own_file(GOOD + "4\t10\tgood\n"), "ratings.tsv"),
    "NaN rating": (own_file(GOOD + "4\t10\tnan\n"), "ratings.tsv"),
    "infinite rating": (own_file(GOOD + "4\t10\tinf\n"), "ratings.tsv"),
    "rating far beyond any scale": (own_file(GOOD + "4\t10\t1e30\n"), "cannot be on a rating scale"),
    "UTF-16 without its byte-order mark": (lambda t, s: ["data.name=file", f"data.path={_utf16_no_bom(t)}"],
                                           "UTF-16"),
    "negative id": (ml100k(GOOD + "-4\t10\t3\t1\n"), "u.data"),
    "non-integer id": (ml100k(GOOD + "4.5\t10\t3\t1\n"), "u.data"),
    "duplicate pairs under policy error": (own_file(GOOD, "ratings.tsv", "data.duplicates=error"), "duplicate"),
    "rating outside declared scale": (own_file(GOOD + "4\t10\t7\n", "ratings.tsv", "data.rating_min=1",
                                               "data.rating_max=5"), "ratings.tsv"),
    "truncated zip": (lambda t, s: _download_case(t, s, GOOD_ZIP[:60], hashlib.sha256(GOOD_ZIP[:60]).hexdigest()),
                      "ml-10m.zip"),
    "checksum mismatch": (lambda t, s: _download_case(t, s, GOOD_ZIP, "ab" * 32), "checksum mismatch"),
    "unknown dataset": (overrides("data.name=ml-3m"), "data.name"),
    "unknown config key": (overrides("train.lr_warmup=5"), "train.lr_warmup"),
    "wrong value type": (overrides("model.n_factors=many"), "model.n_factors"),
    "val fraction 0 with early stopping": (overrides("data.val_fraction=0", "train.patience=3"), "data.val_fraction"),
    "reference batch 0": (overrides("train.ref_batch_size=0"), "train.ref_batch_size"),
    "infinite timeout": (overrides("dist.timeout_s=inf"), "dist.timeout_s"),
    "millisecond timeout": (overrides("dist.timeout_s=0.001"), "dist.timeout_s"),
    "negative weight decay": (overrides("train.weight_decay=-1"), "train.weight_decay"),
    "negative split seed": (overrides("data.split_seed=-1"), "data.split_seed"),
    "seed beyond 2**32": (overrides("train.seed=100000000000000000000000"), "train.seed"),
    "negative cosine floor": (overrides("train.eta_min_ratio=-5"), "train.eta_min_ratio"),
    "empty run.dir": (overrides("run.dir="), "run.dir"),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_run):
    """A copy of the session's finished tiny run: the run.dir every bad input must leave as it was."""
    base = tmp_path_factory.mktemp("finished")
    shutil.copytree(tiny_run, base / "run")
    return base / "run"


def _digest(path):
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_line_and_damages_nothing(case, tmp_path, served, finished_run):
    build, fragment = CASES[case]
    before = _digest(finished_run)
    args = tiny(tmp_path, "unused") + [f"run.dir={finished_run}", f"data.cache_dir={tmp_path / 'cache'}"] + build(tmp_path, served)
    proc = train_cli(args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distrib: error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert _digest(finished_run) == before


def test_duplicates_default_policy_warns_with_the_count(tmp_path):
    path = _file(tmp_path, GOOD)
    proc = check_ok(train_cli(tiny(tmp_path, "run", "train.epochs=1", "train.batch_size=4", "train.patience=0",
                                   "data.val_fraction=0.2", "data.name=file", f"data.path={path}")))
    assert "duplicate" in proc.stderr.lower() and "12" in proc.stderr
