"""How the report words validation's rules: shared by the validation code that applies them and
report.md, which is written on every run, cached ones included (so this module imports nothing)."""

RULE = ("an output passes when, in every iteration, its error statistic is within atol (abs error) OR "
        "within rtol (rel error = |candidate - reference| / |reference|, the reference being the model named "
        "second); 'held' names the bound that held")
EXPLAIN = ("inconclusive: the reference values cannot tell a right model from a wrong one (constant, "
           "all zero or not depending on the input; see validate.require_informative)")

BORDERLINE = ("borderline: an unmatched detection at a cut-off, scoring within score_atol of min_score, or, "
              "when the other side kept its full top-K, no higher than the other side's lowest kept score + "
              "score_atol (a near-tie that fell off); not counted against max_unmatched")
