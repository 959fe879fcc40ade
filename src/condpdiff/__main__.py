import sys

from condpdiff.cli import main

sys.exit(main())
