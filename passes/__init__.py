"""Built-in graph-surgery passes, one per file. Each registers itself with
`trtpipe.registry.register_pass`; its parameter schema is schemas/passes/<name>.schema.json."""
