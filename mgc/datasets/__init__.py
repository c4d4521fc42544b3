"""Dataset builders: each public dataset's own layout and metadata -> the mgc manifest.

Why one module per dataset: training, tagging and evaluation only ever see a manifest
(docs/architecture.md, "Data contracts"), so everything a dataset does differently (folder layout, metadata
files, tag prefixes, official splits) stays in its module here. Each exposes a frozen
config dataclass and a ``build_*`` function returning a :class:`DatasetBuild` (the
manifest plus what was dropped and why); :func:`finish` then checks files, adds splits
and folds, :func:`save` writes it, :func:`summary` describes it.

    from mgc.datasets import GtzanConfig, build_gtzan, finish, FinishConfig, save
    build = finish(build_gtzan(GtzanConfig("data/gtzan")), FinishConfig(random_split=True))
    save(build.manifest, "manifests/gtzan.parquet")

:data:`DATASETS` is the registry `jobs/build_manifest.py` makes its sub-commands from: a new
dataset is one module with one :class:`DatasetSpec` (its flags and its builder) added here.
"""

from mgc.datasets import fma, folder, gtzan, jamendo
from mgc.datasets.common import (
    DatasetBuild,
    DatasetSpec,
    FinishConfig,
    check_files,
    finish,
    list_files,
    save,
    summary,
)
from mgc.datasets.fma import FmaConfig, build_fma
from mgc.datasets.folder import FolderConfig, build_folder
from mgc.datasets.gtzan import GtzanConfig, build_gtzan
from mgc.datasets.jamendo import JamendoConfig, build_jamendo

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (gtzan.SPEC, fma.SPEC, jamendo.SPEC, folder.SPEC)}
"""Every dataset builder by sub-command name, in ``--help`` order."""

__all__ = [
    "DATASETS",
    "DatasetBuild",
    "DatasetSpec",
    "FinishConfig",
    "FmaConfig",
    "FolderConfig",
    "GtzanConfig",
    "JamendoConfig",
    "build_fma",
    "build_folder",
    "build_gtzan",
    "build_jamendo",
    "check_files",
    "finish",
    "list_files",
    "save",
    "summary",
]
