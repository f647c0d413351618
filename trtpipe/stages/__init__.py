"""The pipeline's stages, one folder each; `STAGES` lists them in the order a run goes through them.

    recipe (trtpipe/recipe) -> source -> passes -> precision -> validate -> build -> publish -> report

Each stage folder holds the work (`load.py`, `runner.py`, `mixed.py`, `compare.py`, `plan.py`) and
`cached.py`, which looks the stage's key up in the stage cache and runs the work only on a miss.
`run.py` strings them together; `order.py` names stages for the cache, `explain` and `diff`.
Importing this package imports nothing else (the review commands read `STAGES` without TensorFlow).
"""

# (stage, module that does its work), in flow order; validation runs after the build instead
# where a GPU can run the plan (run.py).
STAGES = (
    ("source", "trtpipe.stages.source.load"),
    ("passes", "trtpipe.stages.passes.runner"),
    ("precision", "trtpipe.stages.precision.mixed"),
    ("validate", "trtpipe.stages.validate.compare"),
    ("build", "trtpipe.stages.build.plan"),
    ("publish", "trtpipe.stages.publish"),
    ("report", "trtpipe.stages.report"),
)
