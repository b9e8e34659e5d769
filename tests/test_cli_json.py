"""--json output is strict JSON: what a score cannot be (NaN, infinity) is null, never a bare NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headstart.commands import print_json


def test_json_output_writes_nan_and_infinities_as_null(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"ci": (float("nan"), np.float64("inf")), "n": np.int64(3), "ok": 0.5})
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    assert json.loads(out) == {"ci": [None, None], "n": 3, "ok": 0.5}
