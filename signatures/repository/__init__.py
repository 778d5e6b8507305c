"""The model repository: ``REPO/NAME/VERSION/`` holds a version's artifact and
its `module_info.json` (the signature). ``REPO`` is a directory, or an object
store's URL (``s3://BUCKET/PREFIX``, any fsspec URL): `open_repository`.

- `module_info`: `ModuleInfo` (the signature, its hash) and `ModelRepository`
  (versions, reading them, their content hashes; a directory)
- `objects`: `ObjectRepository`, the repository on object storage, whose
  versions a leaf downloads into a local cache, verified, renamed into place
- `artifacts`: loading an artifact as the leaf serves it (TorchScript, a
  `torch.export` program, an AOTInductor package)
- `publish`: writing a version, atomically and immutably (`ExportError` when
  the repository refuses it)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from signatures.repository.module_info import ModelRepository


def open_repository(address, *, cache: str | None = None,
                    max_artifact_bytes: int | None = None) -> ModelRepository:
    """The repository at ``address``: a directory (`ModelRepository`) or an
    fsspec URL such as ``s3://BUCKET/PREFIX`` (`ObjectRepository`, reading
    through the local ``cache`` directory)."""
    from signatures.repository.module_info import ModelRepository
    from signatures.repository.objects import MAX_ARTIFACT_BYTES, ObjectRepository, is_url
    address = str(address)
    if not is_url(address):
        return ModelRepository(address.removeprefix("file://"))
    return ObjectRepository(address, cache=cache,
                            max_artifact_bytes=max_artifact_bytes or MAX_ARTIFACT_BYTES)


__all__ = ["open_repository"]
