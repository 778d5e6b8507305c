"""Everything the demo node needs on disk, generated deterministically:
schema, exported models with derived signatures, bundle, staged config
store and the LMDB feature store."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from signatures.bundle import build as build_bundle
from signatures.export import export
from signatures.module_info import ModelRepository
from signatures.schema import FeatureSchema
from signatures.store import ConfigStore

from .models import SubsetScorer
from .schema_gen import demo_schema, model_feature_sets

STAGE = "production"


@dataclass
class Scenario:
    run_dir: Path
    schema: FeatureSchema
    models: dict[str, float]          # model key -> fraction of the schema it reads
    placement: dict[str, list[str]]   # leaf name -> model keys
    bundle_id: str

    @property
    def schema_path(self) -> Path:
        return self.run_dir / "schema.json"

    @property
    def repo(self) -> Path:
        return self.run_dir / "models"

    @property
    def config_store(self) -> Path:
        return self.run_dir / "configs"

    @property
    def feature_store(self) -> Path:
        return self.run_dir / "features"


def build_scenario(run_dir: Path, *, leaves: int, users: int, candidates: int, seed: int,
                   scale: float = 1.0, log=print) -> Scenario:
    run_dir.mkdir(parents=True, exist_ok=True)
    schema_path = run_dir / "schema.json"
    schema_path.write_text(json.dumps(demo_schema(seed, scale), indent=1))
    schema = FeatureSchema.load(schema_path)
    log(f"schema: {len(schema)} features "
        f"({sum(f.per_request for f in schema.features.values())} per-request)")

    repo = run_dir / "models"
    keys = {}
    for i, (model, (dense, ragged)) in enumerate(model_feature_sets(schema, seed).items()):
        artifact = run_dir / f".{model}.pt"
        torch.jit.save(torch.jit.script(SubsetScorer(dense, ragged, seed + i)), str(artifact))
        info = export(str(artifact), repo, model, schema, version="1")
        artifact.unlink()
        keys[info.key] = len(info.input_names) / len(schema)
        log(f"exported {info.key}: reads {len(info.input_names)} of {len(schema)} features "
            f"(derived from its TorchScript graph)")

    placement: dict[str, list[str]] = {f"leaf-{i}": [] for i in range(leaves)}
    for i, key in enumerate(keys):
        placement[f"leaf-{i % leaves}"].append(key)
    bundle = build_bundle(ModelRepository(repo), schema, {
        "leaves": {leaf: {"current": models, "pending": []} for leaf, models in placement.items()}})
    bundle.save(run_dir / "bundle.json")
    store = ConfigStore(run_dir / "configs")
    store.deploy(bundle, STAGE)
    store.deploy_models(STAGE, list(keys))
    log(f"bundle {bundle.id} deployed to {STAGE}, then its model versions")

    from rootproc import store_cli
    if store_cli.main(["synth", "--feature-store", str(run_dir / "features"), "--schema", str(schema_path),
                       "--users", str(users), "--candidates", str(candidates), "--seed", str(seed)]):
        raise RuntimeError("synthesising the feature store failed (see above)")
    log(f"feature store: {users} users, {candidates} candidates "
        f"({_du(run_dir / 'features') / 2**20:.0f} MiB on disk)")
    return Scenario(run_dir, schema, keys, placement, bundle.id)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
