"""DVC stage `features`: see `python pipelines/features.py --help`, `src/alphaforge/stages/features.py` and dvc.yaml."""

from alphaforge.stages.features import main

if __name__ == "__main__":
    raise SystemExit(main())
