"""The lm-decides study's two-lens verdict, on synthetic depths that must give each verdict."""

import pytest

from layerscope.studies.lm_decides import lens_verdict

LATE = [0.9, 0.93, 0.88, 0.9, 0.91, 0.89]
EARLY = [0.3, 0.32, 0.28, 0.31, 0.3, 0.29]
SPREAD = [0.4, 0.95, 0.7, 0.5, 0.9, 0.66]


@pytest.mark.parametrize("logit,tuned,expected", [
    (LATE, LATE, "supported"), (EARLY, EARLY, "refuted"), (LATE, EARLY, "mixed"),
    (LATE, SPREAD, "cannot tell")])
def test_lens_verdict_gives_every_verdict(logit, tuned, expected):
    verdict, est_logit, est_tuned = lens_verdict(logit, tuned)
    assert verdict.verdict == expected
    assert set(verdict.parts) == {"through the logit lens", "through the tuned lens"}
    assert est_logit.what.startswith("logit lens") and est_tuned.what.startswith("tuned lens")
    assert est_logit.n == est_tuned.n == 6 and "[" in verdict.parts["through the tuned lens"].reason
