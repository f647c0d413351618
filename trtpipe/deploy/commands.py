"""The deployment commands: `predict`, `bench`, `export`, `refit` (registered with trtpipe.commands;
cli.py imports this module). Each prints its result and exits 0, or prints one message and exits
with the error's documented code (9 for what it was given, 8 when it cannot write)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from trtpipe.commands import command, guarded

_CODES = ("exit codes:\n  0  success\n  2  bad command-line usage\n"
          "  8  cannot write the output files, or an output would replace a published artifact, something\n"
          "     under OUTPUT_DIR/.runs/, the recipe, or a file the run or the command reads\n"
          "  9  deployment input error: images missing, unreadable, corrupt, not regular files or larger than\n"
          "     64 MP; not a published output directory, a report.json that fails its schema,\n"
          "     or one written by an older trt-pipeline without the input contract; a plan for another\n"
          "     backend, or an engine that cannot run here when one was asked for")


def _parser(name, description):
    parser = argparse.ArgumentParser(prog=f"python pipeline.py {name}", description=textwrap.dedent(description),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_CODES)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the result table")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def _count(least):
    """argparse type: a whole number >= `least` (else a usage error, exit 2)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value
    return parse


def _score(text):
    """argparse type: a finite number in [0, 1] (else a usage error, exit 2)."""
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a finite number in [0, 1], got {text!r}")
    return value


def _ui(args):
    from trtpipe.console import UI
    return UI(quiet=args.quiet)


@command("predict")
def cmd_predict(argv: list[str]) -> int:
    parser = _parser("predict", """\
        Run what a recipe run published on images: each image is prepared as the final model expects
        it (the input contract the passes recorded: size, layout, dtype, normalization), run through
        the engine where a GPU can run the plan (Polygraphy's TrtRunner), else through the final ONNX
        model on ONNX Runtime (a banner says why the engine did not run), then through the
        post-processing model (nms: split). Per image, writes <stem>.json (detections as [x1, y1, x2, y2]
        pixels of the original image with scores, classes and labels from output.labels; or the top-k
        classes) and <stem>.png (the image with them drawn).

        example: python pipeline.py predict build/effdet models/demo.png
        """)
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's output directory (output.dir)")
    parser.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+",
                        help="image files (png, jpg, jpeg, bmp, gif) or directories of them")
    parser.add_argument("--runtime", choices=("auto", "engine", "onnxruntime"), default="auto",
                        help="auto: the engine where a GPU can run the plan, else ONNX Runtime (default); "
                             "engine: fail when it cannot run")
    parser.add_argument("--out", metavar="DIR", help="where the JSON and PNG files go (default OUTPUT_DIR/predictions)")
    parser.add_argument("--top-k", type=_count(1), default=5, metavar="K",
                        help="classes per image for a classifier (5)")
    parser.add_argument("--min-score", type=_score, default=0.0, metavar="S",
                        help="leave out detections scoring at or below S (default 0: every detection the model kept)")
    args = parser.parse_args(argv)
    ui = _ui(args)

    def job():
        from trtpipe.deploy.predict import predict
        predict(args.output_dir, args.images, runtime=args.runtime, dest=args.out, top_k=args.top_k,
                min_score=args.min_score, ui=ui)

    return guarded(job, ui, args.debug)


@command("bench")
def cmd_bench(argv: list[str]) -> int:
    parser = _parser("bench", """\
        Latency percentiles and throughput of what a recipe run published, at each optimization
        profile's opt shape (or the model's static shapes), on seeded random inputs after warm-up:
        the engine where a GPU can run the plan (CUDA events), else reported skipped with the reason;
        the final ONNX model (and the post-processing model) on ONNX Runtime as the reference
        figure everywhere. Printed, and saved as JSON.
        """)
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's output directory (output.dir)")
    parser.add_argument("--warmup", type=_count(0), default=10, help="untimed runs first (default 10)")
    parser.add_argument("--iterations", type=_count(1), default=100,
                        help="timed runs per shape and runtime (default 100)")
    parser.add_argument("--json", metavar="PATH", help="where to save the result (default OUTPUT_DIR/bench.json)")
    args = parser.parse_args(argv)
    ui = _ui(args)

    def job():
        from trtpipe.deploy.bench import bench
        bench(args.output_dir, warmup=args.warmup, iterations=args.iterations, dest=args.json, ui=ui)

    return guarded(job, ui, args.debug)


@command("export")
def cmd_export(argv: list[str]) -> int:
    parser = _parser("export", """\
        Print the command line that builds the same plan from the published final ONNX model on another
        machine (e.g. the target device): profiles, workspace, builder optimization level, plugins and
        the deployment options; precision is already in the graph (strongly typed). Run it inside a
        copy of OUTPUT_DIR. The line alone goes to stdout (notes on what does not carry over go to
        stderr), so `$(python pipeline.py export DIR --for trtexec)` works.
        """)
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's output directory (output.dir)")
    parser.add_argument("--for", dest="tool", choices=("trtexec", "polygraphy"), required=True,
                        help="trtexec (TensorRT 10.x/11.x) or polygraphy convert")
    args = parser.parse_args(argv)
    ui = _ui(args)

    def job():
        import shlex

        from trtpipe.deploy.export import command as export_command
        from trtpipe.deploy.published import load_published
        pub = load_published(args.output_dir)
        argv_, notes = export_command(args.tool, pub.build, pub.final.name, pub.plan.name, pub.backend)
        print(shlex.join(argv_))
        if not args.quiet:
            for note in notes:
                print(f"# note: {note}", file=sys.stderr)

    return guarded(job, ui, args.debug)


@command("refit")
def cmd_refit(argv: list[str]) -> int:
    parser = _parser("refit", """\
        Put the weights back into a refittable or weight-stripped plan (build.refittable,
        build.strip_weights) on the machine that runs it: the plan's backend deserializes it, its
        Refitter + OnnxParserRefitter read every weight from the ONNX model (the run's published final
        model), and the refitted plan is written with its weights to a new file. Needs a GPU that can
        run the plan.
        """)
    parser.add_argument("plan", metavar="PLAN", help="the refittable or weight-stripped plan")
    parser.add_argument("--onnx", required=True, metavar="FINAL.onnx", help="the ONNX model the plan was built from")
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="the refitted plan (default <PLAN stem>.refitted.plan next to PLAN)")
    args = parser.parse_args(argv)
    ui = _ui(args)

    def job():
        from trtpipe.deploy.refit import refit
        out = refit(args.plan, args.onnx, args.output)
        ui.out.print(f"refitted plan written to {out}")

    return guarded(job, ui, args.debug)
