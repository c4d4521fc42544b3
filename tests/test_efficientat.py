"""EfficientAT's AudioSet MobileNetV3 in torchvision: weights, reference outputs, front end.

``tests/data/efficientat_mn04_reference.npz`` was computed once, off-project, by
EfficientAT's own code at commit a425fdc (``models/preprocess.py``'s ``AugmentMelSTFT``
in eval mode with torchaudio 2.9.1's ``compliance.kaldi``, and ``models/mn/model.py``'s
``get_model(width_mult=0.4)`` loaded with ``mn04_as_mAP_432.pt``) on :func:`signal`:

- ``mel`` [128, 300]: their front end of the 3 s signal;
- ``mel_banks`` [128, 512]: torchaudio's Kaldi mel bank (their fmax 15,000 Hz);
- ``logits`` [527], ``embedding`` [384]: their net on ``mel``.

Tolerances. Front end: 5e-4 (normalised log units; the values span about -1.4..2.5). mgc
computes the STFT in float32 with another FFT (scipy / torch) and its own Kaldi bank in
float64; measured 6.8e-5 worst for both paths. A real mistake is far larger: a periodic
instead of symmetric Hann window moves bins by ~2e-3, zero instead of reflect padding
moves the edge frames by ~0.1, a Slaney bank by ~1. Net: 1e-4 in logits (measured 0.0;
oneDNN or another BLAS may round differently); a hard-sigmoid SE gate moves logits by ~1.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED

from mgc.audio.efficientat_frontend import EfficientATLogMel, kaldi_mel_banks
from mgc.audio.logmel import log_mel, torch_frontend
from mgc.audio.track import load_track
from mgc.config import ARCH_AUDIO, EFFICIENTAT_AUDIO, AudioConfig, FrontendError, TagConfig, TaskSpec, TrainConfig
from mgc.models import efficientat
from mgc.models.checkpoint import CheckpointError, CheckpointMeta, read_meta, save_checkpoint
from mgc.models.efficientat import MUSIC_CLASS, WeightsError, audioset_tagger, build_mobilenet, load_weights
from mgc.models.zoo import ARCHITECTURES, build_model
from mgc.tagging.job import run_tagging

WEIGHTS = SHARED / "models" / "efficientat" / "mn04_as_mAP_432.pt"
REFERENCE = Path(__file__).parent / "data" / "efficientat_mn04_reference.npz"
FRONTEND_TOL = 5e-4
LOGIT_TOL = 1e-4
CFG3 = dataclasses.replace(EFFICIENTAT_AUDIO, window_s=3.0)


def signal(seconds: float = 3.0, sr: int = 32000, seed: int = 1234) -> np.ndarray:
    """A tone, a chirp and noise: the input the reference was computed on."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * (300 + 900 * t) * t) \
        + 0.05 * rng.standard_normal(len(t))
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def weights() -> Path:
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is not present")
    return WEIGHTS


def test_every_efficientat_arch_is_registered_with_its_front_end():
    assert set(efficientat.WIDTHS) == set(ARCH_AUDIO) == set(efficientat.AUDIOSET_FILES)
    assert set(efficientat.WIDTHS) <= set(ARCHITECTURES)
    assert TrainConfig(arch="mn10").audio.frontend == "efficientat"
    assert TrainConfig(arch="mn10", audio=AudioConfig(window_s=10.0)).audio == \
        dataclasses.replace(EFFICIENTAT_AUDIO, window_s=10.0)


def test_weights_load_strictly_every_key_used(weights):
    state = efficientat.remap_state_dict(efficientat.read_state_dict(weights))
    net = build_mobilenet("mn04")
    assert set(state) == set(net.state_dict())
    assert all(state[k].shape == v.shape for k, v in net.state_dict().items())
    load_weights(net, weights, "mn04")
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    # The tagger's backbone carries them too (its AudioSet output layer replaced by the heads).
    model = build_model("mn04", {"genre": 10}, weights_file=str(weights))
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.backbone.classifier[0].weight, state["classifier.0.weight"])
    assert isinstance(model.norm, torch.nn.Identity)  # the pretrained net sees its input unchanged


