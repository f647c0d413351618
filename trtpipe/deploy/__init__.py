"""Using what a run published: `predict` (images -> detections or classes), `bench` (latency and
throughput), `export` (the trtexec / polygraphy command line that builds the same plan elsewhere),
`refit` (weights back into a refittable or weight-stripped plan), and the report's deployment
section (input contract, engine facts, export lines).

Every command reads an output directory through `published.load_published`; its errors are
`trtpipe.errors.DeployError` (exit 9). Engines run only where a GPU can run the plan
(backend.has_runtime_gpu); everywhere else the command says why and, where it can, runs the final
ONNX model on ONNX Runtime instead.
"""
