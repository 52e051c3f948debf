"""The ``alphaforge`` command: one subcommand per pipeline stage, plus helpers.

``dvc repro`` runs the stages in order and skips what has not changed; each
subcommand runs one stage by hand with the same code (``pipelines/<stage>.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from alphaforge.logs import setup_logging

app = typer.Typer(
    help="alphaforge: market data in, validated, featured, walk-forward trained and honestly evaluated.\n\n"
    "Run the whole pipeline with `dvc repro` (or `make run`); each command below runs one stage, "
    "reading params.yaml from the current folder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="the params file to read")
ProjectOption = typer.Option(Path("."), "--project", help="the folder holding bentos/ (the repository root)")


def run_stage_or_exit(name: str, params_path: Path, **options: object) -> None:
    """Run a stage; a data or configuration problem ends with its message and exit code 2, not a traceback."""
    from alphaforge.config import ConfigError, load_params
    from alphaforge.drift import AlertDeliveryError
    from alphaforge.promotion import PromotionError, RegistryError
    from alphaforge.schema import DataError
    from alphaforge.stages import run_stage

    setup_logging()
    try:
        run_stage(name, load_params(params_path), **options)
    except (DataError, ConfigError, PromotionError, RegistryError, AlertDeliveryError) as err:
        typer.secho(f"alphaforge {name}: failed\n{err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err


@app.command()
def ingest(params: Path = ParamsOption) -> None:
    """Read the source named by ingest.source into data/raw/bars.parquet (canonical long schema).

    Sources: skfolio_sp500 (default), bokeh_stocks, arch_sp500, backtesting_goog, backtesting_eurusd, fastquant_pse
    (257 Philippine names, OHLCV), synthetic,
    or file (your CSV/Parquet with timestamp, symbol, close and optionally open, high, low, volume, bid, ask,
    bid_size, ask_size). ingest.start / ingest.end / ingest.symbols take a slice.
    """
    run_stage_or_exit("ingest", params)


@app.command()
def validate(params: Path = ParamsOption) -> None:
    """Check the bars with a Great Expectations suite; fail, naming rule, column and rows, on bad data.

    Writes reports/validation/result.json and index.html either way; only data that passes reaches
    data/validated/bars.parquet, so nothing downstream runs on bad data.
    """
    run_stage_or_exit("validate", params)


features_app = typer.Typer(
    help="Compute indicators (past data only) and forward labels into data/features/dataset.parquet "
    "(no subcommand: the stage); `alphaforge features list` lists the feature definitions.",
    invoke_without_command=True,
)
app.add_typer(features_app, name="features")


@features_app.callback()
def features(ctx: typer.Context, params: Path = ParamsOption) -> None:
    """Compute indicators (past data only) and forward labels into data/features/dataset.parquet."""
    if ctx.invoked_subcommand is None:
        run_stage_or_exit("features", params)


@app.command()
def tune(
    params: Path = ParamsOption,
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="worker processes sharing each study"),
) -> None:
    """Walk-forward Optuna search per family (tune.families); best params to models/tuned/best_params.json.

    The objective is the mean out-of-sample tune.metric (rank_ic, sharpe or directional_accuracy) over the
    walk-forward folds, with pruning after each fold. The study lives in tune.storage (SQLite under
    .alphaforge/ by default; a PostgreSQL URL, or $ALPHAFORGE_OPTUNA_STORAGE, for several workers or machines).
    Workers started anywhere against the same storage share the study; a killed worker can simply be restarted.
    Budget: tune.n_trials finished trials per study, tune.timeout_seconds of wall clock per worker.
    """
    run_stage_or_exit("tune", params, workers=workers)


@app.command()
def train(params: Path = ParamsOption) -> None:
    """Walk-forward training of train.families with purge and embargo, starting from the tuned parameters.

    Writes out-of-fold predictions (with intervals), fold and final models under models/trained/, gain and
    permutation importance (and Transformer attention maps) under reports/train/, and one MLflow run.
    """
    run_stage_or_exit("train", params)


@app.command()
def stack(params: Path = ParamsOption) -> None:
    """Combine the families into one ensemble: stacking (non-negative ridge or LightGBM meta-learner) or voting.

    The meta-learner sees only out-of-fold predictions (checked: a base prediction made on its own training
    data stops the stage); its skill is judged by a further walk-forward over them. The ensemble, with every base
    model, the feature spec and an Hedge online-weights seed, is logged as one MLflow pyfunc and registered.
    """
    run_stage_or_exit("stack", params)


@app.command()
def evaluate(params: Path = ParamsOption) -> None:
    """Out-of-sample IC, accuracy and net-of-cost backtest of every model against naive baselines, with plots."""
    run_stage_or_exit("evaluate", params)


@app.command()
def drift(params: Path = ParamsOption) -> None:
    """Evidently drift of the newest bars (drift.current_window_bars) against the champion's training window.

    Per-feature drift with thresholds calibrated on the reference, prediction drift, model performance where labels
    have matured (rank IC, directional accuracy) and data quality (missing bars, stale symbols, NaN rates).
    Writes reports/drift/report.html, summary.json and alert.json; a blocking alert stops the promote stage.
    Alerts are appended to drift.alerts_path and posted to drift.webhook_url when set.
    """
    run_stage_or_exit("drift", params)


@app.command()
def monitor(
    params: Path = ParamsOption,
    hours: float = typer.Option(None, "--hours", help="how far back to read the request log (default monitor.lookback_hours)"),
    log_dir: str = typer.Option(None, "--log-dir", help="the service's request log folder (default monitor.log_dir)"),
    follow: bool = typer.Option(False, "--follow", help="keep running: live figures within a second of the logs"),
    bars: Path = typer.Option(None, "--bars", help="--follow: the stream's bar log (default feature_store.bar_log)"),
    service_url: str = typer.Option(None, "--service-url", help="--follow: where /admin/outcomes is (online weights)"),
    max_seconds: float = typer.Option(None, "--max-seconds", help="--follow: stop after this long (default: never)"),
) -> None:
    """Served traffic against the champion's reference data: drift, live IC and hit rate, degradation alert, lag.

    Reads the service's request log, joins realised returns as they mature, and raises a degradation alert when the
    recent window's IC or hit rate falls below monitor.degradation_factor x the earlier one's. Writes reports/monitor/.
    With --follow it tails the request log and the stream's bar log instead (alphaforge.live_monitor): rolling
    live IC, hit rate, net P&L and feature shift per variant in reports/monitor/live.json and live.prom, matured
    outcomes into the online weights, and a blocking degradation triggers the retrain DAG (monitor.retrain_cooldown).
    """
    if follow:
        from alphaforge.config import ConfigError, load_params
        from alphaforge.live_monitor import follow_from_params
        from alphaforge.schema import DataError

        setup_logging()
        try:
            follow_from_params(load_params(params), log_dir=log_dir, bar_log=bars, service_url=service_url,
                               max_seconds=max_seconds)
        except (DataError, ConfigError, ValueError) as err:
            typer.secho(f"alphaforge monitor --follow: failed\n{err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from err
        except KeyboardInterrupt:
            pass
        return
    run_stage_or_exit("monitor", params, hours=hours, log_dir=log_dir)


@app.command()
def promote(params: Path = ParamsOption) -> None:
    """Register the ensemble as `challenger`; make it `champion` only if it passes every promote: rule.

    It must beat the champion on the latest out-of-sample window by promote.margin on promote.metric, beat every
    naive baseline there, have passed data validation and raised no blocking drift alert. The decision and its
    reasons land in reports/promotion/decision.json and on the MLflow version and run. The alias switch is the
    last step: a failure before it (a dead tracking server, a racing promotion) leaves the champion unchanged.
    """
    run_stage_or_exit("promote", params)


@app.command()
def regimes(params: Path = ParamsOption) -> None:
    """Market regimes: a Gaussian HMM (forward-filtered, causal) or mixture over market return and volatility,
    fitted on the first walk-forward training window only; regime and probabilities per bar."""
    run_stage_or_exit("regimes", params)


@app.command()
def risk(params: Path = ParamsOption) -> None:
    """Next-bar volatility by GARCH, LightGBM and EWMA, compared out of sample (QLIKE, MSE); VaR breach
    backtests with Kupiec's test."""
    run_stage_or_exit("risk", params)


