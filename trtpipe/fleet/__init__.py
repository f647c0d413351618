"""build-all: many recipes for many targets, on this machine or on a Ray cluster.

* tasks.py       - targets, recipes x targets -> tasks, the GitHub Actions matrix, start order;
* runner.py      - one task: the ordinary run in a child process (child.py), then its report read;
* local.py       - the local executor: --jobs child processes here;
* ray_cluster.py - the Ray executor: Ray tasks routed by target resources, retried on worker death;
* progress.py    - done / running / failed while it runs;
* report.py      - build-all.json, build-all.md, the summary table;
* command.py     - `python pipeline.py build-all`.

The stage cache is shared between workers through its remote tier (trtpipe/cache/remote.py).
"""
