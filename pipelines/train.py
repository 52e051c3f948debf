"""DVC stage `train`: see `python pipelines/train.py --help`, `src/alphaforge/stages/train.py` and dvc.yaml."""

from alphaforge.stages.train import main

if __name__ == "__main__":
    raise SystemExit(main())
