"""`trimmer demo`'s sizing options: what the scale bench relies on."""
from __future__ import annotations

import pytest

from rootproc.demo import leaf_message_limit, parse_args


def test_deadline_is_an_option_and_defaults_to_ten_seconds():
    args = parse_args(["--deadline-ms", "60000"])
    assert args.deadline_ms == 60_000
    assert parse_args([]).deadline_ms == 10_000


def test_a_deadline_below_one_ms_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--deadline-ms", "0"])
    assert exc.value.code == 2
    assert "--deadline-ms" in capsys.readouterr().err


def test_leaves_accept_the_demos_largest_message():
    small = parse_args(["--candidates", "64"])
    assert leaf_message_limit(small) == 256 << 20   # never below the leaf's default
    huge = parse_args(["--scale", "8", "--candidates", "2048"])
    # 12K features x 2,048 candidates: a model's every-feature message is ~570 MB.
    assert leaf_message_limit(huge) > 570_000_000
