"""DVC stage `evaluate`: thin glue over `alphaforge.stages.evaluate`; see `alphaforge evaluate --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["evaluate", *sys.argv[1:]])


if __name__ == "__main__":
    main()
