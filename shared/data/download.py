"""`make data`: download the full ADGEN archive from its authors and unpack it into DATA_DIR."""

from __future__ import annotations

import logging
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from shared.settings import get_settings

logger = logging.getLogger(__name__)

ADGEN_URL = "https://cloud.tsinghua.edu.cn/f/b3f119a008264b1cabd1/?dl=1"
# Line counts of the published AdvertiseGen release.
EXPECTED_LINES = {"train.json": 114599, "dev.json": 1070}
TIMEOUT_SECONDS = 60


def download(target_dir: Path) -> None:
    """Fetch the archive, extract train.json and dev.json, and check their line counts."""
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "AdvertiseGen.tar.gz"
        logger.info("downloading %s", ADGEN_URL)
        with (
            urllib.request.urlopen(ADGEN_URL, timeout=TIMEOUT_SECONDS) as response,
            archive.open("wb") as out,
        ):
            while chunk := response.read(1 << 20):
                out.write(chunk)
        with tarfile.open(archive) as bundle:
            bundle.extractall(scratch, filter="data")
        target_dir.mkdir(parents=True, exist_ok=True)
        for name, expected in EXPECTED_LINES.items():
            source = next(Path(scratch).rglob(name), None)
            if source is None:
                raise RuntimeError(f"{name} is missing from the downloaded archive")
            lines = sum(1 for _ in source.open(encoding="utf-8"))
            if lines != expected:
                raise RuntimeError(f"{name} has {lines} lines, expected {expected}; the download may be cut")
            source.replace(target_dir / name)
            logger.info("%s: %d lines", target_dir / name, lines)


def main(argv: list[str] | None = None) -> int:
    from shared.logs import setup_logging

    setup_logging()
    target = get_settings().data_dir / "AdvertiseGen"
    try:
        download(target)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        print(
            f"make data: cannot download ADGEN from {ADGEN_URL}: {error}\n"
            f"Download AdvertiseGen.tar.gz on a machine with internet access and unpack train.json and "
            f"dev.json into {target}/",
            file=sys.stderr,
        )
        return 1
    except RuntimeError as error:
        print(f"make data: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
