import numpy as np
import pandas as pd
import soundfile as sf

from coughlab.stages.featurize import featurize

from helpers import conf
from test_audio import tone


def test_windows_over_the_whole_clip_per_split(tmp_path):
    combined = tmp_path / "combined"
    rows = []
    clips = [("train", 1.0), ("train", 5.0), ("valid", 3.0), ("test", 0.5)]
    for i, (split, seconds) in enumerate(clips):
        rel = f"s/{i}.wav"
        (combined / "clips" / "s").mkdir(parents=True, exist_ok=True)
        wave = tone(16000, seconds, 300 + 100 * i)
        if seconds > 3:  # louder and louder, so each window hears its own part
            wave *= np.linspace(0.05, 1.0, wave.size, dtype=np.float32)
        sf.write(combined / "clips" / rel, wave, 16000, subtype="PCM_16")
        rows.append({"path": rel, "label": "positive" if i % 2 else "negative",
                     "subject_id": str(i), "source": "s", "channel": "phone" if i < 2 else "",
                     "split": split})
    pd.DataFrame(rows).to_csv(combined / "manifest.csv", index=False)
    cfg = conf("audio.windows=3").audio
    counts = featurize(combined, tmp_path / "features", cfg)
    assert counts == {"train": 2, "valid": 1, "test": 1}
    with np.load(tmp_path / "features" / "train.npz") as npz:
        assert npz["x"].dtype == np.float32  # float16 would move P(positive) past the parity gate
        assert npz["x"].shape == (2, 3, 1, cfg.n_mels, 188)
        assert list(npz["y"]) == [0, 1] and list(npz["path"]) == ["s/0.wav", "s/1.wav"]
        assert list(npz["channel"]) == ["phone", "phone"]
        assert list(npz["source"]) == ["s", "s"]  # train balances over source x channel x label
        # a 1 s clip in 3 s windows: left-aligned, centred (signal in the middle, silence at
        # both ends: fit_length's window), right-aligned
        loud = npz["x"][0, :, 0].astype(np.float32).max(axis=1) > -5  # [windows, frames]
        assert loud[0, :50].all() and not loud[0, 80:].any()
        assert loud[1, 94] and not loud[1, :20].any() and not loud[1, -20:].any()
        assert loud[2, -50:].all() and not loud[2, :-80].any()
        # a 5 s clip: windows at 0-3 s, 1-4 s, 2-5 s, all of them signal
        assert (npz["x"][1, :, 0].max(axis=1) > -5).all()
        level = npz["x"][1, :, 0].max(axis=1).mean(axis=1)  # [windows]
        assert level[0] + 0.3 < level[1] < level[2] - 0.3
    with np.load(tmp_path / "features" / "valid.npz") as npz:
        assert list(npz["channel"]) == ["s"]  # no channel recorded: the source stands in
    featurize(combined, tmp_path / "again", cfg)
    with (np.load(tmp_path / "features" / "test.npz") as a,
          np.load(tmp_path / "again" / "test.npz") as b):
        assert np.array_equal(a["x"], b["x"])
