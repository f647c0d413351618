"""trt-pipeline's JSON Schemas (2020-12): the recipe, the report and each built-in pass's parameters.

A package only so that the schemas ship inside the wheel: code reads them with
`importlib.resources.files("schemas")` (see `trtpipe.recipe.schema.load_schema`), never by path.
"""
