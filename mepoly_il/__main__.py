import sys

from mepoly_il.cli import main

sys.exit(main())
