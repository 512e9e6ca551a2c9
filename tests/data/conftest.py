"""Builders for small hand-made MovieLens-layout files, and a local HTTP server for download tests.

Nothing here is real MovieLens data: every file is generated in tmp_path.
"""
from __future__ import annotations

import http.server
import io
import threading
import time
import zipfile
from pathlib import Path

import pytest

from distrib.config import DataConfig

# (user, item, rating, timestamp) rows shared by the layout builders.
ROWS = [(1, 10, 5, 881250949), (1, 20, 3, 891717742), (2, 10, 4, 878887116), (3, 30, 1, 880606923),
        (2, 30, 2, 886397596), (3, 20, 4, 884182806), (4, 10, 3, 881171488), (4, 40, 5, 891628467)]
TITLES = {10: ("Toy Story (1995)", "Animation|Comedy"), 20: ("Heat, The (1995)", "Action|Crime"),
          30: ("Casino (1995)", "Drama"), 40: ("Babe (1995)", "Children's|Drama")}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def cfg_for(tmp_path: Path, **kw) -> DataConfig:
    kw.setdefault("root", str(tmp_path / "root"))
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("base_url", "http://127.0.0.1:9/none")  # never reached unless a test serves it
    return DataConfig(**kw)


def write_ml100k(folder: Path, rows=ROWS, splits=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(ML100K_GENRES)) + "\n")
    lines = []
    for item, (title, genres) in TITLES.items():
        flags = ["1" if g in genres.split("|") else "0" for g in ML100K_GENRES]
        lines.append(f"{item}|{title}|01-Jan-1995||http://x|" + "|".join(flags))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    for name, test_rows in splits:  # e.g. ("u1", {indices of rows in test})
        base = [r for k, r in enumerate(rows) if k not in test_rows]
        test = [r for k, r in enumerate(rows) if k in test_rows]
        (folder / f"{name}.base").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in base))
        (folder / f"{name}.test").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in test))
    return folder


def write_dat(folder: Path, rows=ROWS, encoding="latin-1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    movies = "".join(f"{i}::{t}::{g}\n" for i, (t, g) in TITLES.items()) + "50::Amélie (2001)::Comedy\n"
    (folder / "movies.dat").write_bytes(movies.encode(encoding))
    return folder


def write_csv_layout(folder: Path, rows=ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r / 1.0},{t}\n" for u, i, r, t in rows))
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f'{i},"{t}",{g}\n' for i, (t, g) in TITLES.items()))
    return folder


def zip_folder(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{arcname}/{path.name}")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        files = self.server.files
        self.server.requests.append(self.path)
        time.sleep(self.server.delay_s)  # widens the window in which racing processes overlap
        body = files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A server on 127.0.0.1 (random port) serving `server.files[name] = bytes`; yields (server, base_url)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.requests, server.delay_s = {}, [], 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/movielens"
    finally:
        server.shutdown()
        server.server_close()
