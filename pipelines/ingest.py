"""DVC stage `ingest`: see `python pipelines/ingest.py --help`, `src/alphaforge/stages/ingest.py` and dvc.yaml."""

from alphaforge.stages.ingest import main

if __name__ == "__main__":
    raise SystemExit(main())
