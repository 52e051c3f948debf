"""Every file a pipeline stage reads or writes, relative to a root folder (the repository root by default).

``dvc.yaml`` declares the same paths (``tests/code/test_dvc_contract.py`` checks the two agree).
``Paths.raw_bars`` on the class is the relative path; ``Paths(root).raw_bars`` is it under ``root``, so a
test runs a stage in a temporary folder with ``stage.run(params, root=tmp_path)``. Single paths can be
pointed elsewhere: ``Paths(root, trained_dir=other)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, overload


class _At:
    """A path of the layout: relative on the class, under ``root`` (or overridden) on an instance."""

    def __init__(self, relative: str) -> None:
        self.relative = Path(relative)
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Path: ...
    @overload
    def __get__(self, obj: Paths, owner: type) -> Path: ...

    def __get__(self, obj: Paths | None, owner: type | None = None) -> Path:
        if obj is None:
            return self.relative
        return obj.overrides.get(self.name) or obj.root / self.relative


class Paths:
    """The pipeline's file layout under ``root``."""

    # ingest
    external_dir = _At("data/external")
    raw_bars = _At("data/raw/bars.parquet")
    ingest_dropped = _At("data/quarantine/duplicates.parquet")
    ingest_summary = _At("reports/ingest/summary.json")
    # validate
    quarantine = _At("data/quarantine/rows.parquet")
    validated_bars = _At("data/validated/bars.parquet")
    validation_json = _At("reports/validation/result.json")
    validation_html = _At("reports/validation/index.html")
    validation_summary = _At("reports/validation/summary.json")
    # regimes
    regime_model = _At("models/regimes/model.json")
    regime_features = _At("data/regimes/features.parquet")
    regime_summary = _At("reports/regimes/summary.json")
    regime_plot = _At("reports/regimes/regimes.png")
    # features
    dataset = _At("data/features/dataset.parquet")
    features_summary = _At("reports/features/summary.json")
    # tune
    best_params = _At("models/tuned/best_params.json")
    tune_summary = _At("reports/tune/summary.json")
    # train
    oof = _At("data/predictions/oof.parquet")
    trained_dir = _At("models/trained")
    run_reference = _At("models/run.json")
    train_reports = _At("reports/train")
    train_metrics = _At("reports/train_metrics.json")
    # stack
    ensemble_dir = _At("models/ensemble")
    ensemble_model_dir = _At("models/ensemble/pyfunc")
    stack_oof = _At("data/predictions/stack_oof.parquet")
    stack_metrics = _At("reports/stack/metrics.json")
    # evaluate
    evaluate_metrics = _At("reports/evaluate/metrics.json")
    leaderboard = _At("reports/evaluate/leaderboard.txt")
    plots_dir = _At("reports/evaluate/plots")
    cards_dir = _At("reports/evaluate/model_cards")
    report_html = _At("reports/evaluate/report.html")
    # drift, promote, monitor
    drift_dir = _At("reports/drift")
    drift_alert = _At("reports/drift/alert.json")
    decision = _At("reports/promotion/decision.json")
    monitor_dir = _At("reports/monitor")
    # risk, rl
    risk_forecasts = _At("data/risk/forecasts.parquet")
    risk_metrics = _At("reports/risk/metrics.json")
    rl_reports = _At("reports/rl")
    rl_metrics = _At("reports/rl/metrics.json")
    rl_models = _At("models/rl")

    def __init__(self, root: str | Path = ".", **overrides: str | Path) -> None:
        unknown = sorted(k for k in overrides if not isinstance(getattr(type(self), k, None), Path))
        if unknown:
            raise TypeError(f"Paths: no such path(s) {unknown}; known: {sorted(self.names())}")
        self.root = Path(root)
        self.overrides: dict[str, Path] = {k: Path(v) for k, v in overrides.items()}

    @classmethod
    def names(cls) -> list[str]:
        """The name of every path in the layout."""
        return [name for name, value in vars(cls).items() if isinstance(value, _At)]

    def spec(self) -> Path:
        """The trained models' spec (features, target, horizon, families)."""
        return self.trained_dir / "spec.json"

    def __repr__(self) -> str:
        extra = f", overrides={self.overrides}" if self.overrides else ""
        return f"Paths({str(self.root)!r}{extra})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Paths) and (self.root, self.overrides) == (other.root, other.overrides)

    def __hash__(self) -> int:
        return hash((self.root, tuple(sorted(self.overrides.items()))))
