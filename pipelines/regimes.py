"""DVC stage `regimes`: see `python pipelines/regimes.py --help`, `src/alphaforge/stages/regimes.py` and dvc.yaml."""

from alphaforge.stages.regimes import main

if __name__ == "__main__":
    raise SystemExit(main())
