"""DVC stage `risk`: see `python pipelines/risk.py --help`, `src/alphaforge/stages/risk.py` and dvc.yaml."""

from alphaforge.stages.risk import main

if __name__ == "__main__":
    raise SystemExit(main())
