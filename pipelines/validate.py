"""DVC stage `validate`: thin glue over `alphaforge.stages.validate`; see `alphaforge validate --help` and dvc.yaml."""

import sys

from alphaforge.cli import app


def main() -> None:
    app(["validate", *sys.argv[1:]])


if __name__ == "__main__":
    main()
