"""``metrics.jsonl`` read back the same way by training (resume) and by the reports (plots)."""

from __future__ import annotations

import pytest

from dalle_zero.metrics_file import read_metric_lines, read_metrics


def test_rows_in_order_without_blank_lines_or_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "line 4 is torn" in caplog.text
    assert [line for line, _ in read_metric_lines(path)] == ['{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}']


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"step": "1"}\n{"step": 2}\n', "line 1: field 'step' must be an integer"),
        (b'[1, 2]\n{"step": 2}\n', "line 1: expected a JSON object"),
        (b'{"step": 1}\nnot json\n{"step": 2}\n', "line 2"),
    ],
)
def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(text)
    with pytest.raises(ValueError, match=message) as e:
        read_metrics(path)
    assert str(path) in str(e.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        read_metrics(tmp_path / "nope.jsonl")
