"""Near-duplicate recordings: the same audio under two ids, re-trimmed, re-encoded or rescaled.

Two steps, so the cost stays near-linear in the number of clips:

1. **Candidates by landmark hashing** (Wang 2003, the "Shazam" fingerprint). Each clip, at
   8 kHz, becomes a set of hashes `(f1, f2, dt)`: pairs of spectral peaks in its log
   spectrogram. Peaks survive gain changes and lossy re-encoding, and a hash says nothing about
   where in the clip it sits, so trimming only shifts every match by one time offset. Two
   clips are candidates when at least `MIN_MATCHES` of their hashes agree at one offset.
   Hashes that occur in very many clips (stationary hum, codec artefacts) are skipped: they
   would make the pairing quadratic and say nothing about identity.
2. **Confirmation by normalised cross-correlation** of the 8 kHz waveforms: the largest
   |xcorr| over all lags divided by the two clips' norms. 1.0 means one clip is a scaled copy of
   the other; re-encoding and trimming off quiet ends keep it near 1; two different coughs of
   one person or one phone line stay far below (they do not line up sample for sample).
   Pairs at or above `XCORR_THRESHOLD` are near-duplicates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

from coughlab.audio import resample

RATE = 8000
N_FFT = 512          # 64 ms frames
HOP = 128            # 16 ms
PEAK_NEIGHBOURHOOD = (15, 9)   # frequency bins x frames a peak must dominate
PEAKS_PER_SECOND = 30
FAN_OUT = 5          # targets paired with each anchor peak
MAX_DT = 40          # frames (0.64 s) from anchor to target
MAX_DF = 64          # bins (1 kHz)
MIN_MATCHES = 6      # hashes agreeing at one time offset (+-1 frame) to make a candidate
MAX_BUCKET = 100     # a hash seen in more clips than this is skipped as uninformative
XCORR_THRESHOLD = 0.70


@dataclass(frozen=True)
class Fingerprint:
    hashes: np.ndarray   # uint32 [n]
    times: np.ndarray    # int32 [n], the anchor's frame


def to_rate(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The clip at 8 kHz with unit norm, so gain never matters."""
    x = resample(np.asarray(wave, np.float32), sample_rate, RATE).astype(np.float64)
    x -= x.mean()
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def fingerprint(wave8k: np.ndarray) -> Fingerprint:
    """Landmark hashes of one 8 kHz clip."""
    if wave8k.size < N_FFT:
        wave8k = np.pad(wave8k, (0, N_FFT - wave8k.size))
    frames = np.lib.stride_tricks.sliding_window_view(wave8k, N_FFT)[::HOP]
    spec = np.log(np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)).T + 1e-9)  # [freq, time]
    is_peak = (spec == maximum_filter(spec, size=PEAK_NEIGHBOURHOOD, mode="constant",
                                      cval=-np.inf)) & (spec > np.median(spec) + 3.0)
    f, t = np.nonzero(is_peak)
    keep = max(1, int(PEAKS_PER_SECOND * wave8k.size / RATE))
    if f.size > keep:
        strongest = np.argsort(-spec[f, t], kind="stable")[:keep]
        f, t = f[strongest], t[strongest]
    order = np.lexsort((f, t))
    f, t = f[order], t[order]
    hashes, times = [], []
    for i in range(f.size):
        targets = 0
        for j in range(i + 1, f.size):
            dt = t[j] - t[i]
            if dt > MAX_DT:
                break
            if dt == 0 or abs(int(f[j]) - int(f[i])) > MAX_DF:
                continue
            hashes.append((int(f[i]) << 15) | (int(f[j]) << 6) | int(dt))
            times.append(int(t[i]))
            targets += 1
            if targets == FAN_OUT:
                break
    return Fingerprint(np.array(hashes, np.uint32), np.array(times, np.int32))


def candidate_pairs(prints: Sequence[Fingerprint]) -> dict[tuple[int, int], int]:
    """`(i, j) -> matches` for clip pairs, i < j, sharing >= MIN_MATCHES hashes at one offset."""
    clip = np.concatenate([np.full(p.hashes.size, k, np.int64) for k, p in enumerate(prints)]
                          or [np.zeros(0, np.int64)])
    hashes = np.concatenate([p.hashes for p in prints] or [np.zeros(0, np.uint32)])
    times = np.concatenate([p.times for p in prints] or [np.zeros(0, np.int32)])
    # One entry per (hash, clip, time); buckets = runs of one hash.
    order = np.lexsort((times, clip, hashes))
    hashes, clip, times = hashes[order], clip[order], times[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    ends = np.r_[starts[1:], hashes.size]
    a_parts, b_parts, off_parts = [], [], []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        members = clip[s:e]
        if np.unique(members).size > MAX_BUCKET:
            continue
        i, j = np.triu_indices(e - s, k=1)
        other = members[i] != members[j]
        a_parts.append(members[i][other])
        b_parts.append(members[j][other])
        off_parts.append((times[s:e][j] - times[s:e][i])[other])
    if not a_parts:
        return {}
    a, b, off = np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(off_parts)
    swap = a > b  # members are sorted by clip within a bucket, but keep it explicit
    a, b, off = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, -off, off)
    keys, counts = np.unique(np.stack([a, b, off]), axis=1, return_counts=True)
    found: dict[tuple[int, int], int] = {}
    # Matches at offsets o-1, o, o+1 count together: trimming shifts by a fraction of a hop.
    index = {tuple(k): c for k, c in zip(keys.T.tolist(), counts.tolist())}
    for (i, j, o), c in index.items():
        total = c + index.get((i, j, o - 1), 0) + index.get((i, j, o + 1), 0)
        if total >= MIN_MATCHES and total > found.get((i, j), 0):
            found[(i, j)] = total
    return found


def max_norm_xcorr(a: np.ndarray, b: np.ndarray) -> float:
    """max over lags of |sum a[t] b[t + lag]| / (|a| |b|), by FFT."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    n = a.size + b.size - 1
    size = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    return float(np.abs(c).max() / (na * nb))


@dataclass(frozen=True)
class Pair:
    i: int
    j: int
    matches: int
    xcorr: float


def find_near_duplicates(n: int, wave8k: Callable[[int], np.ndarray],
                         prints: Sequence[Fingerprint] | None = None,
                         progress: Callable = lambda it, **_: it) -> list[Pair]:
    """Confirmed near-duplicate pairs among `n` clips; `wave8k(k)` gives clip k from to_rate."""
    if prints is None:
        prints = [fingerprint(wave8k(k)) for k in progress(range(n), desc="fingerprint")]
    pairs = []
    for (i, j), matches in progress(sorted(candidate_pairs(prints).items()), desc="confirm"):
        score = max_norm_xcorr(wave8k(i), wave8k(j))
        if score >= XCORR_THRESHOLD:
            pairs.append(Pair(i, j, matches, round(score, 4)))
    return pairs


def clip_groups(n: int, pairs: Sequence[Pair]) -> list[int]:
    """Each clip's group: the lowest clip number it is linked to through `pairs`."""
    parent = list(range(n))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for pair in pairs:
        a, b = sorted((root(pair.i), root(pair.j)))
        parent[b] = a
    return [root(k) for k in range(n)]
