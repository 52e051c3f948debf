"""DVC stage `tune`: see `python pipelines/tune.py --help`, `src/alphaforge/stages/tune.py` and dvc.yaml."""

from alphaforge.stages.tune import main

if __name__ == "__main__":
    raise SystemExit(main())
