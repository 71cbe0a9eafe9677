import numpy as np
import pandas as pd
import soundfile as sf

from coughlab.config import AudioConfig
from coughlab.stages.featurize import featurize

from test_audio import tone


def test_one_fixed_window_per_clip_per_split(tmp_path):
    combined = tmp_path / "combined"
    rows = []
    for i, (split, seconds) in enumerate([("train", 1.0), ("train", 5.0), ("valid", 3.0), ("test", 0.5)]):
        rel = f"s/{i}.wav"
        (combined / "clips" / "s").mkdir(parents=True, exist_ok=True)
        sf.write(combined / "clips" / rel, tone(16000, seconds, 300 + 100 * i), 16000, subtype="PCM_16")
        rows.append({"path": rel, "label": "positive" if i % 2 else "negative", "subject_id": str(i),
                     "source": "s", "channel": "phone" if i < 2 else "", "split": split})
    pd.DataFrame(rows).to_csv(combined / "manifest.csv", index=False)
    cfg = AudioConfig()
    counts = featurize(combined, tmp_path / "features", cfg)
    assert counts == {"train": 2, "valid": 1, "test": 1}
    with np.load(tmp_path / "features" / "train.npz") as npz:
        assert npz["x"].dtype == np.float32  # float16 would move P(positive) past the parity gate
        assert npz["x"].shape == (2, 1, cfg.n_mels, 188)
        assert list(npz["y"]) == [0, 1] and list(npz["path"]) == ["s/0.wav", "s/1.wav"]
        assert list(npz["channel"]) == ["phone", "phone"]
        # a 1 s clip in a 3 s window: silence (log floor) at both ends, signal in the middle
        frames = npz["x"][0, 0].astype(np.float32).max(axis=0)
        assert frames[94] > frames[5] + 5 and frames[94] > frames[-5] + 5
    with np.load(tmp_path / "features" / "valid.npz") as npz:
        assert list(npz["channel"]) == ["s"]  # no channel recorded: the source stands in
    featurize(combined, tmp_path / "again", cfg)
    with np.load(tmp_path / "features" / "test.npz") as a, np.load(tmp_path / "again" / "test.npz") as b:
        assert np.array_equal(a["x"], b["x"])
