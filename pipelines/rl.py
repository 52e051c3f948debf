"""DVC stage `rl`: see `python pipelines/rl.py --help`, `src/alphaforge/stages/rl.py` and dvc.yaml."""

from alphaforge.stages.rl import main

if __name__ == "__main__":
    raise SystemExit(main())
