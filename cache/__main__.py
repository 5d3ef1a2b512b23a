import sys

from cache.cli import main

sys.exit(main())
