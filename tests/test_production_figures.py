"""Published production serving figures vs diffperf (experiments/production_figures.py).

Sources, setups and assumptions are in that script's docstring. Bar: +-30%. Cases that miss
it are xfail with the physical reason, not tuned away.
"""

import pytest

from experiments.production_figures import BAR, all_rows


@pytest.fixture(scope="module")
def rows():
    return {r["case"]: r for r in all_rows()}


_MEETS = [
    "a. DeepSeek-V3 decode, H800 EP144",
    "b. SGLang DeepSeek-V3 prefill, H100 EP24",
    "b. SGLang DeepSeek-V3 decode, H100 EP72",
    "c. Step-3 AFD decode, H800 2A2F",
]
_MISSES = {
    "a. DeepSeek-V3 prefill, H800 EP32": (
        "predicted prefill capacity is ~1.5x DeepSeek's figure, which is a 24-hour average "
        "of a load-scaled fleet (not peak capacity); loading the 56.3% cache hits from the "
        "on-disk KV cache and DeepEP's SM use during overlap are not modelled"
    ),
}


@pytest.mark.validation
@pytest.mark.parametrize("case", _MEETS)
def test_within_30_percent(rows, case):
    r = rows[case]
    assert abs(r["ratio"] - 1.0) <= BAR, (case, r["ratio"])


@pytest.mark.validation
@pytest.mark.parametrize("case", list(_MISSES))
def test_known_misses(rows, case):
    r = rows[case]
    if abs(r["ratio"] - 1.0) > BAR:
        pytest.xfail(_MISSES[case])
    assert abs(r["ratio"] - 1.0) <= BAR
