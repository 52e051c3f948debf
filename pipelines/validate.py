"""DVC stage `validate`: see `python pipelines/validate.py --help`, `src/alphaforge/stages/validate.py` and dvc.yaml."""

from alphaforge.stages.validate import main

if __name__ == "__main__":
    raise SystemExit(main())
