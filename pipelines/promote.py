"""DVC stage `promote`: see `python pipelines/promote.py --help`, `src/alphaforge/stages/promote.py` and dvc.yaml."""

from alphaforge.stages.promote import main

if __name__ == "__main__":
    raise SystemExit(main())
