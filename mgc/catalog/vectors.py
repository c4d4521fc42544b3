"""The vector index itself: FAISS, exact below a size threshold and IVF-PQ above it.

Why two kinds: exact search (a flat inner-product scan) is the right answer and, up to a
few hundred thousand tracks, fast enough; above that a query scans every vector (2 GB
for a million 512-d tracks), so the index becomes an inverted file of product-quantised
codes, re-ranked with the stored vectors in half precision, which keeps recall@10 near
exact at a fraction of the scan (`benchmarks/index_benchmark.py` measures both). Vectors
are L2-normalised, so inner product is cosine similarity and the distance reported is
``1 - cosine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mgc.config import IndexConfig

FLAT = "flat"
IVFPQ = "ivfpq"
KINDS = (FLAT, IVFPQ)


def faiss_module():
    """``faiss`` (``faiss-cpu``, or ``faiss-gpu`` where installed), with a clear error when absent."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise RuntimeError("the vector index needs FAISS: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, C order); zero rows stay zero."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def choose_kind(count: int, cfg: IndexConfig) -> str:
    """``flat`` below ``cfg.exact_below`` vectors (or when asked), else ``ivfpq``."""
    if cfg.kind != "auto":
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown index kind {cfg.kind!r}; choose auto, {', '.join(KINDS)}")
        return cfg.kind
    return FLAT if count < cfg.exact_below else IVFPQ


def n_lists(count: int, cfg: IndexConfig) -> int:
    """Inverted lists: ``cfg.nlist``, else about 4 sqrt(n) (FAISS's guideline), at least 1."""
    if cfg.nlist:
        return cfg.nlist
    return max(1, min(65536, int(4 * math.sqrt(max(count, 1)))))


def pq_subquantizers(dim: int, wanted: int) -> int:
    """The largest number of PQ sub-vectors that divides ``dim`` and is at most ``wanted``."""
    for m in range(min(wanted, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


@dataclass(frozen=True)
class IndexLayout:
    """What kind of index was built, over how many dimensions, trained on how many vectors."""

    kind: str
    dim: int
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 0
    trained_on: int = 0
    # Vectors the lists were sized for (the count at the last build).
    built_for: int = 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "nlist": self.nlist, "pq_m": self.pq_m,
                "pq_bits": self.pq_bits, "trained_on": self.trained_on, "built_for": self.built_for}

    @classmethod
    def from_dict(cls, data: dict) -> IndexLayout:
        return cls(kind=str(data["kind"]), dim=int(data["dim"]), nlist=int(data.get("nlist", 0)),
                   pq_m=int(data.get("pq_m", 0)),
                   pq_bits=int(data.get("pq_bits", 0)), trained_on=int(data.get("trained_on", 0)),
                   built_for=int(data.get("built_for", 0)))


def new_index(kind: str, dim: int, cfg: IndexConfig, sample: np.ndarray | None = None, count: int = 0):
    """An empty FAISS index of ``kind`` for about ``count`` vectors; IVF-PQ is trained on
    ``sample`` (normalised rows; FAISS wants at least 39 per list, so it caps the lists).

    Returns ``(index, layout)``.
    """
    faiss = faiss_module()
    if kind == FLAT:
        return faiss.IndexFlatIP(dim), IndexLayout(FLAT, dim, built_for=count)
    if sample is None or len(sample) == 0:
        raise ValueError("an IVF-PQ index needs training vectors")
    nlist = min(n_lists(max(count, len(sample)), cfg), max(1, len(sample) // 39))
    m = pq_subquantizers(dim, min(cfg.pq_m, max(1, dim // 4)))  # sub-vectors of 4 dimensions at least
    # 2^bits centroids per sub-quantizer, each wanting ~39 training vectors: fewer bits for a small sample.
    bits = int(max(4, min(8, np.floor(np.log2(max(len(sample), 1) / 39)))))
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x{bits},Refine(SQfp16)", faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index, IndexLayout(IVFPQ, dim, nlist=nlist, pq_m=m, pq_bits=bits, trained_on=len(sample), built_for=count)


def set_search_params(index, layout: IndexLayout, cfg: IndexConfig) -> None:
    """Probes and re-ranking depth for IVF-PQ (query-time knobs, not stored in the index)."""
    if layout.kind != IVFPQ:
        return
    faiss = faiss_module()
    faiss.extract_index_ivf(index).nprobe = min(cfg.nprobe, layout.nlist)
    faiss.downcast_index(index).k_factor = float(cfg.refine_factor)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, positions)``, each ``[queries, k]``: distance ``1 - cosine``, position -1 past the end."""
    if index.ntotal == 0:
        raise ValueError("the index is empty")
    scores, positions = index.search(normalise(queries), min(k, index.ntotal))
    return (1.0 - scores).astype(np.float32), positions


def to_bytes(index) -> bytes:
    return faiss_module().serialize_index(index).tobytes()


def from_bytes(data: bytes):
    return faiss_module().deserialize_index(np.frombuffer(data, dtype=np.uint8))


def reconstruct(index, layout: IndexLayout, position: int) -> np.ndarray:
    """The stored vector at ``position`` (exact for flat, the half-precision copy for IVF-PQ)."""
    faiss = faiss_module()
    if layout.kind == IVFPQ:
        return faiss.downcast_index(faiss.downcast_index(index).refine_index).reconstruct(int(position))
    return index.reconstruct(int(position))
