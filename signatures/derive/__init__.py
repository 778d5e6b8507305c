"""A model's signature, derived from the model itself.

- `script_graph`: the features a TorchScript graph reads (and which of them it
  reads only through an input it writes to)
- `export_graph`: the same from a `torch.export` graph (also for AOTInductor)
- `feature_reads`: what a model reads of each feature (a constant slice, a
  narrowing cast), from either graph (`script_reads`, `export_reads`)
- `sub_feature_models`: models that read less than whole features (demo, tests)
- `sources`: loading what `trimmer export` is given (a module, a file)
- `synthetic`: the inputs a dry run feeds a model, from the schema
- `exporter`: `export`, the whole step: load, derive, dry-run, and publish
  the artifact with its `module_info.json` into a repository
"""
