"""The mn04 probe end to end on real Ray (cached embeddings, tagged afterwards with the
front end its checkpoint names). mn04 fine-tuning on Ray Train runs in tests/test_compare.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import BAD_TRACK_REASONS, SHARED, add_bad_tracks, copy_tree
from mgc.models.checkpoint import load_checkpoint, read_meta
from mgc.config import TagConfig, TrainConfig
from mgc.stages.embed import BackboneSpec, EmbeddingCache
from mgc.models.efficientat import sha256_of
from mgc.models.zoo import probabilities
from mgc.tagging.job import run_tagging
from mgc.training.driver import run_training

pytestmark = pytest.mark.slow

WEIGHTS = SHARED / "models" / "efficientat" / "mn04_as_mAP_432.pt"


@pytest.fixture(scope="module")
def weights():
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is not present")
    return str(WEIGHTS)


@pytest.fixture(scope="module")
def demo_with_bad_tracks(small_demo, tmp_path_factory):
    root = copy_tree(small_demo.parent, tmp_path_factory.mktemp("pretrained") / "demo")
    return add_bad_tracks(root / small_demo.name)


def test_probe_trains_reuses_cached_embeddings_and_tags(ray_local, demo_with_bad_tracks, weights, tmp_path):
    cache = tmp_path / "cache"
    cfg = TrainConfig(manifest=str(demo_with_bad_tracks), output=str(tmp_path / "run1"), arch="mn04",
                      weights_file=weights, probe=True, embedding_cache=str(cache), probe_epochs=20)
    first = run_training(cfg)
    probe = first.metrics["probe"]
    assert probe["embedded"] == 16 and probe["from_cache"] == 0 and probe["embedding_dim"] == 512
    assert {s["track_id"]: s["error"].split(":")[0] for s in first.metrics["skipped"]} == BAD_TRACK_REASONS
    assert set(first.metrics["test"]) == {"genre", "mood"} and first.metrics["best_epoch"] >= 1
    meta = read_meta(first.checkpoint)
    assert meta.arch == "mn04" and meta.audio == cfg.audio and meta.audio.frontend == "efficientat"
    assert len(first.metrics["history"]) == 20

    # Same backbone, weights and front end: every good track comes from the cache; the bad
    # ones are tried again (a missing file may have been uploaded since).
    again = run_training(TrainConfig(**{**cfg.__dict__, "output": str(tmp_path / "run2")}))
    assert again.metrics["probe"]["embedded"] == 0 and again.metrics["probe"]["from_cache"] == 16
    assert len(again.metrics["skipped"]) == len(BAD_TRACK_REASONS)
    assert again.metrics["test"] == first.metrics["test"]
    # Another window length is another front end: nothing is reused.
    spec = BackboneSpec("mn04", sha256_of(weights), cfg.audio)
    longer = BackboneSpec("mn04", spec.weights_sha256, cfg.audio.__class__(**{**cfg.audio.to_dict(), "window_s": 2.0}))
    assert spec.key() != longer.key()
    assert json.loads((cache / spec.key() / "backbone.json").read_text())["weights_sha256"] == spec.weights_sha256

    # The probe's checkpoint is an ordinary one: tagging decodes with its EfficientAT front
    # end and scores exactly what the probe measured (heads over the cached embeddings).
    summary = run_tagging(TagConfig(manifest=str(demo_with_bad_tracks), checkpoint=(first.checkpoint,),
                                    output=str(tmp_path / "tags"), embeddings=True))
    assert summary.tagged == 16 and sum(summary.failed.values()) == len(BAD_TRACK_REASONS)
    tags = pd.read_parquet(tmp_path / "tags").set_index("track_id")
    good = tags[tags.error.isna()]
    assert good.embedding.map(len).eq(512).all()
    model = load_checkpoint(first.checkpoint).model
    cached = EmbeddingCache(str(cache), spec).read(good.reset_index()[["track_id", "uri"]]).by_id()
    labels = meta.tasks["genre"].labels
    for track_id, windows in cached.items():
        with torch.no_grad():
            expected = probabilities(model.classify(torch.from_numpy(windows))["genre"], "multiclass").mean(0)
        got = good.loc[track_id, [f"genre_{label}" for label in labels]].to_numpy(dtype=np.float32)
        assert np.abs(got - expected.numpy()).max() < 2e-3, track_id
        assert np.abs(good.loc[track_id, "embedding"] - windows.mean(0)).max() < 2e-3


def test_gpu_path_embedder_on_raw_windows_equals_the_decoding_one(small_demo, weights):
    """The GPU path's actor (raw windows in, front end on its device) computes what the CPU
    path's (decode + numpy front end) does; run here on the CPU."""
    from mgc.audio.track import load_track
    from mgc.config import ARCH_AUDIO
    from mgc.stages.embed import Embedder

    audio = ARCH_AUDIO["mn04"]
    manifest = pd.read_csv(small_demo).head(3)
    uris = [str(small_demo.parent / u) for u in manifest.uri]
    sha = sha256_of(weights)
    decoding = Embedder("mn04", weights, sha, audio.to_dict(), decode=True)
    raw = Embedder("mn04", weights, sha, audio.to_dict(), decode=False)
    batch = {"track_id": manifest.track_id.to_numpy(), "uri": np.array(uris, dtype=object)}
    tracks = [load_track(u, audio) for u in uris]
    windows = np.empty(len(tracks), dtype=object)
    windows[:] = [t.windows for t in tracks]
    out_a = decoding(batch)
    out_b = raw({**batch, "windows": windows, "duration_s": np.array([t.duration_s for t in tracks]),
                 "error": np.array([None] * len(tracks), dtype=object)})
    assert list(out_a["n_windows"]) == list(out_b["n_windows"]) and set(out_a["dim"]) == {512}
    for a, b in zip(out_a["embedding"], out_b["embedding"]):
        assert np.abs(a - b).max() < 1e-3
    from mgc.models.efficientat import WeightsError

    with pytest.raises(WeightsError, match="not the weights the run started with"):
        Embedder("mn04", weights, "0" * 64, audio.to_dict())