@app.command()
def rl(params: Path = ParamsOption) -> None:
    """Optional: PPO and SAC agents in a no-look-ahead trading environment (fills at the next bar), trained on the
    walk-forward train slices, compared on the test slices with buy-and-hold and the ensemble's signal."""
    run_stage_or_exit("rl", params)


registry_app = typer.Typer(help="The MLflow model registry: versions, aliases, rollback.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _model_name(params: Path) -> str:
    from alphaforge.config import load_params

    return load_params(params).promote.model_name


@registry_app.command("show")
def registry_show(params: Path = ParamsOption) -> None:
    """List the registered model's versions, their aliases (champion, challenger) and metrics."""
    from alphaforge.promotion import RegistryError, show

    try:
        typer.echo(show(_model_name(params)).table())
    except RegistryError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err


@registry_app.command("rollback")
def registry_rollback(params: Path = ParamsOption) -> None:
    """Put `champion` back on the previous champion version (one alias switch)."""
    from alphaforge.promotion import PromotionError, RegistryError, rollback

    try:
        outcome = rollback(_model_name(params))
    except (RegistryError, PromotionError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    typer.echo(f"champion v{outcome.from_version} -> v{outcome.to_version} ({outcome.seconds * 1000:.0f} ms)")


@registry_app.command("crown")
def registry_crown(
    version: str = typer.Argument(..., help="the registered version to make champion (see `alphaforge registry show`)"),
    reason: str = typer.Option(..., "--reason", help="why, kept on the version and in the model's last event"),
    params: Path = ParamsOption,
) -> None:
    """Make VERSION the champion by hand, past the promotion gate; recorded, and undone by `registry rollback`."""
    from alphaforge.promotion import RegistryError, crown

    try:
        outcome = crown(_model_name(params), version, reason)
    except RegistryError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    typer.echo(f"champion {outcome.from_version} -> v{outcome.to_version} by hand ({reason}); "
               "`alphaforge serve reload` tells a running service")


@registry_app.command("unlock")
def registry_unlock(params: Path = ParamsOption) -> None:
    """Remove a promotion lock left behind by a crashed promote stage."""
    from alphaforge.promotion import force_unlock

    name = _model_name(params)
    typer.echo(f"lock on {name} removed" if force_unlock(name) else f"no lock on {name}")


ab_app = typer.Typer(help="A/B verdicts: champion against challenger on served traffic.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")


@ab_app.command("report")
def ab_report(
    hours: float = typer.Option(None, "--hours", help="how far back to read the request log (default ab.lookback_hours)"),
    log_dir: str = typer.Option(None, "--log-dir", help="the service's request log folder (default ab.log_dir)"),
    bars: Path = typer.Option(None, "--bars", help="canonical bars (Parquet or CSV) for the realised returns "
                              "(default: forward_return_1 of data/features/dataset.parquet)"),
    out_dir: str = typer.Option(None, "--out", help="where report.json and report.txt go (default ab.out_dir)"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report instead of the text"),
    params: Path = ParamsOption,
) -> None:
    """Compare champion and challenger on the same requests of the request log (served with
    serving.challenger_share or serving.shadow), joined with next-bar execution returns: live IC, hit rate, net
    P&L (evaluate.cost_bps), latency, and an always-valid confidence sequence on the per-bar difference.
    Says "keep", "promote challenger" or "not enough evidence yet"."""
    import pandas as pd

    from alphaforge.ab import report_text, run_ab_report
    from alphaforge.config import ConfigError, load_params
    from alphaforge.features import compute_labels
    from alphaforge.paths import Paths
    from alphaforge.schema import DataError

    setup_logging()
    try:
        settings = load_params(params)
        ab = settings.ab if hours is None else settings.ab.model_copy(update={"lookback_hours": hours})
        if bars is not None:
            frame = pd.read_parquet(bars) if bars.suffix == ".parquet" else pd.read_csv(bars)
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
            realised = compute_labels(frame, 1, settings.evaluate.execution)
        else:
            if not Paths.dataset.is_file():
                raise DataError(f"{Paths.dataset} is missing: run the features stage, or pass --bars")
            realised = pd.read_parquet(Paths.dataset, columns=["timestamp", "symbol", "forward_return_1"])
        report = run_ab_report(log_dir or ab.log_dir, realised, ab, cost_bps=settings.evaluate.cost_bps,
                               out_dir=out_dir)
    except (DataError, ConfigError) as err:
        typer.secho(f"alphaforge ab report: failed\n{err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else report_text(report), nl=as_json)


serve_app = typer.Typer(
    help="The prediction service: the champion over HTTP (BentoML) and gRPC. Run from the repository root, "
         "or name it with --project.",
    no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("start")
def serve_start(
    port: int = typer.Option(None, "--port", help="HTTP port (default serving.http_port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (0.0.0.0 inside a container)"),
    grpc_port: int = typer.Option(None, "--grpc-port", help="gRPC port (default serving.grpc_port; 0: none)"),
    model: str = typer.Option(None, "--model", help="registered model to serve (default serving.model_name)"),
    params: Path = ParamsOption,
    project: Path = ProjectOption,
) -> None:
    """Serve the model behind the `champion` alias (bentoml serve bentos.service:AlphaforgeService).

    Loads the champion from the MLflow registry (MLFLOW_TRACKING_URI, else the local store), falls back to the
    previous champion if it cannot load, follows alias moves (polling every serving.poll_seconds), logs requests to
    serving.request_log_dir for `alphaforge monitor`. Endpoints: /predict, /predict_bars, /model_info,
    /admin/reload, /v1/predict, /v1/predict_arrow, /readyz, /metrics, /docs; gRPC on --grpc-port.
    """
    import os

    from alphaforge.config import load_params
    from alphaforge.serving.admin import AdminTokenMissing, admin_token
    from alphaforge.serving.launcher import service_environment

    try:  # the service refuses too; saying so here spares a start-up
        admin_token([host], os.environ)
    except AdminTokenMissing as err:
        typer.secho(f"alphaforge serve start: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    settings = load_params(params).serving
    env = service_environment(project, {**os.environ, "ALPHAFORGE_PARAMS": str(params.resolve())})
    if grpc_port is not None:
        env["ALPHAFORGE_GRPC_PORT"] = str(grpc_port)
    if model:
        env["ALPHAFORGE_MODEL_NAME"] = model
    if host != "127.0.0.1":
        env.setdefault("ALPHAFORGE_GRPC_BIND", host)
    command = [str(Path(sys.executable).with_name("bentoml")), "serve", "bentos.service:AlphaforgeService",
               "--host", host, "--port", str(port or settings.http_port)]
    typer.echo(f"serving {model or settings.model_name}@{settings.alias} on http://{host}:{port or settings.http_port}"
               f" (gRPC :{env.get('ALPHAFORGE_GRPC_PORT', settings.grpc_port)}); Ctrl-C stops it")
    sys.stdout.flush()
    # become `bentoml serve` (same PID): a SIGTERM to this process, from a supervisor or `kill`, reaches the
    # server itself, which stops its worker and the worker's request-log writer; a child would be left running
    os.execve(command[0], command, env)


@serve_app.command("build")
def serve_build(
    version: str = typer.Option(None, "--version", help="Bento version tag (default: BentoML makes one)"),
    project: Path = ProjectOption,
) -> None:
    """Build a Bento of the service (bentoml build -f PROJECT/bentos/bentofile.yaml PROJECT); prints its tag."""
    import subprocess

    command = [str(Path(sys.executable).with_name("bentoml")), "build", "-f", str(project / "bentos/bentofile.yaml"),
               str(project)]
    if version:
        command += ["--version", version]
    code = subprocess.call(command)
    if code != 0:
        typer.secho("alphaforge serve build: bentoml build failed (see above)", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@serve_app.command("reload")
def serve_reload(
    url: str = typer.Option(None, "--url", envvar="ALPHAFORGE_SERVICE_URL",
                            help="the running service (default $ALPHAFORGE_SERVICE_URL, else http://127.0.0.1:PORT)"),
    params: Path = ParamsOption,
) -> None:
    """Tell a running service to check the registry now and swap to a moved champion (POST /admin/reload).

    Sends $ALPHAFORGE_ADMIN_TOKEN as a bearer token when it is set (required by a service bound beyond loopback)."""
    import os
    import urllib.error
    import urllib.request

    from alphaforge.config import load_params
    from alphaforge.serving.admin import ADMIN_TOKEN_ENV

    target = (url or f"http://127.0.0.1:{load_params(params).serving.http_port}").rstrip("/") + "/admin/reload"
    headers = {"Content-Type": "application/json"}
    if os.environ.get(ADMIN_TOKEN_ENV, "").strip():
        headers["Authorization"] = f"Bearer {os.environ[ADMIN_TOKEN_ENV].strip()}"
    request = urllib.request.Request(target, data=b"{}", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            typer.echo(response.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        typer.secho(f"alphaforge serve reload: {target} did not answer ({err}); is the service running?",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err


@app.command()
def leaderboard(
    metrics: Path = typer.Option(Path("reports/evaluate/leaderboard.txt"), help="the leaderboard the evaluate stage wrote"),
) -> None:
    """Print the latest out-of-sample leaderboard (model vs baselines), and the optional rl stage's beside it."""
    if not metrics.exists():
        typer.secho(f"{metrics} not found: run `dvc repro` (or `make run`) first", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo(metrics.read_text().rstrip())
    rl_table = metrics.parent.parent / "rl" / "leaderboard.txt"
    if rl_table.is_file():  # `dvc repro rl` ran: its agents against buy-and-hold and the ensemble's signal
        typer.echo("\n" + rl_table.read_text().rstrip())


@app.command()
def sources() -> None:
    """List the data sources ingest can read."""
    from alphaforge.data.ingest import SOURCES

    for name, description in SOURCES.items():
        typer.echo(f"{name:20s} {description}")


@app.command("show-params")
def show_params(params: Path = ParamsOption) -> None:
    """Print params.yaml as the stages see it, every default filled in (and checked)."""
    from alphaforge.config import ConfigError, load_params

    try:
        loaded = load_params(params)
    except ConfigError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    typer.echo(json.dumps(loaded.model_dump(by_alias=True, mode="json"), indent=2))


# ---- feature store: `features list`, `stream` ----------------------------------------------------


@features_app.command("list")
def features_list(
    params: Path = ParamsOption,
    columns: str = typer.Option(None, "--columns", help="comma-separated bar columns (default: feature_store)"),
    single_symbol: bool = typer.Option(False, "--single-symbol", help="one symbol: no cross-sectional ranks"),
    intraday: bool = typer.Option(None, "--intraday/--daily", help="sub-daily bars: `hour` (default: feature_store)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    regime_model: Path = typer.Option(None, "--regime-model",
                                      help="a fitted regime model (models/regimes/model.json): list its regime_prob_*"),
) -> None:
    """List the feature definitions (name, group, window in bars, inputs, version, description) for such bars."""
    from alphaforge.config import ConfigError, load_params
    from alphaforge.featurestore.definitions import feature_definitions

    try:
        loaded = load_params(params)
    except ConfigError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    store = loaded.feature_store
    bar_columns = {c.strip() for c in columns.split(",") if c.strip()} if columns else set(store.bar_columns)
    if regime_model is not None and not regime_model.is_file():
        typer.secho(f"--regime-model {regime_model}: no such file", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    regimes = _stream_regime_model(loaded.features.regimes, regime_model) if regime_model is not None else None
    definitions = feature_definitions(loaded.features, columns=bar_columns, multi_symbol=not single_symbol,
                                      intraday=store.intraday if intraday is None else intraday,
                                      regime_model=regimes)
    if as_json:
        typer.echo(json.dumps([d.as_dict() for d in definitions], indent=2))
        return
    typer.echo(f"{'name':24s} {'group':15s} {'window':>6s} {'rec':3s} {'inputs':22s} version  description")
    for d in definitions:
        typer.echo(f"{d.name:24s} {d.group:15s} {d.window:6d} {'yes' if d.recursive else '':3s} "
                   f"{','.join(d.inputs):22s} {d.version:8s} {d.description}")



@app.command()
def stream(
    source: str = typer.Argument("-", help="a CSV/Parquet file of bars to replay, or - for stdin lines"),
    params: Path = ParamsOption,
    fmt: str = typer.Option("auto", "--format", help="stdin lines: auto, jsonl or csv (a header line first)"),
    on_bad_bar: str = typer.Option("stop", "--on-bad-bar", help="stop (default) or skip a bar that breaks a rule"),
    pace: float = typer.Option(0.0, "--pace", min=0.0, help="seconds to wait between timestamps (replay speed)"),
    redis_url: str = typer.Option(None, "--redis-url", help="override feature_store.redis_url"),
    flush_idle: float = typer.Option(1.0, "--flush-idle", min=0.0,
                                     help="stdin: write a timestamp's bars after this many idle seconds (0: never)"),
    regime_model: Path = typer.Option(None, "--regime-model",
                                      help="the fitted regime model whose probabilities to store (features.regimes): "
                                           "a model.json, or a served model's spec.json (its regime_model); "
                                           "default models/regimes/model.json beside the params file, when "
                                           "it exists"),
) -> None:
    """Bars in, features out: validate each bar, update the features incrementally, write them to the store.

    The latest feature vector of each symbol goes to Redis (feature_store.redis_url, key_prefix, ttl_seconds)
    or, without a URL, to this process's memory. Every processed bar is logged to feature_store.bar_log with the
    engine's state, so a restarted stream (after a crash, even kill -9) resumes where the log ends and skips
    the bars it already stored. Bars must come in time order, grouped by timestamp; on stdin a timestamp is
    written when the next one begins or after --flush-idle seconds without input.
    """
    from alphaforge.config import ConfigError, load_params
    from alphaforge.featurestore.incremental import SuspensionRule
    from alphaforge.featurestore.online import StoreUnavailable
    from alphaforge.featurestore.stream import run_stream
    from alphaforge.schema import DataError

    setup_logging()
    if fmt not in ("auto", "jsonl", "csv") or on_bad_bar not in ("stop", "skip"):
        typer.secho("alphaforge stream: --format is auto, jsonl or csv; --on-bad-bar is stop or skip",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    try:
        loaded = load_params(params)
        store_params = loaded.feature_store
        if redis_url:
            store_params = store_params.model_copy(update={"redis_url": redis_url})
        summary = run_stream(loaded.features, store_params, source, fmt=fmt,  # type: ignore[arg-type]
                             on_bad_bar=on_bad_bar, pace_seconds=pace,  # type: ignore[arg-type]
                             naive_timezone=loaded.ingest.naive_timezone, flush_idle_seconds=flush_idle,
                             regime_model=_stream_regime_model(loaded.features.regimes, regime_model, params),
                             suspensions=SuspensionRule(max_gap_bars=loaded.validate_.max_gap_bars,
                                                        max_closure_days=loaded.validate_.max_closure_days))
    except (DataError, ConfigError, StoreUnavailable, FileNotFoundError) as err:
        typer.secho(f"alphaforge stream: failed\n{err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from err
    typer.echo(json.dumps({"steps": summary.steps, "bars": summary.bars, "already_stored": summary.already_stored,
                           "bad_bars": summary.bad_bars, "replayed_steps": summary.replayed_steps,
                           "last_timestamp": summary.last_timestamp}))


def _stream_regime_model(enabled: bool, path: Path | None, params_path: Path | None = None) -> Any:
    """The regime model the streamer filters with: ``path``, else the regimes stage's file when it exists.

    The stage's file is looked for beside ``params_path`` (the workspace whose params the stream runs on), not in
    the working directory: a stream started elsewhere with explicit params must not pick up whatever model another
    checkout's pipeline left in its working directory.
    """
    from alphaforge.regimes import RegimeModel

    if not enabled:
        return None
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"--regime-model {path}: no such file")
        payload = json.loads(path.read_text())
        if "regime_model" in payload:  # a trained model's spec.json: the regime model it was trained with
            if not payload["regime_model"]:
                raise FileNotFoundError(f"--regime-model {path}: this model's spec records no regime model")
            payload = payload["regime_model"]
        return RegimeModel.from_json(payload)
    default = (params_path.parent if params_path is not None else Path()) / "models/regimes/model.json"
    if default.is_file():
        logging.getLogger("alphaforge.stream").info("stream: regime probabilities from %s", default)
        return RegimeModel.load(default)
    logging.getLogger("alphaforge.stream").warning(
        "stream: features.regimes is on but %s does not exist (run `dvc repro regimes`): storing no regime_prob_* "
        "features, so /predict_symbols refuses models that use them", default)
    return None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