def test_remapped_net_reproduces_efficientat_reference_outputs(weights, reference):
    net = audioset_tagger("mn04", weights_file=str(weights))
    x = torch.from_numpy(reference["mel"])[None, None]
    with torch.no_grad():
        logits = net(x)[0].numpy()
        pooled = net.avgpool(net.features(x)).flatten(1)[0].numpy()
    assert np.abs(logits - reference["logits"]).max() <= LOGIT_TOL
    assert np.abs(pooled - reference["embedding"]).max() <= LOGIT_TOL


def test_front_end_matches_efficientat_reference(reference):
    banks = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert banks.shape == (128, 513) and not banks[:, -1].any() and not banks.flags.writeable
    assert np.abs(banks[:, :512] - reference["mel_banks"]).max() <= 5e-5
    y = signal()
    assert CFG3.frames_per_window == reference["mel"].shape[1] == 300
    numpy_mel = log_mel(y[None], CFG3)[0]
    torch_mel = torch_frontend(CFG3)(torch.from_numpy(y)[None])[0].numpy()
    assert isinstance(torch_frontend(CFG3), EfficientATLogMel)
    assert np.abs(numpy_mel - reference["mel"]).max() <= FRONTEND_TOL
    assert np.abs(torch_mel - reference["mel"]).max() <= FRONTEND_TOL
    # Batched and nested inputs give each window's own planes.
    two = log_mel(np.stack([y, 0.5 * y]), CFG3)
    assert np.abs(two[0] - numpy_mel).max() == 0.0 and two.shape == (2, 128, 300)


def test_audioset_head_hears_music_in_gtzan(weights, gtzan_mini):
    """Through mgc's own decoder and front end (10 s windows, their training length)."""
    cfg = dataclasses.replace(EFFICIENTAT_AUDIO, window_s=10.0)
    net = audioset_tagger("mn04", weights_file=str(weights))
    clips = [sorted((gtzan_mini / g).glob("*.wav"))[0] for g in ("blues", "classical", "country", "metal", "pop")]
    probs = []
    for clip in clips:
        mels = torch.from_numpy(log_mel(load_track(str(clip), cfg).windows, cfg))[:, None]
        with torch.no_grad():
            probs.append(torch.sigmoid(net(mels)).mean(0).numpy())
    ranks = [int(np.argsort(-p).tolist().index(MUSIC_CLASS)) for p in probs]
    assert int(np.argmax(np.mean(probs, axis=0))) == MUSIC_CLASS
    assert max(ranks) <= 2, ranks


