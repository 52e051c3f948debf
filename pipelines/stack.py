"""DVC stage `stack`: see `python pipelines/stack.py --help`, `src/alphaforge/stages/stack.py` and dvc.yaml."""

from alphaforge.stages.stack import main

if __name__ == "__main__":
    raise SystemExit(main())
