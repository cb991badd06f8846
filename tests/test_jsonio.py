"""The job's own JSON and JSON Lines files."""

from __future__ import annotations

from job.jsonio import from_jsonl, to_jsonl


def test_jsonl_round_trips_texts_with_unicode_line_separators() -> None:
    # A real dev ticket (MAPREDUCE-4554) holds U+2028; steps run in separate pods re-read it.
    rows = [{"id": "a", "text": "first\u2028second\u2029third\x85fourth\r\nfifth"}, {"id": "b", "text": "x"}]
    assert from_jsonl(to_jsonl(rows)) == rows
