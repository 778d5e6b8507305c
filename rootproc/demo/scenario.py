"""Everything the demo node needs on disk, generated deterministically:
schema, exported models with derived signatures, bundle, staged config
store and the LMDB feature store.

The models are served as TorchScript unless ``TRIMMER_DEMO_MODEL_FORMAT``
says otherwise: ``export`` (torch.export programs), ``aoti`` (AOTInductor
packages for the CPU: the fastest forward, bench/RESULTS.md, but each takes
half a minute to two minutes to compile on a small machine), or ``auto``
(``aoti`` when this torch can build it, else TorchScript). The default keeps
the demo's run time; the table says which format served."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rootproc.demo.models import SubsetScorer
from rootproc.demo.schema_gen import demo_schema, model_feature_sets
from signatures.bundle import build as build_bundle
from signatures.configstore import Stages, open_config_store
from signatures.derive.exporter import FORMATS, export
from signatures.repository import artifacts
from signatures.repository.module_info import ModelRepository
from signatures.schema import FeatureSchema

STAGE = "production"
FORMAT_ENV = "TRIMMER_DEMO_MODEL_FORMAT"


def model_format(requested: str | None = None, log=print) -> str:
    """The format the demo exports its models in (see the module docstring)."""
    fmt = requested or os.environ.get(FORMAT_ENV) or "torchscript"
    if fmt == "auto":
        fmt = "aoti" if artifacts.unsupported("aoti") is None else "torchscript"
    if fmt not in FORMATS:
        raise ValueError(f"{FORMAT_ENV}={fmt!r}: expected one of {', '.join(FORMATS)} or auto")
    reason = artifacts.unsupported(fmt)
    if reason:
        log(f"{FORMAT_ENV}={fmt}: {reason}; serving TorchScript instead")
        fmt = "torchscript"
    return fmt


@dataclass
class Scenario:
    run_dir: Path
    schema: FeatureSchema
    models: dict[str, float]          # model key -> fraction of the schema it reads
    placement: dict[str, list[str]]   # leaf name -> model keys
    bundle_id: str
    model_format: str = "torchscript"   # the artifact kind the leaves serve

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
                   scale: float = 1.0, log=print, fmt: str | None = None,
                   models: int | str = 4) -> Scenario:
    """``models``: how many demo scorers, or ``"realistic"`` for the TorchRec
    DLRM and DCN of rootproc/demo/realistic.py (TorchScript or torch.export)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    schema_path = run_dir / "schema.json"
    schema_path.write_text(json.dumps(demo_schema(seed, scale), indent=1))
    schema = FeatureSchema.load(schema_path)
    log(f"schema: {len(schema)} features "
        f"({sum(f.per_request for f in schema.features.values())} per-request)")

    repo = run_dir / "models"
    fmt = model_format(fmt, log)
    keys = {}
    if models == "reads":
        keys = _sub_feature(schema, repo, fmt, seed, log)
    if models == "realistic":
        if fmt == "aoti":
            log("TorchRec models are not served as AOTInductor packages: serving TorchScript")
            fmt = "torchscript"
        keys = _realistic(schema, repo, fmt, seed, log)
    for i, (model, (dense, ragged)) in enumerate(
            model_feature_sets(schema, seed, models).items() if isinstance(models, int) else ()):
        t0 = time.monotonic()
        info = export(SubsetScorer(dense, ragged, seed + i), repo, model, schema, version="1",
                      fmt=fmt)
        keys[info.key] = len(info.input_names) / len(schema)
        graph = "TorchScript" if fmt == "torchscript" else "torch.export"
        log(f"exported {info.key} as {info.artifact.describe()} in {time.monotonic() - t0:.1f} s: "
            f"reads {len(info.input_names)} of {len(schema)} features (derived from its "
            f"{graph} graph)")

    placement: dict[str, list[str]] = {f"leaf-{i}": [] for i in range(leaves)}
    for i, key in enumerate(keys):
        placement[f"leaf-{i % leaves}"].append(key)
    bundle = build_bundle(ModelRepository(repo), schema, {
        "leaves": {leaf: {"current": models, "pending": []} for leaf, models in placement.items()}})
    bundle.save(run_dir / "bundle.json")
    stages = Stages(open_config_store(run_dir / "configs"))
    stages.deploy(bundle, STAGE)
    stages.deploy_models(STAGE, list(keys))
    log(f"bundle {bundle.id} deployed to {STAGE}, then its model versions")

    from rootproc.featurestore import cli as store_cli
    if store_cli.main(["synth", "--feature-store", str(run_dir / "features"), "--schema", str(schema_path),
                       "--users", str(users), "--candidates", str(candidates), "--seed", str(seed)]):
        raise RuntimeError("synthesising the feature store failed (see above)")
    log(f"feature store: {users} users, {candidates} candidates "
        f"({_du(run_dir / 'features') / 2**20:.0f} MiB on disk)")
    return Scenario(run_dir, schema, keys, placement, bundle.id, fmt)


def _realistic(schema: FeatureSchema, repo: Path, fmt: str, seed: int, log) -> dict[str, float]:
    from rootproc.demo.realistic import realistic_models
    keys = {}
    models = realistic_models(schema, seed=seed)
    for name in list(models):
        t0 = time.monotonic()
        info = export(models.pop(name), repo, name, schema, version="1", fmt=fmt)
        keys[info.key] = len(info.input_names) / len(schema)
        tables = info.provenance["torchrec"]["keys"]
        log(f"exported {info.key} (TorchRec) as {info.artifact.describe()} in "
            f"{time.monotonic() - t0:.1f} s: reads {len(info.input_names)} of {len(schema)} "
            f"features ({len(tables)} KJT keys derived from its tables, "
            f"{len(info.provenance['torchrec']['dense'])} dense features)")
    return keys


def _sub_feature(schema: FeatureSchema, repo: Path, fmt: str, seed: int, log) -> dict[str, float]:
    """The sub-feature models (signatures/derive/sub_feature_models.py):
    ``mat`` reads the first quarter of the widest candidate embedding (64 of
    256 dims at the default scale); ``bf16`` casts a per-request user
    embedding and candidate vectors to bfloat16 on entry. Their reads are
    derived from the graph by the export, as for any model; a derivation
    that no longer finds them fails the demo rather than measuring nothing."""
    from _trim.reads import FeatureRead
    from signatures.derive.sub_feature_models import Bf16Scorer, MatryoshkaScorer

    wide = max((n for n in schema.names if n.startswith("pin_emb_")), key=lambda n: schema[n].shape)
    prefix = schema[wide].shape[0] // 4
    vectors = ["user_emb"] + [n for n in schema.names if n.startswith("pin_emb_")
                              and schema[n].shape in ((64,), (128,))][:3]
    specs = {"mat": (MatryoshkaScorer([wide], prefix, seed), {wide: FeatureRead(((0, prefix),))}),
             "bf16": (Bf16Scorer(vectors, seed), {n: FeatureRead(None, "bfloat16") for n in vectors})}
    keys = {}
    for name, (module, expected) in specs.items():
        info = export(module, repo, name, schema, version="1", fmt=fmt)
        derived = {s.name: s.read for s in info.inputs if s.read is not None}
        if derived != expected:
            raise RuntimeError(f"{info.key}: derived reads {derived} are not the model's {expected}")
        keys[info.key] = len(info.input_names) / len(schema)
        log(f"exported {info.key} as {info.artifact.describe()}: reads "
            + ", ".join(f"{n} {r.to_dict()}" for n, r in derived.items()))
    return keys


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
