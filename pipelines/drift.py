"""DVC stage `drift`: see `python pipelines/drift.py --help`, `src/alphaforge/stages/drift.py` and dvc.yaml."""

from alphaforge.stages.drift import main

if __name__ == "__main__":
    raise SystemExit(main())
