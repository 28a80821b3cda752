"""The grammar tests' shared pieces: documents.py and xg.py sit beside the tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