def test_bad_weights_files_get_clear_errors(weights, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("mn04", {"genre": 2}, weights_file=str(tmp_path / "nope.pt"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"truncated\.pt is truncated or not a PyTorch file"):
        build_model("mn04", {"genre": 2}, weights_file=str(truncated))
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    with pytest.raises(WeightsError, match="truncated or not a PyTorch file"):
        build_model("mn04", {"genre": 2}, weights_file=str(text))
    foreign = tmp_path / "resnet18.pt"
    torch.save(ARCHITECTURES["resnet18"]().module.state_dict(), foreign)
    with pytest.raises(WeightsError, match=r"resnet18\.pt is not EfficientAT mn04 AudioSet weights .*missing"):
        build_model("mn04", {"genre": 2}, weights_file=str(foreign))
    with pytest.raises(WeightsError, match=r"not EfficientAT mn10 .*shape mismatch.*its stem matches mn04"):
        build_model("mn10", {"genre": 2}, weights_file=str(weights))
    pickled = tmp_path / "pickled.pt"
    torch.save({"features.0.0.weight": torch.zeros(1), "note": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(WeightsError, match="refusing weights file .*pickled"):
        build_model("mn04", {"genre": 2}, weights_file=str(pickled))


def test_pretrained_audioset_caches_and_checks_sha256(weights, tmp_path, monkeypatch):
    """The download path, run against a file:// release (tests never reach the network)."""
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(weights, release / "mn04_as_mAP_432.pt")
    shutil.copy(weights, release / "mn10_as_mAP_471.pt")  # an asset without a pinned digest
    monkeypatch.setattr(efficientat, "RELEASE_URL", release.as_uri() + "/")
    cache = tmp_path / "cache"
    path = efficientat.audioset_weights("mn04", cache)
    assert path == cache / "mn04_as_mAP_432.pt" and path.read_bytes() == weights.read_bytes()
    (release / "mn04_as_mAP_432.pt").unlink()
    assert efficientat.audioset_weights("mn04", cache) == path  # from the cache, no download
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsError, match="has SHA-256 .* expected 899a8c62"):
        efficientat.audioset_weights("mn04", cache)
    # Unpinned: the first download's digest is recorded and held against later uses.
    unpinned = efficientat.audioset_weights("mn10", cache)
    assert (cache / "mn10_as_mAP_471.pt.sha256").read_text().strip() == efficientat.sha256_of(unpinned)
    unpinned.write_bytes(b"x" + unpinned.read_bytes()[1:])
    with pytest.raises(WeightsError, match="altered download"):
        efficientat.audioset_weights("mn10", cache)
    monkeypatch.setattr(efficientat, "RELEASE_URL", (tmp_path / "offline").as_uri() + "/")
    with pytest.raises(WeightsError, match="could not download .*--weights-file"):
        efficientat.audioset_weights("mn20", cache)
    assert not list(cache.glob(".*part"))


def test_pretrained_backbone_refuses_another_front_end():
    with pytest.raises(FrontendError, match="pretrained mn04 needs its own front end .*sample_rate=32000"):
        TrainConfig(arch="mn04", weights_file="w.pt", audio=AudioConfig(sample_rate=16000))
    with pytest.raises(FrontendError, match=r"\(n_mels=128\), not n_mels=64"):
        TrainConfig(arch="mn04", pretrained="audioset", audio=AudioConfig(n_mels=64))
    with pytest.raises(ValueError, match="--probe trains only the heads"):
        TrainConfig(arch="mn04", probe=True)
    # From scratch, an EfficientAT net may take any front end the user sets.
    assert TrainConfig(arch="mn04", audio=AudioConfig(n_mels=64)).audio.n_mels == 64


def test_checkpoint_with_a_front_end_this_mgc_cannot_compute_is_refused(tmp_path):
    directory = tmp_path / "ckpt"
    meta = CheckpointMeta("cnn", CFG3, {"genre": TaskSpec("multiclass", ("a", "b"))})
    save_checkpoint(directory, build_model("cnn", {"genre": 2}), meta)
    assert read_meta(directory).audio == CFG3  # the front end round-trips through mgc.json
    text = (directory / "mgc.json").read_text()
    (directory / "mgc.json").write_text(text.replace('"frontend": "efficientat"', '"frontend": "essentia"'))
    with pytest.raises(CheckpointError, match="'essentia' is not one this mgc can compute"):
        read_meta(directory)
    # Tagging refuses it before any track is read (no Ray needed to get this far).
    with pytest.raises(CheckpointError, match="'essentia' is not one this mgc can compute"):
        run_tagging(TagConfig(manifest=str(tmp_path / "absent.csv"), checkpoint=(str(directory),),
                              output=str(tmp_path / "tags")))
    assert not (tmp_path / "tags").exists()
    (directory / "mgc.json").write_text(text.replace('"fmin": 0.0', '"fmin": 0.0, "mel_norm": "slaney"'))
    with pytest.raises(CheckpointError, match=r"settings \['mel_norm'\] are unknown"):
        read_meta(directory)


def test_old_checkpoint_audio_without_frontend_is_librosa_db():
    old = {k: v for k, v in AudioConfig().to_dict().items() if k not in ("frontend", "win_length")}
    assert AudioConfig.from_dict(old, strict=True) == AudioConfig()
