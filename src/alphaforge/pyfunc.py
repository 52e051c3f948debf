"""The ensemble as one deployable MLflow model, and the stack stage that builds it.

:class:`EnsembleModel` is an ``mlflow.pyfunc.PythonModel`` whose artifacts are everything the
ensemble needs to predict: each family's final model folder (``base_<family>``), the fitted
combiner (``combiner``: ``meta.json``), the feature specification (``spec``: ``spec.json`` with
the feature names, ``feature_version``, horizon, target, task, families) and the Hedge seed
(``hedge_seed``) that an online server starts from. ``load_context`` rebuilds an
:class:`alphaforge.ensemble.PanelEnsemble`; ``predict`` delegates to it, so the loaded model and
the in-memory ensemble run the same code. The ``alphaforge`` package travels inside the model
(``code_paths``), so loading needs only the pinned ``pip_requirements``.

**Input through MLflow.** MLflow's ``datetime`` type has no time zone, so the model's signature
takes ``timestamp`` as naive UTC; :func:`to_model_input` converts a canonical frame (UTC-aware
timestamps) and stamps the optional ``feature_version`` column, which the model checks against
its own (a frame of another feature version is refused). A frame missing a required column is
refused by MLflow's schema check before the model runs, naming the columns; called directly,
:meth:`PanelEnsemble.predict` refuses it itself.

Only :mod:`alphaforge.tracking` talks to the tracking server; this module saves model folders
(``mlflow.pyfunc.save_model``) and defines the model class.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from alphaforge.ensemble import (
    FEATURE_VERSION_ATTR,
    Combiner,
    PanelEnsemble,
    combiner_from_dict,
)
from alphaforge.io import write_json_atomic
from alphaforge.schema import DataError

log = logging.getLogger(__name__)

MODEL_NAME = "ensemble"
SPEC_ARTIFACT = "spec"
COMBINER_ARTIFACT = "combiner"
HEDGE_ARTIFACT = "hedge_seed"
COMPILED_ARTIFACT = "compiled_trees"  # native code of the LightGBM members (serving only; see models/compiled.py)
BASE_PREFIX = "base_"
# Import names of what the loaded model may import (alphaforge itself travels as code).
REQUIRED_IMPORTS = ("mlflow", "pandas", "numpy", "scipy", "pyarrow", "pydantic", "sklearn", "lightgbm")
OPTIONAL_IMPORTS = ("xgboost", "torch")


def _package_dir() -> Path:
    """The folder of the installed ``alphaforge`` package (what ``code_paths`` copies into the model)."""
    import alphaforge

    return Path(alphaforge.__file__).resolve().parent


def _distribution_of(import_name: str) -> str | None:
    """The installed distribution providing ``import_name`` (``xgboost`` comes as ``xgboost-cpu``)."""
    names = importlib.metadata.packages_distributions().get(import_name) or []
    # several distributions can ship one import name (mlflow and mlflow-tracing both ship ``mlflow``):
    # prefer the one named like the import
    for name in names:
        if name.lower().replace("_", "-") == import_name.lower():
            return name
    return names[0] if names else None


def ensemble_pip_requirements() -> list[str]:
    """Pinned requirements of the loaded ensemble, from the versions installed here.

    Core packages must be installed (else :class:`RuntimeError`); ``xgboost`` and ``torch`` are
    pinned when installed (no family of theirs can have been trained otherwise). ``torch`` keeps
    its local version (``+cpu``): the environment that restores the model must be able to find that
    build (the README says how), the same as for this project's own lock file.
    """
    lines: list[str] = []
    for import_name in (*REQUIRED_IMPORTS, *OPTIONAL_IMPORTS):
        distribution = _distribution_of(import_name)
        if distribution is None:
            if import_name in REQUIRED_IMPORTS:
                raise RuntimeError(f"ensemble requirements: {import_name!r} is not installed; the ensemble needs it")
            continue
        version = importlib.metadata.version(distribution)
        lines.append(f"{distribution}=={version}")
    return lines


def to_model_input(frame: pd.DataFrame, feature_version: str | None = None) -> pd.DataFrame:
    """A panel frame as the logged model takes it: naive-UTC ``timestamp``; a ``feature_version`` column if given."""
    converted = frame.copy()
    stamps = converted["timestamp"]
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        converted["timestamp"] = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    if feature_version is not None:
        converted[FEATURE_VERSION_ATTR] = str(feature_version)
    converted.attrs = {}
    return converted


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Base models + combiner + feature spec, predicting from a panel frame of features (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Rebuild the ensemble from the model's artifacts (base models via ``load_forecaster``)."""
        self.ensemble = load_panel_ensemble(context.artifacts)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``timestamp``, ``symbol``, ``prediction`` (+ ``lower``/``upper``), each family's ``prediction_<family>``."""
        if not hasattr(self, "ensemble"):
            raise RuntimeError("EnsembleModel: load_context has not run; load the model with mlflow.pyfunc.load_model")
        return self.ensemble.predict(model_input)


