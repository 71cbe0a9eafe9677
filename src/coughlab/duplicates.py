"""Near-duplicate recordings: the same audio under two ids, re-trimmed, re-encoded or rescaled.

Two steps, so the cost stays near-linear in the number of clips:

1. **Candidates by landmark hashing** (Wang 2003, the "Shazam" fingerprint). Each clip, at
   8 kHz, becomes a set of hashes `(f1, f2, dt)`: pairs of spectral peaks in its log
   spectrogram. Peaks survive gain changes and lossy re-encoding, and a hash says nothing about
   where in the clip it sits, so trimming only shifts every match by one time offset. Two
   clips are candidates when at least `MIN_MATCHES` of their hashes agree at one offset.
   Hashes that occur very often (stationary hum, codec artefacts) are skipped: they
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
MAX_BUCKET = 100     # a hash seen more often than this is skipped as uninformative
LOOKAHEAD = 32       # peaks after an anchor considered as its targets
CLIP_BITS = 21       # up to 2 million clips
OFFSET_BITS = 21     # time offsets up to +-1 million frames (4.6 hours)
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
    f, t = f[order].astype(np.int64), t[order].astype(np.int64)
    # Anchor i pairs with the first FAN_OUT peaks after it within MAX_DT frames and MAX_DF bins.
    ahead = np.arange(1, LOOKAHEAD + 1)
    j = np.arange(f.size)[:, None] + ahead[None, :]
    inside = j < f.size
    j = np.where(inside, j, 0)
    dt, df = t[j] - t[:, None], np.abs(f[j] - f[:, None])
    ok = inside & (dt > 0) & (dt <= MAX_DT) & (df <= MAX_DF)
    ok &= np.cumsum(ok, axis=1) <= FAN_OUT
    anchor, target = np.nonzero(ok)
    hashes = (f[anchor] << 15) | (f[j[anchor, target]] << 6) | dt[anchor, target]
    return Fingerprint(hashes.astype(np.uint32), t[anchor].astype(np.int32))


def candidate_pairs(prints: Sequence[Fingerprint]) -> dict[tuple[int, int], int]:
    """`(i, j) -> matches` for clip pairs, i < j, sharing >= MIN_MATCHES hashes at one offset.

    A hash join, vectorised by bucket size: every pair of entries of one hash, from two clips,
    votes for (clip, other clip, time offset); offsets o-1, o, o+1 count together, since
    trimming shifts a copy by a fraction of a hop.
    """
    clip = np.concatenate([np.full(p.hashes.size, k, np.int64) for k, p in enumerate(prints)]
                          + [np.zeros(0, np.int64)])
    hashes = np.concatenate([p.hashes for p in prints] + [np.zeros(0, np.uint32)])
    times = np.concatenate([p.times for p in prints] + [np.zeros(0, np.int32)]).astype(np.int64)
    order = np.lexsort((times, clip, hashes))
    hashes, clip, times = hashes[order], clip[order], times[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    sizes = np.diff(np.r_[starts, hashes.size])
    keys = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= MAX_BUCKET)]):
        first = starts[sizes == size]
        i, j = np.triu_indices(int(size), k=1)
        a, b = (first[:, None] + i).ravel(), (first[:, None] + j).ravel()
        other = clip[a] != clip[b]
        a, b = a[other], b[other]
        # Entries are sorted by clip within a bucket, so clip[a] < clip[b].
        keys.append(pair_key(clip[a], clip[b], times[b] - times[a]))
    if not keys:
        return {}
    votes, counts = np.unique(np.concatenate(keys), return_counts=True)
    total = counts.copy()
    for step in (-1, 1):
        at = np.searchsorted(votes, votes + step)
        hit = (at < votes.size) & (votes[np.minimum(at, votes.size - 1)] == votes + step)
        total[hit] += counts[at[hit]]
    strong = total >= MIN_MATCHES
    pairs, best = votes[strong] >> OFFSET_BITS, total[strong]
    found: dict[tuple[int, int], int] = {}
    for pair, matches in zip(pairs.tolist(), best.tolist()):
        key = (pair >> CLIP_BITS, pair & ((1 << CLIP_BITS) - 1))
        found[key] = max(found.get(key, 0), matches)
    return found


def pair_key(a: np.ndarray, b: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(clip a, clip b, time offset) packed in one int64, so offset +-1 is key +-1."""
    return (((a << CLIP_BITS) | b) << OFFSET_BITS) | (offset + (1 << (OFFSET_BITS - 1)))


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
