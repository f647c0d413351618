"""User-facing errors and the exit codes the CLI maps them to.

Every error a user can cause is one of these; the CLI prints `str(err)` (no traceback unless
--debug) and exits with `err.exit_code`. Codes are documented in README.md and `--help`.
"""

import difflib

EXIT_OK = 0
EXIT_INTERNAL = 1      # a bug in trt-pipeline itself (traceback shown)
EXIT_USAGE = 2         # bad command line
EXIT_RECIPE = 3        # recipe file: YAML syntax, schema, pass name/parameters, paths
EXIT_SOURCE = 4        # model could not be loaded or converted
EXIT_PASS = 5          # a graph-surgery pass failed
EXIT_VALIDATION = 6    # outputs disagree beyond tolerance
EXIT_BUILD = 7         # parser, plugin or builder failure
EXIT_OUTPUT = 8        # output directory not writable, artifact could not be published
EXIT_DEPLOY = 9        # predict/bench/export/refit: bad images, published output directory or plan
EXIT_VALIDATION_NOT_RUN = 10  # validation could not run: ONNX Runtime cannot run a model, or no data can be fed
EXIT_TASKS = 11        # build-all: one or more of its tasks failed (build-all.json has each one's code)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_PIPE = 141        # the standard output's reader went away (128 + SIGPIPE, as a shell reports it)

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug: please report it with --debug output)",
    EXIT_USAGE: "bad command-line usage",
    EXIT_RECIPE: "recipe error (YAML, schema, pass names or parameters, paths)",
    EXIT_SOURCE: "source error (model missing, corrupt, conversion left unknown ops, fails the onnx checks, or an "
                 "IR version / opset the installed onnx or ONNX Runtime cannot read)",
    EXIT_PASS: "graph-surgery pass failed",
    EXIT_VALIDATION: "validation failed (outputs disagree beyond tolerance)",
    EXIT_BUILD: "build error (parser, plugin or builder)",
    EXIT_OUTPUT: "output error (cannot write artifacts: not writable, disk full, an output that is an input "
                 "of the run, another recipe's output directory)",
    EXIT_DEPLOY: "deployment input error (predict, bench, export, refit: images, published output directory, plan)",
    EXIT_VALIDATION_NOT_RUN: "validation could not run (ONNX Runtime cannot run a model, or no valid data "
                             "can be made for an input: a parameter input without a value, an unfeedable "
                             "type, an .npz or image folder that fits no input; the message says what to give)",
    EXIT_TASKS: "build-all: one or more tasks failed (build-all.json gives each task's exit code)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); nothing was published",
    EXIT_PIPE: "the standard output was closed by its reader (`| head`): stopped quietly; nothing half-written "
               "was published",
}


class PipelineError(Exception):
    """Base class: a message a user can act on, and an exit code."""

    exit_code = EXIT_INTERNAL
    stage = "pipeline"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class RecipeError(PipelineError):
    exit_code = EXIT_RECIPE
    stage = "recipe"


class SourceError(PipelineError):
    exit_code = EXIT_SOURCE
    stage = "source"


class PassError(PipelineError):
    exit_code = EXIT_PASS
    stage = "passes"


class ValidationError(PipelineError):
    exit_code = EXIT_VALIDATION
    stage = "validate"


class ValidationNotRunError(ValidationError):
    """Validation could not run at all, as opposed to outputs that disagree: ONNX Runtime cannot
    load or run a model (an op, type, IR version or opset it lacks), or no valid data can be made
    for an input (a parameter input such as Reshape's `shape`, a type ONNX Runtime's Python API
    cannot be fed). Nothing was compared; the message names the model or input and the way out."""

    exit_code = EXIT_VALIDATION_NOT_RUN


class BuildError(PipelineError):
    exit_code = EXIT_BUILD
    stage = "build"


class OutputError(PipelineError):
    exit_code = EXIT_OUTPUT
    stage = "output"


class DeployError(PipelineError):
    """predict, bench, export or refit cannot use what they were given: no or unreadable images,
    an output directory a run did not publish (or an older run, without the input contract), a
    plan for another backend, or an engine that cannot run here when one was asked for."""

    exit_code = EXIT_DEPLOY
    stage = "deploy"


def suggest(word: object, candidates: "list[object] | set[object] | tuple[object, ...]", cutoff: float = 0.6) -> str:
    """A did-you-mean suffix for an error message: `" (did you mean 'x'?)"`, or `""`.

    Args:
        word: what the user wrote (any value; compared as text).
        candidates: the valid choices.
        cutoff: difflib similarity ratio a match needs (0.6 is difflib.get_close_matches' default).

    Returns:
        `" (did you mean 'x'?)"` for the closest candidate, or `""` when none is close enough.
    """
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def did_you_mean(word: str, choices: "list[str] | set[str] | tuple[str, ...]") -> "str | None":
    """A hint naming up to 3 close matches of `word` among `choices` (difflib cutoff 0.5), or None.

    Args:
        word: what the user wrote (a name, a file name).
        choices: the valid names.

    Returns:
        `"did you mean 'a' or 'b'?"`, for PipelineError's `hint=`; None when nothing is close.
    """
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return "did you mean " + " or ".join(map(repr, close)) + "?" if close else None
