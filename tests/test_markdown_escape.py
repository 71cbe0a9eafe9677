"""Names from data files (sources, channels) land in the model card and the PR report as text:
never a heading, a link, an image, HTML or a table row of their own.

Each document is rendered by a CommonMark parser with GitHub's tables (markdown-it-py, which
DVC's rich brings) and compared with the same document made with harmless names.
"""
import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from coughlab import report
from coughlab.escape import markdown_code, markdown_text, printable
from coughlab.model_card import model_card

from helpers import write_evaluation

HOSTILE = ["# Heading", "[click](javascript:alert(1))", "<img src=x onerror=alert(1)>",
           "a|b", "x\n| forged | row |\n", "`code` ``", "**bold** _it_", "&lt;b&gt;",
           "line\r\nbreak\n\n# Deep", "\x1b[2J", "![i](https://e.x/i.png)", "\\", "`", " ",
           "https://evil.example/ <https://evil.example>", "~~gone~~", "a\\|b"]
AUC = {"roc_auc": 0.8, "roc_auc_ci_low": 0.6, "roc_auc_ci_high": 0.95}


def parsed(markdown: str) -> dict:
    """What a renderer makes of `markdown`: its HTML, and how many of each element."""
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    return {"html": rendered,
            "counts": {tag: len(re.findall(rf"<{tag}[\s/>]", rendered)) for tag in
                       ("h1", "h2", "h3", "h4", "tr", "td", "th", "a", "img", "code", "li",
                        "em", "strong", "s", "script", "p")}}


def harmless(names: list[str]) -> list[str]:
    return [f"name{i}" for i in range(len(names))]


def card(names: list[str], tmp_path) -> str:
    import json

    evaluation = json.loads(write_evaluation(tmp_path / "evaluation.json").read_text())
    evaluation["test_by_source"] = {name: AUC for name in names}
    evaluation["test_by_channel"] = {name: AUC for name in names}
    meta = {"version": "0123456789ab", "input_seconds": 3.0, "sample_rate": 16000,
            "threshold": 0.5, "quality": {"min_seconds": 0.3, "silence_dbfs": -60.0},
            "parity": {"tolerance": 1e-4, "clips": 3},
            "provenance": {"data_sources": ["local"], "data_md5": "d" * 32, "params": {},
                           "features_md5": "f" * 32, "model_md5": "m" * 32}}
    return model_card(meta, evaluation)


def confound(names: list[str]) -> str:
    return report.confound_section({
        "threshold": 0.5, "operating_point": {"definition": "chosen on valid."},
        "test": AUC, "headline": {"within_channel_roc_auc": 0.7,
                                  "skipped_channels": {n: f"why {n}" for n in names}},
        "metadata_baseline": {"within_channel_roc_auc": 0.6},
        "margin": {"within_channel_roc_auc": 0.1, "warning": None},
        "channel_leakage": {"negative": AUC},
        "test_by_channel": {name: AUC for name in names}})


@pytest.mark.parametrize("document", ["model card", "PR report"])
def test_names_from_data_are_text_in_the_card_and_the_report(tmp_path, document):
    make = (lambda names: card(names, tmp_path)) if document == "model card" else confound
    hostile, benign = parsed(make(HOSTILE)), parsed(make(harmless(HOSTILE)))
    assert hostile["counts"] == benign["counts"], (hostile["counts"], benign["counts"])
    for name in HOSTILE:
        assert printable(name).strip() in shown_text(hostile["html"]), name


@pytest.mark.parametrize("name", HOSTILE)
def test_markdown_text_and_code_render_as_the_name_itself(name):
    """In a table cell: one cell, no link, image or HTML, and the name's printable form."""
    for markdown in (f"| x | {markdown_text(name)} |\n|---|---|\n| a | b |\n",
                     f"| x | {markdown_code(name)} |\n|---|---|\n| a | b |\n"):
        rendered = parsed(markdown)
        assert (rendered["counts"]["tr"], rendered["counts"]["th"]) == (2, 2), markdown
        assert not TABLE_TAGS.sub("", rendered["html"]).count("<"), rendered["html"]
        assert printable(name).strip() in shown_text(rendered["html"]), rendered["html"]


TABLE_TAGS = re.compile(r"</?(table|thead|tbody|tr|th|td|code)>")


def shown_text(rendered: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", rendered))


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(name=st.text(max_size=40)
       | st.text(alphabet=st.sampled_from(list("\\`*_[]()<>&|~!#\n\r- :/")), max_size=30))
def test_any_name_is_one_cell_of_text_in_a_table(name):
    """Whatever a source or channel is called, it stays in its cell and is no element."""
    for markdown in (f"| x | {markdown_text(name)} |\n|---|---|\n| a | b |\n",
                     f"| x | {markdown_code(name)} |\n|---|---|\n| a | b |\n"):
        rendered = parsed(markdown)
        assert (rendered["counts"]["tr"], rendered["counts"]["th"]) == (2, 2), markdown
        assert not TABLE_TAGS.sub("", rendered["html"]).count("<"), rendered["html"]
