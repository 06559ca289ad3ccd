import sys

from otclust.cli import main

sys.exit(main())
