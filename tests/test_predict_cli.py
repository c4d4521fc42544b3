"""`mgc predict FILE... --checkpoint DIR`: one's own songs, a table, a plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from mgc.models.checkpoint import CheckpointMeta, save_checkpoint
from mgc.cli import main
from mgc.config import AudioConfig, TaskSpec
from mgc.models.zoo import build_model


def test_predict_prints_top_tags_per_file_and_draws_a_plot(small_demo, tmp_path, capsys):
    genre = tmp_path / "genre"
    mood = tmp_path / "mood"
    save_checkpoint(genre, build_model("cnn", {"genre": 2}),
                    CheckpointMeta("cnn", AudioConfig(), {"genre": TaskSpec("multiclass", ("ambient", "techno"))}))
    save_checkpoint(mood, build_model("cnn", {"mood": 3}),
                    CheckpointMeta("cnn", AudioConfig(), {"mood": TaskSpec("multilabel", ("calm", "dark", "happy"))}))
    song = small_demo.parent / pd.read_csv(small_demo).uri[0]
    plot = tmp_path / "out.png"

    code = main(["predict", str(song), str(tmp_path / "nope.mp3"), "--checkpoint", str(genre),
                 "--checkpoint", str(mood), "--top-k", "2", "--plot", str(plot)])

    out = capsys.readouterr().out
    assert code == 0
    header, first, second = out.splitlines()[:3]
    assert "genre" in header and "mood" in header
    assert first.startswith(song.name) and ("ambient" in first or "techno" in first)
    assert len([w for w in ("calm", "dark", "happy") if w in first]) == 2, "top-2 moods"
    assert second.startswith("nope.mp3") and "error: missing" in second
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_is_installed():
    mgc = Path(sys.executable).parent / "mgc"
    result = subprocess.run([str(mgc), "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--checkpoint" in result.stdout
