"""DVC stage `tune`: thin glue over `alphaforge.stages.tune`; see `alphaforge tune --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["tune", *sys.argv[1:]])


if __name__ == "__main__":
    main()
