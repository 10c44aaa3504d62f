"""Markdown → Telegram HTML and splitting into messages Telegram accepts."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_bot_core.bot.formatting import (
    check_html,
    format_answer,
    markdown_to_html,
    split_html,
    to_plain,
    utf16_len,
)
from llm_bot_core.testing.telegram_html import parse_telegram_html


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def assert_telegram_accepts(chunk: str, limit: int) -> None:
    assert utf16_len(chunk) <= limit
    check_html(chunk)
    assert parse_telegram_html(chunk).strip()  # the fake's own, independent parser
    assert chunk.count("<pre") == chunk.count("</pre>")
    assert chunk.count("<code") == chunk.count("</code>")


_words = st.sampled_from([
    "word", "слово", "x", "long_snake_name", "2*3", "a<b", "R&D", "emoji😀", "“quote”", "end.",
    "why?", "wow!", "**bold**", "*it*", "`code`", "~~gone~~", "[link](https://e.com/?a=1&b=2)",
    "# Head", "- item", "1. one", "> quote", "<b>raw</b>", "&amp;", "__under__", "||spoil||",
])
_paragraph = st.lists(_words, min_size=1, max_size=40).map(" ".join)
_code = st.tuples(st.sampled_from(["", "python", "js"]),
                  st.lists(st.text(alphabet="ab <>&*_`\t{}();=", max_size=60), max_size=30)).map(
    lambda t: f"```{t[0]}\n" + "\n".join(t[1]) + "\n```")
_markdown = st.lists(st.one_of(_paragraph, _code, _paragraph), min_size=1, max_size=25).map(
    lambda blocks: "\n\n".join(blocks))
_any_text = st.text(max_size=3000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdown=st.one_of(_markdown, _any_text), limit=st.integers(min_value=64, max_value=900))
def test_every_chunk_fits_is_valid_html_and_together_they_keep_the_text(
    markdown: str, limit: int
) -> None:
    rendered = markdown_to_html(markdown)
    check_html(rendered)
    chunks = split_html(rendered, limit)
    for chunk in chunks:
        assert_telegram_accepts(chunk, limit)
    assert squash("".join(to_plain(c) for c in chunks)) == squash(to_plain(rendered))


def test_a_code_block_that_fits_a_message_is_never_split() -> None:
    code = "\n".join(f"line_{i} = {i} < {i + 1}" for i in range(120))  # ~2,600 characters
    markdown = "intro " * 400 + f"\n\n```python\n{code}\n```\n\n" + "outro " * 300
    chunks = format_answer(markdown)
    assert len(chunks) >= 2
    with_code = [c for c in chunks if "<pre>" in c]
    assert len(with_code) == 1
    assert with_code[0].startswith('<pre><code class="language-python">line_0 = 0 &lt; 1')
    assert "line_119 = 119 &lt; 120" in with_code[0]


def test_a_code_block_longer_than_a_message_is_split_at_lines_each_part_a_code_block() -> None:
    code = "\n".join(f"print({i})  # {'x' * 40}" for i in range(300))
    chunks = format_answer(f"```python\n{code}\n```")
    assert len(chunks) >= 4
    for chunk in chunks:
        assert_telegram_accepts(chunk, 4096)
        assert chunk.startswith('<pre><code class="language-python">print(')
        assert chunk.endswith("</code></pre>")
    lines = [line for c in chunks for line in to_plain(c).splitlines() if line]
    assert lines == code.splitlines()


def test_messages_end_at_paragraphs_then_sentences_never_mid_word() -> None:
    paragraphs = [" ".join(f"Sentence {p}.{s} is here." for s in range(60)) for p in range(6)]
    chunks = format_answer("\n\n".join(paragraphs))
    assert len(chunks) > 1
    for chunk in chunks[:-1]:
        assert chunk.endswith("is here.")
    assert squash("".join(chunks)) == squash("".join(paragraphs))

    one_paragraph = " ".join(f"Sentence {s} is here." for s in range(600))
    for chunk in format_answer(one_paragraph)[:-1]:
        assert chunk.endswith("is here.")


def test_formatting_spans_a_cut_are_closed_and_reopened() -> None:
    chunks = split_html("<b>" + "bold words " * 100 + "</b>", limit=200)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.startswith("<b>") and chunk.endswith("</b>")
        assert_telegram_accepts(chunk, 200)


def test_one_unbroken_word_longer_than_a_message_is_cut_hard() -> None:
    url = "https://example.com/" + "a" * 9000
    chunks = format_answer(url)
    assert len(chunks) == 3
    assert "".join(chunks) == url


def test_a_link_whose_tag_alone_is_too_long_keeps_its_words() -> None:
    markup = f'<a href="https://example.com/{"a" * 300}">the link</a> and text'
    chunks = split_html(markup, limit=100)
    assert squash("".join(chunks)) == squash("the link and text")


def test_markdown_renders_as_telegram_html_with_escaping() -> None:
    assert markdown_to_html("**bold**, *it*, `a<b>`, 1 < 2 & 3 > 2") == (
        "<b>bold</b>, <i>it</i>, <code>a&lt;b&gt;</code>, 1 &lt; 2 &amp; 3 &gt; 2")
    assert markdown_to_html("[docs](https://e.com/?a=1&b=2)") == (
        '<a href="https://e.com/?a=1&amp;b=2">docs</a>')
    assert "<pre><code class=\"language-py\">x = 1\n</code></pre>" in markdown_to_html(
        "```py\nx = 1\n```")


def test_markdown_the_converter_gets_wrong_is_sent_escaped_not_broken() -> None:
    source = "*a **b* c** <tag> & more"  # overlapping emphasis: no valid nesting exists
    rendered = markdown_to_html(source)
    check_html(rendered)
    assert to_plain(rendered).replace("*", "") == source.replace("*", "")


def test_utf16_length_is_what_telegram_counts() -> None:
    chunks = split_html("😀" * 3000, limit=4096)  # each emoji is two UTF-16 units
    assert [utf16_len(c) for c in chunks] == [4096, 1904]
