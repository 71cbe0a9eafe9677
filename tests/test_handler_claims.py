"""A container that claims more audio than it holds is scored from the frames that decode.

Every container keeps a length somewhere other than its samples (an Ogg granule position, an
mp3 Info frame count, a Matroska Duration, mp4's mvhd/mdhd, a WAV data size, FLAC's
STREAMINFO); each is inflated here (tests/hostile_audio.py). The handler may refuse a claim
over its limits, but what it scores and reports is what decoded, the same for the same bytes
whatever the decoder's read size.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_handler import body, import_handler, post

from hostile_audio import (
    every_claim,
    flac_total_claim,
    mp3_frames_claim,
    mp4_duration_claim,
    opus_dtx,
    vorbis,
    wav_size_claim,
    webm_duration_claim,
)

# An encoder's priming and padding decode as frames too (AAC's 1024 samples, an mp3 frame's
# padding): what a 1 s recording may report beyond its second. An inflated claim is >= 1.5 s.
CODEC_SLACK_SECONDS = 0.05
READ_SIZES = (65536, 4096, 1000)
# What may refuse a hostile file instead: a claim over the length limit (from the header, before
# decoding), packets no decoder takes, or all-DTX packets that decode to silence.
REFUSALS = ("audio_too_long", "unsupported_audio", "silent")


@pytest.fixture
def handler(exported_model, monkeypatch):
    return import_handler(exported_model["lambda_dir"], monkeypatch)


def check_scored_from_decoded_frames(handler, claim, posts: int = 4) -> dict:
    """The same bytes get the same body every time, and a 200 reports what the file holds."""
    answers = [handler.handler(post(claim.audio, "application/octet-stream"))
               for _ in range(posts)]
    assert len({a["body"] for a in answers}) == 1, (claim.name, [a["body"] for a in answers])
    result = body(answers[0])
    if answers[0]["statusCode"] == 200:
        assert abs(result["seconds"] - claim.held_seconds) < CODEC_SLACK_SECONDS, (
            f"{claim.name}: {result['seconds']} s reported, {claim.held_seconds:.4f} s held")
    else:
        assert result["error"] in REFUSALS, (claim.name, result)
    return result


@pytest.mark.parametrize("claim", every_claim(), ids=lambda claim: claim.name)
def test_a_claim_of_more_audio_than_the_file_holds_is_never_scored(handler, claim):
    result = check_scored_from_decoded_frames(handler, claim)
    assert "seconds" in result, result  # each of these is a recording that decodes


def check_read_size_does_not_matter(handler, claim) -> None:
    """libsndfile's Opus reader sized each page's output by its granule position: past an
    inflated one it handed on samples that changed with the read size (and, per the issue,
    from call to call). Within float rounding (mpg123 converts per read) they must not."""
    waves, deployed = [], handler.DECODE_BLOCK_FRAMES
    try:
        for frames in READ_SIZES:
            handler.DECODE_BLOCK_FRAMES = frames
            try:
                waves.append(handler.decode(claim.audio)[0])
            except handler.RequestError as err:
                waves.append(err.code)
    finally:
        handler.DECODE_BLOCK_FRAMES = deployed
    for wave in waves[1:]:
        if isinstance(wave, str) or isinstance(waves[0], str):
            assert wave == waves[0], (claim.name, waves)
            continue
        assert wave.shape == waves[0].shape, claim.name
        assert np.allclose(wave, waves[0], rtol=0, atol=1e-6), (
            f"{claim.name}: {np.abs(wave - waves[0]).max()} apart")


@pytest.mark.parametrize("claim", every_claim(), ids=lambda claim: claim.name)
def test_decoded_samples_do_not_depend_on_the_read_size(handler, claim):
    check_read_size_does_not_matter(handler, claim)


# Mostly under the 120 s limit (scored), sometimes over it (refused from the header).
INFLATION = st.floats(1.5, 60) | st.floats(120, 1000)
claims = st.one_of(
    st.builds(opus_dtx, st.integers(1, 2), st.integers(1, 6), INFLATION,
              st.booleans(), st.sampled_from([1, 2, 5, 10])),
    st.builds(vorbis, st.integers(1, 2), INFLATION, st.booleans()),
    st.builds(mp3_frames_claim, INFLATION),
    st.builds(webm_duration_claim, INFLATION),
    st.builds(mp4_duration_claim, INFLATION),
    st.builds(wav_size_claim, INFLATION),
    st.builds(flac_total_claim, INFLATION))


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(claim=claims)
def test_any_inflated_claim_in_any_container_is_scored_from_decoded_frames(handler, claim):
    """Over 120 s claimed, a 413 from the header is allowed; anything else is scored as it
    decodes, the same on every call."""
    check_scored_from_decoded_frames(handler, claim, posts=3)
    check_read_size_does_not_matter(handler, claim)
