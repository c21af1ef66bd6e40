import sys

from semcache.cli import main

sys.exit(main())
