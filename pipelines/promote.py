"""DVC stage `promote`: thin glue over `alphaforge.stages.promote`; see `alphaforge promote --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["promote", *sys.argv[1:]])


if __name__ == "__main__":
    main()