def load_panel_ensemble(artifacts: Mapping[str, str]) -> PanelEnsemble:
    """A :class:`PanelEnsemble` from an artifact mapping like :func:`build_ensemble_artifacts` returns."""
    from alphaforge.models.registry import load_forecaster

    for key in (SPEC_ARTIFACT, COMBINER_ARTIFACT):
        if key not in artifacts:
            raise FileNotFoundError(f"ensemble model: artifact {key!r} is missing (have {sorted(artifacts)})")
    spec = json.loads(Path(artifacts[SPEC_ARTIFACT]).read_text())
    combiner = combiner_from_dict(json.loads(Path(artifacts[COMBINER_ARTIFACT]).read_text()))
    missing = [f for f in combiner.families if f"{BASE_PREFIX}{f}" not in artifacts]
    if missing:
        raise FileNotFoundError(f"ensemble model: no base model artifact for family(ies) {missing}")
    models = {f: load_forecaster(artifacts[f"{BASE_PREFIX}{f}"]) for f in combiner.families}
    return PanelEnsemble(models, combiner, spec)


def build_ensemble_artifacts(
    trained_dir: str | Path,
    meta: Combiner,
    out_dir: str | Path,
    *,
    hedge_seed: Mapping[str, Any] | None = None,
    extra_spec: Mapping[str, Any] | None = None,
    compile_trees: bool = False,
) -> dict[str, str]:
    """Write ``meta.json`` (the combiner), ``spec.json`` (the train stage's spec + ensemble settings) and
    ``hedge_seed.json`` into ``out_dir``; return the pyfunc artifact mapping, pointing at the families'
    final models under ``trained_dir/<family>/final``.

    With ``compile_trees`` the LightGBM members are also compiled to native code into
    ``out_dir/compiled_trees`` (artifact ``compiled_trees``, used by the service's row path; see
    :mod:`alphaforge.models.compiled`). A compiler failure is logged and recorded in ``spec.json``
    (``compiled_trees.error``); the model then serves through LightGBM's own predictor."""
    trained, out = Path(trained_dir), Path(out_dir)
    spec_path = trained / "spec.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} is missing; run the train stage first")
    spec = json.loads(spec_path.read_text())
    absent = [f for f in meta.families if f not in spec["families"]]
    if absent:
        raise DataError(f"ensemble: the combiner uses family(ies) {absent} the train stage did not produce")
    artifacts: dict[str, str] = {}
    for family in meta.families:
        final = trained / family / "final"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(f"{final} holds no saved final model; set train.fit_final_model: true")
        artifacts[f"{BASE_PREFIX}{family}"] = str(final.resolve())
    out.mkdir(parents=True, exist_ok=True)
    ensemble_spec = {**spec, "ensemble_families": list(meta.families), "combiner": meta.kind, **dict(extra_spec or {})}
    if compile_trees:
        compiled = _compile_trees({f: artifacts[f"{BASE_PREFIX}{f}"] for f in meta.families}, out / "compiled_trees")
        ensemble_spec["compiled_trees"] = compiled
        if compiled.get("boosters"):
            artifacts[COMPILED_ARTIFACT] = str((out / "compiled_trees").resolve())
    write_json_atomic(ensemble_spec, out / "spec.json")
    write_json_atomic(meta.to_dict(), out / "meta.json")
    artifacts[SPEC_ARTIFACT] = str((out / "spec.json").resolve())
    artifacts[COMBINER_ARTIFACT] = str((out / "meta.json").resolve())
    if hedge_seed is not None:
        write_json_atomic(dict(hedge_seed), out / "hedge_seed.json")
        artifacts[HEDGE_ARTIFACT] = str((out / "hedge_seed.json").resolve())
    return artifacts


