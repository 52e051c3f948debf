"""DVC stage `features`: thin glue over `alphaforge.stages.features`; see `alphaforge features --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["features", *sys.argv[1:]])


if __name__ == "__main__":
    main()
