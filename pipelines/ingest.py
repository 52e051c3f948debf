"""DVC stage `ingest`: thin glue over `alphaforge.stages.ingest`; see `alphaforge ingest --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["ingest", *sys.argv[1:]])


if __name__ == "__main__":
    main()
