"""Paired t-intervals and verdicts of the ablation report (no scipy)."""
import math

import pytest

from ea_zoo.train.stats import mean_std, paired_verdict, t_cdf, t_quantile


@pytest.mark.parametrize("df, q", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantiles_match_the_tables(df, q):
    assert math.isclose(t_quantile(0.975, df), q, abs_tol=2e-4)
    assert math.isclose(t_cdf(t_quantile(0.9, df), df), 0.9, abs_tol=1e-9)


def test_paired_verdicts():
    assert paired_verdict([0.97, 0.96, 0.95], [0.95, 0.95, 0.95])["verdict"] == "tied"
    ahead = paired_verdict([0.97, 0.96, 0.98, 0.97], [0.95, 0.95, 0.96, 0.94])
    assert ahead["verdict"] == "ahead" and ahead["lo"] > 0 and math.isclose(ahead["mean"], 0.02)
    # errors: lower is better, so a smaller MAE for a is "ahead"
    assert paired_verdict([1.0, 1.1, 1.05], [1.2, 1.3, 1.24], higher_is_better=False)["verdict"] == "ahead"
    assert paired_verdict([0.5, 0.52, 0.51], [0.6, 0.61, 0.6])["verdict"] == "behind"
    assert paired_verdict([0.9], [0.8])["verdict"] == "n/a"
    with pytest.raises(ValueError, match="same seeds"):
        paired_verdict([1.0, 2.0], [1.0])
    assert mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
