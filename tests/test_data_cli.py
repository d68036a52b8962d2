"""`python -m training.data` stats/download and the downloader (local URLs only, no internet)."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.data import DownloadError, download, download_file
from training.data.__main__ import main
from training.data.download import sources

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.mark.slow
def test_stats_ml_100k_subprocess(shared_data: Path) -> None:
    """The documented command, run from the repository root."""
    path = Path("..") / "shared" / "data" / "movielens-100k"
    if not (REPO / path).is_dir():
        path = shared_data / "movielens-100k"
    result = subprocess.run(
        [sys.executable, "-m", "training.data", "stats", "--dataset", "movielens-100k", "--path", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "users: 943\n" in result.stdout
    assert "items: 1,682 " in result.stdout
    assert "events: 100,000\n" in result.stdout
    assert "time span: 1997-09-20 .. 1998-04-22 (UTC)" in result.stdout


def test_stats_json_default_vendored(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--dataset", "ml-latest-small", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["events"]) == (610, 9724, 100_836)
    assert stats["events_with_text"] > 0 and stats["categories"] == 19


def test_stats_amazon_text(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "stats",
        "--dataset",
        "amazon-2018",
        "--category",
        "All_Beauty",
        "--path",
        str(FIXTURES / "amazon-2018"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "events: 5\n" in out and "duplicate lines: 2" in out and "events with text: 5 (100.0%)" in out


def test_cli_missing_path_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["stats", "--dataset", "movielens-1m", "--path", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_malformed_line_subprocess(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t2\t3\n")
    command = ["stats", "--dataset", "movielens-100k", "--path", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "training.data", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'u.data'}:2: expected 4 tab-separated fields, got 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_skip_mode_reports_count(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t2\t3\n")
    assert main(["stats", "--dataset", "movielens-100k", "--path", str(tmp_path), "--on-error", "skip"]) == 0
    assert "skipped lines: 1" in capsys.readouterr().out


# --- download ---


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a temporary folder."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_download_file_from_local_http(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_dir
    (root / "a.bin").write_bytes(b"x" * 3000)
    out = download_file(f"{base}/a.bin", tmp_path / "out" / "a.bin", progress=False)
    assert out.read_bytes() == b"x" * 3000
    with pytest.raises(DownloadError, match=r"could not download http://127.0.0.1:\d+/missing.bin: HTTP 404"):
        download_file(f"{base}/missing.bin", tmp_path / "m.bin", progress=False)
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "m.bin.part").exists()


def test_download_movielens_zip_from_mirror(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_dir
    with zipfile.ZipFile(root / "ml-latest-small.zip", "w") as zipped:
        for name in ("ratings.csv", "movies.csv", "tags.csv"):
            zipped.write(FIXTURES / "ml-latest-small" / name, f"ml-latest-small/{name}")
    [folder] = download("movielens-latest", tmp_path / "dl", base_url=base, progress=False)
    assert folder == (tmp_path / "dl" / "ml-latest-small").resolve()
    assert (folder / "ratings.csv").read_bytes() == (
        FIXTURES / "ml-latest-small" / "ratings.csv"
    ).read_bytes()
    assert not (tmp_path / "dl" / "ml-latest-small.zip").exists()


def test_download_unreachable_cli_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(
        [
            "download",
            "--dataset",
            "amazon-2018",
            "--category",
            "All_Beauty",
            "--dest",
            str(tmp_path),
            "--base-url",
            f"http://127.0.0.1:{port}",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: could not download http://127.0.0.1:{port}/categoryFilesSmall/All_Beauty_5.json.gz" in err
    with pytest.raises(DownloadError, match="could not download file:///nonexistent"):
        download_file("file:///nonexistent/x.zip", tmp_path / "x.zip", progress=False)


def test_official_sources() -> None:
    [ml] = sources("movielens-100k")
    assert ml.url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip" and ml.extract
    urls = [s.url for s in sources("amazon-2018", category="All_Beauty")]
    assert urls == [
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/All_Beauty_5.json.gz",
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_All_Beauty.json.gz",
    ]
    assert sources("amazon-2023", category="All_Beauty")[0].url.endswith(
        "amazon_2023/raw/review_categories/All_Beauty.jsonl.gz"
    )
    assert sources("google-local-2021", state="Vermont")[0].url.endswith(
        "googlelocal/review-Vermont_10.json.gz"
    )
    with pytest.raises(ValueError, match="needs a category"):
        sources("amazon-2018")
