"""DVC stage `evaluate`: see `python pipelines/evaluate.py --help`, `src/alphaforge/stages/evaluate.py` and dvc.yaml."""

from alphaforge.stages.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
