"""The model repository: ``REPO/NAME/VERSION/`` holds a version's artifact and
its `module_info.json` (the signature).

- `module_info`: `ModuleInfo` (the signature, its hash) and `ModelRepository`
  (versions, reading them, their content hashes)
- `artifacts`: loading an artifact as the leaf serves it (TorchScript, a
  `torch.export` program, an AOTInductor package)
- `publish`: writing a version, atomically and immutably (`ExportError` when
  the repository refuses it)
"""