def _compile_trees(member_dirs: Mapping[str, str], folder: Path) -> dict[str, Any]:
    """Compile the LightGBM members (saved under ``member_dirs``) into ``folder``; a summary for ``spec.json``."""
    import shutil

    from alphaforge.models.compiled import compile_members
    from alphaforge.models.registry import load_forecaster

    shutil.rmtree(folder, ignore_errors=True)  # a stale object file would be loaded unchecked by the compiler
    try:
        manifest = compile_members({f: load_forecaster(d) for f, d in member_dirs.items()}, folder)
    except Exception as err:  # serving still works through LightGBM's predictor; say so where it is read
        log.warning("ensemble: compiling the tree members failed (%s: %s); the service will use LightGBM's "
                    "own predictor", type(err).__name__, err)
        shutil.rmtree(folder, ignore_errors=True)
        return {"error": f"{type(err).__name__}: {err}"}
    if manifest is None:
        return {"boosters": {}}
    return {"boosters": sorted(manifest["boosters"]), "triple": manifest["triple"],
            "target_cpu": manifest["target_cpu"], "compiler": manifest["compiler"]}


def model_input_example(dataset: pd.DataFrame, spec: Mapping[str, Any], *, n_symbols: int = 2,
                        n_bars: int = 30) -> pd.DataFrame:
    """The last ``n_bars`` bars of the first ``n_symbols`` symbols, keys + features, as the model takes it."""
    columns = ["timestamp", "symbol", *spec["features"]]
    missing = [c for c in columns if c not in dataset.columns]
    if missing:
        raise DataError(f"input example: the dataset lacks column(s) {missing}")
    symbols = sorted(dataset["symbol"].astype(str).unique())[:n_symbols]
    chosen = dataset[dataset["symbol"].astype(str).isin(symbols)]
    example = chosen.groupby("symbol", sort=True, observed=True).tail(n_bars)[columns]
    example = example.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    return to_model_input(example, str(spec["feature_version"]))


def ensemble_signature(input_example: pd.DataFrame, predictions: pd.DataFrame) -> Any:
    """``infer_signature(input_example, predictions)`` with ``feature_version`` an optional input."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    outputs = to_model_input(predictions)
    signature = infer_signature(input_example, outputs)
    columns = [ColSpec(c.type, c.name, required=False) if c.name == FEATURE_VERSION_ATTR else c
               for c in signature.inputs.inputs]
    return ModelSignature(inputs=Schema(columns), outputs=signature.outputs, params=signature.params)


@dataclass
class EnsemblePackage:
    """Everything ``mlflow.pyfunc.save_model``/``log_model`` take for the ensemble."""

    artifacts: dict[str, str]
    input_example: pd.DataFrame
    signature: Any
    pip_requirements: list[str]
    code_paths: list[str] = field(default_factory=lambda: [str(_package_dir())])

    def python_model(self) -> EnsembleModel:
        return EnsembleModel()


def package_ensemble(artifacts: Mapping[str, str], dataset: pd.DataFrame, *, n_bars: int = 30) -> EnsemblePackage:
    """Input example (from ``dataset``), signature (from the ensemble's predictions on it), requirements."""
    artifacts = dict(artifacts)
    ensemble = load_panel_ensemble(artifacts)
    example = model_input_example(dataset, ensemble.spec, n_bars=n_bars)
    predictions = ensemble.predict(example)
    return EnsemblePackage(artifacts=artifacts, input_example=example,
                           signature=ensemble_signature(example, predictions),
                           pip_requirements=ensemble_pip_requirements())


def save_ensemble_model(package: EnsemblePackage, path: str | Path) -> Path:
    """The pyfunc model folder at ``path`` (replaced if present): MLmodel, artifacts, code, requirements."""
    target = Path(path)
    if target.exists():
        shutil.rmtree(target)
    mlflow.pyfunc.save_model(
        path=str(target), python_model=package.python_model(), artifacts=package.artifacts,
        signature=package.signature, input_example=package.input_example,
        pip_requirements=package.pip_requirements, code_paths=package.code_paths,
    )
    return target


def predict_frame(model: Any, frame: pd.DataFrame, feature_version: str | None = None) -> pd.DataFrame:
    """Predict a canonical panel frame (UTC-aware timestamps) with a loaded pyfunc ensemble."""
    return model.predict(to_model_input(frame, feature_version))


__all__: Sequence[str] = (
    "EnsembleModel", "EnsemblePackage", "build_ensemble_artifacts", "ensemble_pip_requirements",
    "ensemble_signature", "load_panel_ensemble", "model_input_example", "package_ensemble", "predict_frame",
    "save_ensemble_model", "to_model_input",
)
