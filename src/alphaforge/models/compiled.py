"""Compiled tree inference: LightGBM members turned into native code when the ensemble is packaged.

LightGBM's own predictor walks its trees through a generic interpreter: for the default forecaster
(300 trees of 31 leaves) that is ~17 µs per row in a batch and ~45 µs for one row on a 2-core machine.
`lleaves <https://github.com/siboehm/lleaves>`_ compiles the same trees with LLVM into a function
that gives the same numbers (to the last bit in our checks) 3-4x faster. Compiling takes seconds, so it
happens once, when the stack stage packages the ensemble for the registry (:func:`compile_members`,
called by :func:`alphaforge.pyfunc.build_ensemble_artifacts`), never when the service loads a model:
loading the object file takes ~10-20 ms.

Layout of the ``compiled_trees`` artifact folder: ``manifest.json`` and, per booster, the LightGBM text
model and its object file, named ``<family>.<role>.txt`` / ``.o``. Roles (:func:`boosters_of`): ``model``
for a LightGBM forecaster, ``base`` for one inside a conformal wrapper, ``point``/``lower``/``upper`` for
the quantile forecaster. The code is built for the baseline CPU of the target triple (``x86-64``: any
64-bit x86 machine), so a model packaged on one machine runs on another of the same architecture.

Serving (:func:`load_compiled`) uses a compiled booster only when all of these hold, and otherwise keeps
LightGBM's own predictor and says why in the log: lleaves imports, the manifest's triple is this
machine's, the files are there, and the compiled function gives the booster's predictions (to 1e-12)
on probe rows. A model packaged without compilation (``ensemble.compile_trees: false``) simply has no
such folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TARGET_CPU = "x86-64"  # the architecture's baseline: portable across x86-64 machines
COMPILE_OPTIONS: dict[str, Any] = {"finline": False, "fcodemodel": "large"}  # finline=False: 4x faster compile


def boosters_of(forecaster: Any) -> dict[str, Any]:
    """The LightGBM boosters inside a forecaster, by role (empty when it holds none)."""
    from alphaforge.models.tabular import LightGBMForecaster
    from alphaforge.models.uncertainty import ConformalRegressor, QuantileLightGBM

    if isinstance(forecaster, LightGBMForecaster):
        return {"model": forecaster.booster_}
    if isinstance(forecaster, ConformalRegressor) and isinstance(forecaster.model_, LightGBMForecaster):
        return {"base": forecaster.model_.booster_}
    if isinstance(forecaster, QuantileLightGBM):
        return {role: getattr(forecaster, f"{role}_").booster_ for role in ("point", "lower", "upper")}
    return {}


def _triple_and_cpu() -> tuple[str, str]:
    import llvmlite.binding as llvm

    return llvm.get_process_triple(), TARGET_CPU if llvm.get_process_triple().startswith("x86_64") else ""


def compile_members(members: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any] | None:
    """Compile every LightGBM booster of ``members`` (family -> forecaster) into ``out_dir``; the manifest.

    None when there is nothing to compile. Raises ``ImportError`` when lleaves is not installed.
    """
    import lleaves

    boosters = {(family, role): booster for family, forecaster in members.items()
                for role, booster in boosters_of(forecaster).items()}
    if not boosters:
        return None
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    triple, cpu = _triple_and_cpu()
    entries: dict[str, Any] = {}
    for (family, role), booster in boosters.items():
        stem = f"{family}.{role}"
        text, obj = folder / f"{stem}.txt", folder / f"{stem}.o"
        obj.unlink(missing_ok=True)  # lleaves loads an existing cache file without checking it
        booster.save_model(str(text))
        started = time.perf_counter()
        model = lleaves.Model(model_file=str(text))
        model.compile(cache=str(obj), target_cpu=cpu or None, target_cpu_features="" if cpu else None,
                      **COMPILE_OPTIONS)
        entries[stem] = {"family": family, "role": role, "model_file": text.name, "object_file": obj.name,
                         "trees": int(model.num_trees()), "features": int(model.num_feature()),
                         "compile_seconds": round(time.perf_counter() - started, 2)}
        log.info("compiled %s's %s booster (%d trees) in %.1f s", family, role, model.num_trees(),
                 entries[stem]["compile_seconds"])
    manifest = {"compiler": f"lleaves {lleaves.__version__}" if hasattr(lleaves, "__version__") else "lleaves",
                "triple": triple, "target_cpu": cpu, "options": COMPILE_OPTIONS, "boosters": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class CompiledBooster:
    """A compiled booster's predictions for a rows x features matrix: the compiled function called directly,
    on this thread (``lleaves.Model.predict`` adds ~10 µs of checks per call, which the caller has done)."""

    def __init__(self, model: Any) -> None:
        import ctypes

        self.model = model
        self.n_features = int(model.num_feature())
        # forest_root(double *rows, double *out, int start, int end), called with raw addresses (a ctypes
        # pointer cast per call cost more than the trees of one row); CFUNCTYPE drops the GIL during the call
        address = model._execution_engine.get_function_address("forest_root")
        self._entry = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)(address)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"compiled trees: expected rows x {self.n_features} features, got shape {rows.shape}")
        out = np.empty(rows.shape[0], dtype=np.float64)
        self._entry(rows.ctypes.data, out.ctypes.data, 0, rows.shape[0])
        return out


def load_compiled(folder: str | Path | None, members: Mapping[str, Any]) -> dict[tuple[str, str], CompiledBooster]:
    """The usable compiled boosters of ``members`` from a ``compiled_trees`` folder, by (family, role).

    Anything unusable (see the module docstring) is left out with a log line saying why; the caller keeps
    LightGBM's predictor for it.
    """
    if folder is None or not (Path(folder) / MANIFEST).is_file():
        return {}
    folder = Path(folder)
    try:
        import lleaves
    except ImportError as err:
        log.warning("compiled trees in %s not used: lleaves is not installed (%s)", folder, err)
        return {}
    manifest = json.loads((folder / MANIFEST).read_text())
    triple, _ = _triple_and_cpu()
    if manifest.get("triple") != triple:
        log.warning("compiled trees in %s not used: built for %s, this machine is %s", folder,
                    manifest.get("triple"), triple)
        return {}
    out: dict[tuple[str, str], CompiledBooster] = {}
    rng = np.random.default_rng(0)
    for stem, entry in manifest.get("boosters", {}).items():
        booster = boosters_of(members.get(entry["family"])).get(entry["role"])
        text, obj = folder / entry["model_file"], folder / entry["object_file"]
        if booster is None or not text.is_file() or not obj.is_file():
            log.warning("compiled trees %s not used: its booster or files are missing", stem)
            continue
        cpu = manifest.get("target_cpu") or None
        model = lleaves.Model(model_file=str(text))
        model.compile(cache=str(obj), target_cpu=cpu, target_cpu_features="" if cpu else None,
                      **manifest.get("options", COMPILE_OPTIONS))
        n_features = int(booster.num_feature())
        if model.num_model_per_iteration() != 1:
            log.warning("compiled trees %s not used: multiclass boosters keep LightGBM's predictor", stem)
            continue
        if model.num_feature() != n_features:
            log.warning("compiled trees %s not used: %d features, the booster has %d", stem, model.num_feature(),
                        n_features)
            continue
        probe = rng.normal(size=(16, n_features))
        probe[::4, 0] = np.nan  # missing values take the trees' default branches too
        expected = booster.predict(probe, num_threads=1)
        code = CompiledBooster(model)
        got = code(probe)
        if not np.allclose(got, expected, rtol=1e-12, atol=1e-12, equal_nan=True):
            log.warning("compiled trees %s not used: its predictions differ from the booster's by up to %.3g",
                        stem, float(np.nanmax(np.abs(got - expected))))
            continue
        out[(entry["family"], entry["role"])] = code
    return out
