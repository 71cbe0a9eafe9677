"""Near-duplicate detection (coughlab.duplicates): how well, and what it costs at 30,000 clips.

On ../shared/realdata/dev (888 real clips, 13 known re-sent pairs in near_duplicates.csv):
- recall and precision of the confirmed pairs against the known list, and every pair found
  that the list lacks, with its xcorr, so a person can judge it;
- the score distribution: the lowest confirmed pair vs the highest non-pair candidate, i.e.
  the margin on either side of XCORR_THRESHOLD;
- cost: fingerprinting per clip and xcorr per candidate pair (both linear in what they touch),
  and the hash join that finds candidates, timed on the dev prints and on 2x, 4x and 8x as
  many (copies of the dev prints, each copy's peaks moved to other frequency bins so they
  collide like new clips and never match their original), then extrapolated to 30,000 clips
  with the exponent fitted to those timings.

Decoding and resampling are combine's work anyway and are not counted. Writes
benchmarks/results/near_duplicates.json. Exits 0 with a message when the data is absent.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from coughlab import duplicates
from coughlab.atomic import atomic_write_text
from coughlab.audio import load_audio, resample, to_mono

from machine import machine_info, repo_relative

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "dev"
RESULTS = REPO / "benchmarks" / "results" / "near_duplicates.json"
TARGET_CLIPS = 30_000


def shifted(print_: duplicates.Fingerprint, copy: int) -> duplicates.Fingerprint:
    """The same landmarks moved `copy` frequency bins up (wrapping): a stand-in for a new clip."""
    f1 = ((print_.hashes >> 15) + copy) % 257
    f2 = (((print_.hashes >> 6) & 0x1FF) + copy) % 257
    dt = print_.hashes & 0x3F
    return duplicates.Fingerprint(((f1 << 15) | (f2 << 6) | dt).astype(np.uint32), print_.times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4, 8])
    args = parser.parse_args(argv)
    if not (REALDATA / "near_duplicates.csv").exists():
        print(f"no real data at {REALDATA}; nothing to benchmark")
        return
    labels = pd.read_csv(REALDATA / "labels.csv")
    waves = []
    for path in labels["path"]:
        wave, sr = load_audio(REALDATA / path)
        waves.append(duplicates.to_rate(resample(to_mono(wave), sr, 16000), 16000))
    seconds = float(sum(w.size for w in waves) / duplicates.RATE)

    start = time.perf_counter()
    prints = [duplicates.fingerprint(w) for w in waves]
    fingerprint_s = time.perf_counter() - start
    candidates = duplicates.candidate_pairs(prints)
    start = time.perf_counter()
    scores = {pair: duplicates.max_norm_xcorr(waves[pair[0]], waves[pair[1]])
              for pair in candidates}
    xcorr_s = time.perf_counter() - start

    index = {p: k for k, p in enumerate(labels["path"])}
    known_list = pd.read_csv(REALDATA / "near_duplicates.csv")
    known = {tuple(sorted((index[a], index[b]))) for a, b in zip(known_list["path_a"],
                                                                  known_list["path_b"])}
    found = {pair for pair, score in scores.items() if score >= duplicates.XCORR_THRESHOLD}
    rows = labels.to_dict("records")
    extra = [{"path_a": rows[i]["path"], "path_b": rows[j]["path"],
              "xcorr": round(scores[(i, j)], 4),
              "matches": candidates[(i, j)], "labels": [rows[i]["label"], rows[j]["label"]],
              "channels": [rows[i]["channel"], rows[j]["channel"]]}
             for i, j in sorted(found - known)]
    non_pairs = [s for pair, s in scores.items() if pair not in found]

    joins = []
    for scale in args.scales:
        scaled = [shifted(p, copy) for copy in range(scale) for p in prints]
        start = time.perf_counter()
        n_candidates = len(duplicates.candidate_pairs(scaled))
        joins.append({"clips": len(scaled), "seconds": time.perf_counter() - start,
                      "candidates": n_candidates})
    sizes = np.log([j["clips"] for j in joins])
    times = np.log([j["seconds"] for j in joins])
    exponent = float(np.polyfit(sizes, times, 1)[0]) if len(joins) > 1 else 1.0
    largest = joins[-1]
    join_30k = largest["seconds"] * (TARGET_CLIPS / largest["clips"]) ** exponent
    per_clip_ms = 1000 * fingerprint_s / len(waves)
    per_pair_ms = 1000 * xcorr_s / max(len(candidates), 1)
    candidates_per_clip = largest["candidates"] / largest["clips"]
    result = {
        "benchmark": "near_duplicates", "dataset": repo_relative(REALDATA), "clips": len(waves),
        "audio_seconds": round(seconds, 1),
        "thresholds": {"min_matches": duplicates.MIN_MATCHES, "max_bucket": duplicates.MAX_BUCKET,
                       "xcorr": duplicates.XCORR_THRESHOLD},
        "known_pairs": len(known), "found_pairs": len(found),
        "recall": len(found & known) / len(known),
        "precision_vs_known_list": len(found & known) / max(len(found), 1),
        "pairs_not_in_known_list": extra,
        "lowest_confirmed_xcorr": round(min(scores[p] for p in found), 4) if found else None,
        "highest_rejected_xcorr": round(max(non_pairs), 4) if non_pairs else None,
        "candidates": len(candidates),
        "cost": {"fingerprint_ms_per_clip": round(per_clip_ms, 2),
                 "xcorr_ms_per_candidate": round(per_pair_ms, 2),
                 "hash_join": [{**j, "seconds": round(j["seconds"], 2)} for j in joins],
                 "hash_join_exponent": round(exponent, 2)},
        "extrapolated_30000_clips": {
            "fingerprints_s": round(TARGET_CLIPS * per_clip_ms / 1000, 1),
            "hash_join_s": round(join_30k, 1),
            "candidates": int(round(candidates_per_clip * TARGET_CLIPS)),
            "xcorr_s": round(candidates_per_clip * TARGET_CLIPS * per_pair_ms / 1000, 1),
            "assumes": "clip lengths and hash statistics like the dev set's (median ~2 s); the "
                       "join's growth fitted on 1-8x the dev prints; xcorr cost per candidate "
                       "as measured on the dev candidates"},
        "machine": machine_info(),
    }
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("recall", "precision_vs_known_list", "found_pairs",
                                              "lowest_confirmed_xcorr", "highest_rejected_xcorr",
                                              "cost", "extrapolated_30000_clips")}, indent=2))


if __name__ == "__main__":
    main()
