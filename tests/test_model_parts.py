"""Models, checkpoints, metrics and targets: the pieces a training run is made of."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mgc.cli import dataclass_from_args, train_parser
from mgc.config import AudioConfig, TaskSpec, TrainConfig
from mgc.datasets.splits import assign_splits
from mgc.evaluation.metrics import task_metrics, tune_thresholds
from mgc.io.validate import validate_manifest
from mgc.labels import encode_targets, resolve_tasks
from mgc.models.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, model_id, save_checkpoint
from mgc.models.inference import predict_tracks
from mgc.models.zoo import ARCHITECTURES, build_model

AUDIO = AudioConfig()
TASKS = {"genre": TaskSpec("multiclass", ("jazz", "rock", "pop")), "mood": TaskSpec("multilabel", ("happy", "sad"))}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_arch_trains_one_step_and_predicts_on_tiny_input(arch):
    torch.manual_seed(0)
    model = build_model(arch, {"genre": 3, "mood": 2})
    mels = torch.randn(4, 24, 20)  # far smaller than any ImageNet input: upsampled as the arch needs
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(mels)
    (out["genre"].logsumexp(1).mean() + out["mood"].mean()).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    probs = predict_tracks(model.eval(), [mels[:2].numpy(), mels[2:].numpy()], {"genre": "multiclass", "mood": "multilabel"})
    assert probs["genre"].shape == (2, 3) and np.allclose(probs["genre"].sum(1), 1, atol=1e-5)
    assert probs["mood"].shape == (2, 2)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_pretrained_weights_from_a_local_file_fold_the_rgb_stem(arch, tmp_path):
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.get_model(arch, weights=None)
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    model = build_model(arch, {"genre": 4}, weights_file=tmp_path / "weights.pt")
    state = reference.state_dict()
    stem_name = next(n for n, m in reference.named_modules() if isinstance(m, torch.nn.Conv2d))
    stem = model.backbone.get_submodule(stem_name)
    assert stem.in_channels == 1
    torch.testing.assert_close(stem.weight, state[f"{stem_name}.weight"].sum(dim=1, keepdim=True))
    deep = [k for k in state if k.endswith("weight") and state[k].dim() == 4][5]
    torch.testing.assert_close(model.backbone.state_dict()[deep], state[deep])
    untouched = build_model(arch, {"genre": 4})
    assert not torch.equal(untouched.backbone.state_dict()[deep], state[deep])


def test_mean_and_vote_aggregation_differ_where_they_should():
    from mgc.models.inference import aggregate_mean, aggregate_vote

    windows = [np.array([[0.95, 0.05], [0.45, 0.55], [0.45, 0.55]])]  # one confident window, two lukewarm
    assert aggregate_mean(windows).argmax() == 0
    assert aggregate_vote(windows, "multiclass").argmax() == 1
    np.testing.assert_allclose(aggregate_vote(windows, "multiclass"), [[1 / 3, 2 / 3]])
    np.testing.assert_allclose(aggregate_vote(windows, "multilabel"), [[1 / 3, 2 / 3]])


def test_augmentations_change_what_they_should():
    from mgc.audio.augment import mixup, random_gain, spec_augment
    from mgc.config import AugmentConfig

    generator = torch.Generator().manual_seed(0)
    mels = torch.randn(8, 64, 50) * 10 - 40
    masked = spec_augment(mels, AugmentConfig(spec_augment=True, freq_mask_width=10, time_mask_width=10), generator)
    changed = masked != mels
    assert changed.any() and changed.float().mean() < 0.6
    floor = mels.amin(dim=(1, 2), keepdim=True).expand_as(mels)
    assert torch.equal(masked[changed], floor[changed]), "masks read as the window's floor"
    shifted = random_gain(mels, 6.0, generator) - mels
    assert torch.allclose(shifted, shifted[:, :1, :1].expand_as(shifted)) and shifted.abs().max() <= 6.0
    targets = {"genre": torch.eye(2)[[0, 1] * 4]}
    masks = {"genre": torch.tensor([1.0] * 7 + [0.0])}
    mixed, soft, mixed_masks = mixup(mels, targets, masks, 0.4, generator)
    assert torch.allclose(soft["genre"].sum(1), torch.ones(8))
    assert mixed_masks["genre"].sum() <= masks["genre"].sum()


def test_frozen_backbone_gets_no_learning_rate_for_its_epochs():
    from mgc.training.worker import lr_factors

    backbone, heads = lr_factors(epochs=4, freeze_backbone_epochs=2)
    assert [backbone(e) for e in range(4)] == [0.0, 0.0, heads(2), heads(3)]
    assert heads(0) == 1.0 and heads(2) == pytest.approx(0.5)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "efficientnet_b0", "densenet121", "cnn"])
def test_per_layer_learning_rates_ramp_from_the_stem_to_the_top_and_cover_every_parameter(arch):
    from mgc.training.worker import optimizer_groups

    model = build_model(arch, {"genre": 3, "mood": 2})
    groups = optimizer_groups(model, lr=1e-3, backbone_lr_scale=0.5, layer_lr_decay=0.1)
    backbone, heads = groups[:-1], groups[-1]
    assert len(backbone) >= 5, "one group per backbone layer"
    lrs = [g["lr"] for g in backbone]
    assert lrs[0] == pytest.approx(0.1 * 0.5e-3) and lrs[-1] == pytest.approx(0.5e-3)
    assert all(a < b for a, b in zip(lrs, lrs[1:])), "rises from the input side to the output side"
    assert heads["lr"] == 1e-3 and any(p is model.heads["genre"].weight for p in heads["params"])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) == {id(p) for p in model.parameters()}
    stem = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert any(p is stem.weight for p in backbone[0]["params"]), "the stem is the first layer"
    flat = optimizer_groups(model, lr=1e-3, backbone_lr_scale=0.5)
    assert [g["lr"] for g in flat] == [0.5e-3, 1e-3], "decay 1: one backbone group, as before"


def test_precise_batchnorm_makes_eval_mode_match_what_was_trained():
    from mgc.training.worker import recalibrate_batchnorm

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", {"genre": 4})  # BatchNorm momentum 0.01, as torchvision builds it
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = [torch.randn(16, 128, 130) * 15 - 40 for _ in range(4)]  # 3 s log-mel windows, dB-like values
    targets = torch.randint(0, 4, (16,))
    for x in batches * 3:  # a few steps, like an epoch of a small data set
        loss = torch.nn.functional.cross_entropy(model(x)["genre"], targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def eval_vs_batch_statistics(x: torch.Tensor) -> float:
        with torch.no_grad():
            model.eval()
            evaluated = model(x)["genre"]
            model.train()
            for module in model.modules():  # the backbone's own classifier MLP has dropout too
                if isinstance(module, torch.nn.Dropout):
                    module.eval()
            trained = model(x)["genre"]  # normalised by this batch's own statistics
        return float((evaluated - trained).abs().max())

    whole = torch.cat(batches)
    before = eval_vs_batch_statistics(whole)
    assert recalibrate_batchnorm(model, [whole]) is True
    after = eval_vs_batch_statistics(whole)
    # What is left is eval mode's unbiased variance over few positions in the deepest layers.
    assert after < 0.02 * before, (before, after)
    assert model.norm.running_mean.item() == pytest.approx(float(whole.mean()), abs=1e-3)
    assert not recalibrate_batchnorm(model, []), "nothing to calibrate on: nothing done"


def test_unknown_arch_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("vgg99", {"genre": 2})


def test_checkpoint_round_trip_predicts_identically(tmp_path):
    model = build_model("cnn", {"genre": 3, "mood": 2}).eval()
    meta = CheckpointMeta(arch="cnn", audio=AUDIO, tasks=TASKS, name="cnn")
    save_checkpoint(tmp_path / "ckpt", model, meta)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.meta == meta
    assert loaded.model_id == model_id(tmp_path / "ckpt") and loaded.model_id.startswith("cnn-")
    mels = [np.random.default_rng(0).normal(size=(3, AUDIO.n_mels, AUDIO.frames_per_window)).astype(np.float32)]
    types = {t: s.type for t, s in TASKS.items()}
    a, b = predict_tracks(model, mels, types), predict_tracks(loaded.model, mels, types)
    np.testing.assert_allclose(a["genre"], b["genre"], rtol=1e-5)
    assert np.isclose(a["genre"].sum(), 1.0) and a["mood"].shape == (1, 2)


def test_checkpoint_carrying_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    directory = tmp_path / "evil"
    save_checkpoint(directory, build_model("cnn", {"genre": 3}), CheckpointMeta("cnn", AUDIO, {"genre": TASKS["genre"]}))
    torch.save({"weights": Payload()}, directory / "model.pt")
    with pytest.raises(CheckpointError, match="not a plain state_dict"):
        load_checkpoint(directory)


def test_multiclass_metrics_and_confusion_matrix():
    truth = np.eye(3)[[0, 1, 2, 2]]
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    result = task_metrics(truth, probs, "multiclass", ["a", "b", "c"], top_k=2)
    assert result["accuracy"] == 0.75
    assert result["top_k_accuracy"] == 0.75  # the last track's truth is third
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_thresholds_tuned_on_validation_raise_f1_over_one_half():
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 2)) < 0.3).astype(np.float32)
    probs = np.clip(0.1 + 0.2 * truth + 0.03 * rng.normal(size=truth.shape), 0, 0.45)  # well ranked, all below 0.5
    default = task_metrics(truth, probs, "multilabel", ["x", "y"])["f1_macro"]
    tuned = task_metrics(truth, probs, "multilabel", ["x", "y"], thresholds=tune_thresholds(truth, probs))["f1_macro"]
    assert default == 0.0 and tuned > 0.95


def manifest(n_artists=12, per_artist=3):
    rows = [{"track_id": f"t{a}-{i}", "uri": f"/x/{a}-{i}.wav", "artist_id": f"a{a}",
             "genres": ["rock" if a % 2 else "jazz"], "moods": ["happy"] if i % 2 else []}
            for a in range(n_artists) for i in range(per_artist)]
    return validate_manifest(pd.DataFrame(rows))


def test_tasks_are_inferred_and_unlabeled_tracks_are_masked():
    df = manifest()
    specs = resolve_tasks(df)
    assert specs["genre"] == TaskSpec("multiclass", ("jazz", "rock"))
    assert specs["mood"] == TaskSpec("multiclass", ("happy",))
    encoded = encode_targets(df, specs)
    assert encoded["mask_mood"].tolist() == [0.0, 1.0, 0.0] * 12
    assert encoded["target_genre"][0].tolist() == [1.0, 0.0]
    assert resolve_tasks(df, forced_types={"mood": "multilabel"})["mood"].type == "multilabel"


def test_splits_keep_each_artist_on_one_side():
    split = assign_splits(manifest(), (0.6, 0.2, 0.2), seed=1)
    assert set(split.split) == {"train", "validation", "test"}
    assert split.groupby("artist_id")["split"].nunique().max() == 1


def test_flags_become_config_and_nested_audio_config():
    args = train_parser().parse_args(["--epochs", "3", "--use-gpu", "--n-mels", "64", "--tasks", "genre",
                                      "--task-types", "mood=multilabel", "--max-windows", "8"])
    cfg = dataclass_from_args(TrainConfig, args)
    assert cfg.epochs == 3 and cfg.use_gpu is True and cfg.tasks == ("genre",)
    assert cfg.task_types == {"mood": "multilabel"}
    assert cfg.audio.n_mels == 64 and cfg.audio.max_windows == 8 and cfg.audio.sample_rate == 22050
    assert dataclass_from_args(TrainConfig, train_parser().parse_args([]), TrainConfig(epochs=20)).epochs == 20
