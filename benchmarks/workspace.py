"""The temporary workspace of a benchmark run: data registry, volumes, settings and the tiny model.

The harness points this process and every child at the workspace through the environment, as
`adgen dev` does, because the services read their settings from there. The tiny model is built
once per run from the benchmark's data file, so its tokenizer (and thus every sequence length)
fits those lines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.settings import TINY_MODEL_NAME, Settings, get_settings

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEV_FILE = REPO.parent / "shared/data/AdvertiseGen/dev.json"
SAMPLE_FILE = REPO / "data/adgen_sample.json"
DATASET = "bench"
ADGEN_COLUMNS = {"prompt": "content", "query": "", "response": "summary", "history": ""}


@dataclass
class Workspace:
    """The temporary folders of one run and the tiny model built in them."""

    root: Path
    data_file: Path  # The ADGEN lines used by every section.
    model_path: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def settings(self) -> Settings:
        """Return fresh settings of this workspace, ignoring any `.env` file of the working directory."""
        get_settings.cache_clear()  # Code that calls get_settings() itself reads the workspace too.
        return Settings(_env_file=None)  # type: ignore[call-arg]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def choose_data_file(requested: Path | None) -> Path:
    """Return the ADGEN file to use: the one requested, else the dev split, else the bundled sample."""
    if requested is not None:
        if not requested.is_file():
            raise FileNotFoundError(f"--dev-file {requested} not found; pass the path of ADGEN's dev.json")
        return requested.resolve()
    if DEFAULT_DEV_FILE.is_file():
        return DEFAULT_DEV_FILE.resolve()
    logger.warning("%s not found; benchmarking on the 56-line sample %s", DEFAULT_DEV_FILE, SAMPLE_FILE)
    return SAMPLE_FILE


def point_environment(root: Path, max_concurrent_streams: int) -> None:
    """Set the settings of this process and of the stack's children to the workspace.

    REDIS_URL is removed so that LocalStack starts its own redis-server on a free port instead of
    using a Redis that the environment names.
    """
    values = {
        "VOLUMES_DIR": str(root / "volumes"),
        "DATA_DIR": str(root / "data"),
        "BASE_MODEL": TINY_MODEL_NAME,
        "SERVED_MODEL": "",
        "API_KEY": "",
        "MAX_CONCURRENT_STREAMS": str(max_concurrent_streams),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    os.environ.update(values)
    os.environ.pop("REDIS_URL", None)
    get_settings.cache_clear()


def create_workspace(data_file: Path, max_concurrent_streams: int, parent: Path | None = None) -> Workspace:
    """Create the temporary folders, register `data_file` as dataset `bench` and build the tiny model."""
    from shared.modeling.tiny import build_tiny_model, corpus_texts

    root = Path(tempfile.mkdtemp(prefix="adgen-bench-", dir=parent))
    (root / "data").mkdir()
    registry = {DATASET: {"file_name": str(data_file), "columns": ADGEN_COLUMNS}}
    (root / "data" / "dataset_info.json").write_text(json.dumps(registry, indent=2), encoding="utf-8")
    point_environment(root, max_concurrent_streams)

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    model_path = build_tiny_model(
        settings.models_dir / TINY_MODEL_NAME, corpus_texts(settings.data_dir, DATASET), "glm"
    )
    return Workspace(root=root, data_file=data_file, model_path=model_path)
