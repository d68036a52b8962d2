"""Download the public data sets from their official addresses, with a tqdm progress bar.

- MovieLens: GroupLens, https://files.grouplens.org/datasets/movielens/ (zip archives, extracted).
- Amazon Review Data 2018 (5-core + metadata): https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/
- Amazon Reviews 2023 (raw reviews + metadata): https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/
- Google Local 2021 (10-core reviews + metadata): https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/googlelocal/
Each licence is the data set's own (MovieLens 100K/1M forbid redistribution; Amazon and Google
Local are for research use): download them yourself, never commit them. Files are written to
`<name>.part` and renamed when complete; failures raise `DownloadError` with the URL and reason.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from training.data.errors import DownloadError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
AMAZON_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
AMAZON_2023 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/"
GOOGLE_LOCAL = "https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/googlelocal/"
MOVIELENS_ZIPS = {
    "movielens-100k": "ml-100k.zip",
    "movielens-1m": "ml-1m.zip",
    "movielens-10m": "ml-10m.zip",
    "movielens-20m": "ml-20m.zip",
    "movielens-25m": "ml-25m.zip",
    "movielens-latest": "ml-latest-small.zip",
}


@dataclass(frozen=True)
class Source:
    """One file to fetch: `base + path`, saved as `filename`, unzipped when `extract`."""

    base: str
    path: str
    filename: str
    extract: bool = False

    @property
    def url(self) -> str:
        return self.base + self.path


def sources(name: str, *, category: str | None = None, state: str | None = None) -> list[Source]:
    """The files behind a data set name (see `training.data.DATASETS`)."""
    if name in MOVIELENS_ZIPS:
        return [Source(GROUPLENS, MOVIELENS_ZIPS[name], MOVIELENS_ZIPS[name], extract=True)]
    if name in ("amazon-2018", "amazon-2023") and not category:
        raise ValueError(f"{name} needs a category, e.g. --category All_Beauty")
    if name == "amazon-2018":
        return [
            Source(AMAZON_2018, f"categoryFilesSmall/{category}_5.json.gz", f"{category}_5.json.gz"),
            Source(AMAZON_2018, f"metaFiles2/meta_{category}.json.gz", f"meta_{category}.json.gz"),
        ]
    if name == "amazon-2023":
        return [
            Source(AMAZON_2023, f"review_categories/{category}.jsonl.gz", f"{category}.jsonl.gz"),
            Source(AMAZON_2023, f"meta_categories/meta_{category}.jsonl.gz", f"meta_{category}.jsonl.gz"),
        ]
    if name == "google-local-2021":
        if not state:
            raise ValueError("google-local-2021 needs a state, e.g. --state Vermont")
        return [
            Source(GOOGLE_LOCAL, f"review-{state}_10.json.gz", f"review-{state}_10.json.gz"),
            Source(GOOGLE_LOCAL, f"meta-{state}.json.gz", f"meta-{state}.json.gz"),
        ]
    raise ValueError(f"no download for data set {name!r}")


def download_file(url: str, dest: str | Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch `url` (http(s) or file) to the file `dest`; DownloadError naming the URL on failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (official URLs)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with (
                open(partial, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and partial.stat().st_size != total:
            size = partial.stat().st_size
            partial.unlink()
            raise DownloadError(f"could not download {url}: got {size} of {total} bytes")
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(f"could not download {url}: {reason}") from None
    partial.replace(dest)
    return dest


def extract_zip(archive: Path, dest: Path) -> list[Path]:
    """Unzip into `dest`, refusing members that would land outside it; the top-level entries."""
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                if not (dest / member).resolve().is_relative_to(dest):
                    raise DownloadError(f"{archive}: unsafe member path {member!r}")
            zipped.extractall(dest)
            tops = sorted({member.split("/")[0] for member in zipped.namelist()})
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a zip archive ({exc})") from None
    return [dest / top for top in tops]


def download(
    name: str,
    dest: str | Path,
    *,
    category: str | None = None,
    state: str | None = None,
    base_url: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch a data set into `dest` (zips extracted and removed); `base_url` replaces the official
    host (a mirror with the same layout). Returns the files or extracted folders."""
    dest = Path(dest)
    results: list[Path] = []
    for source in sources(name, category=category, state=state):
        url = (base_url.rstrip("/") + "/" + source.path) if base_url else source.url
        target = download_file(url, dest / source.filename, progress=progress)
        if source.extract:
            results.extend(extract_zip(target, dest))
            target.unlink()
        else:
            results.append(target)
    return results
