"""``python -m m3ed.pipelines.cli_extract`` runs ``m3ed-extract`` (for environments without the script)."""
import sys

from .cli import extract_main

if __name__ == "__main__":
    sys.exit(extract_main())
