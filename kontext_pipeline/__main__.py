"""``python -m kontext_pipeline``."""

from kontext_pipeline.cli import main

if __name__ == "__main__":
    main()
